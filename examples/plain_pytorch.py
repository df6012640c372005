"""The monitors in a plain PyTorch loop, no Lightning: their Trainer-free core objects, written with TensorBoard's
``SummaryWriter`` (any :class:`~lightning_cnnviz.sinks.Sink` does). The same pictures as the callbacks for the same
weights and probe images.

    python examples/plain_pytorch.py --epochs 3 --logdir runs/plain
    tensorboard --logdir runs/plain

Trains the demo CNN on scikit-learn's bundled digits (the ``[demo]`` extra). ``Pictures`` is what a loop of your
own needs: ``start`` once, ``step`` after each optimizer step, ``epoch_end`` to draw.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from lightning_cnnviz.core import (
    ActivationAtlas,
    ActivationHealth,
    ActivationMaps,
    ActivationTap,
    ClassModels,
    Context,
    EmbeddingMap,
    FeatureInversion,
    FeatureVisPanel,
    FilterPanel,
    InputScale,
    InvarianceCurves,
    Moment,
    OcclusionFigure,
    Picture,
    Probe,
    ProbeService,
    SaliencyPanel,
    StepPicture,
    TopPatchGallery,
    select_balanced,
)
from lightning_cnnviz.sinks import Sink, TensorBoardSink


class Pictures:
    """Every monitor's core object on one model and one fixed probe set, written to ``sink``: each is a
    :class:`~lightning_cnnviz.core.Picture`, attached once with ``attach(model, example)`` and drawn with
    ``snapshot(model, probe, context)``, and the sink writes what it draws. A picture of your own joins the list."""

    def __init__(
        self, sink: Sink, probe: Tensor, labels: Tensor, window: int = 20, extra: Sequence[Picture] = ()
    ) -> None:
        self.sink, self.window = sink, window
        everything, few, four = Probe(probe, labels), Probe(probe[:8], labels[:8]), Probe(probe[:4], labels[:4])
        self.health = ActivationHealth()
        # each picture with the probe it draws on: the feature-vis panel reuses the gallery's scan of the same channels
        self.pictures: list[tuple[Picture, Probe]] = [
            (self.health, everything),
            (FilterPanel(), everything),
            (ActivationMaps(), four),
            (TopPatchGallery(method="both", max_channels=8), everything),
            (EmbeddingMap(perplexity=20.0, projector=False), everything),
            (SaliencyPanel(smoothgrad_samples=8), few),
            (FeatureVisPanel(steps=64, method="both", max_channels=8), everything),
            (ClassModels(), everything),
            (FeatureInversion(), four),
            (ActivationAtlas(), everything),
            (OcclusionFigure(), four),  # shares its occluded forwards with the saliency panel's at a step
            (InvarianceCurves(), four),
            *((picture, everything) for picture in extra),  # pictures of your own
        ]
        self.scale, self.steps, self.epoch = InputScale(), 0, 0
        self.shared = ProbeService()  # what the pictures share, kept by step: scans, occluded forwards
        self.tap: ActivationTap | None = None

    @contextmanager
    def start(self, model: nn.Module, mean: Tensor, std: Tensor) -> Iterator[ActivationTap]:
        """Attach every picture, then count every forward inside the block; yields the tap, whose ``paused()``
        block a backward pass goes in."""
        self.scale = InputScale(mean, std)
        for picture, probe in self.pictures:
            picture.attach(model, probe.images[:2])
            if hasattr(picture, "share"):  # what it asks of the others' work at a step (the occluded forwards)
                picture.share(self.shared)
        with self.health.watch(model) as tap:
            self.tap = tap
            yield tap

    def step(self) -> None:
        """After each optimizer step: count it, and write the window's statistics and alerts when it ends."""
        self.steps += 1
        self.health.step()
        if self.steps % self.window == 0:
            shot, _ = self.health.end_window(Moment(self.epoch, self.steps), self.window)
            self.sink.write(shot, Moment(self.epoch, self.steps), per_step=True)  # scalars, histograms, alerts

    def epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Draw every picture of the model as it is now (the pictures' own forwards are not counted); in TensorBoard a
        picture that watches training steps goes at the step, the others at the epoch."""
        assert self.tap is not None, "call epoch_end inside start()"
        self.epoch = epoch + 1
        moment = Moment(epoch=epoch, step=self.steps)
        context = Context(moment, scale=self.scale, shared=self.shared)
        context.shared.health = self.health.marks  # the latest window's dead channels, framed in the maps
        with self.tap.paused():
            for picture, probe in self.pictures:
                shot = picture.snapshot(model, probe, context)
                self.sink.write(shot, moment, per_step=isinstance(picture, StepPicture))
        self.sink.flush()


def digits(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Normalised training and validation digits (16x16), their channel mean and std."""
    from lightning_cnnviz.demo.data import DigitsDataModule

    data = DigitsDataModule()
    data.setup()
    assert data._train is not None and data._val is not None
    (x_train, y_train), (x_val, y_val) = data._train.tensors, data._val.tensors
    return x_train.to(device), y_train.to(device), x_val.to(device), y_val.to(device), data.mean, data.std


def arguments(argv: list[str] | None, description: str, logdir: str) -> argparse.Namespace:
    """``--epochs``, ``--logdir`` and ``--steps-per-epoch``, as both examples take them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--logdir", default=logdir)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, extra: Sequence[Picture] = ()) -> Path:
    """Train the demo CNN on the digits and draw every picture (and those in ``extra``) each epoch."""
    args = arguments(argv, __doc__.splitlines()[0], "runs/plain")
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_train, y_train, x_val, y_val, mean, std = digits(device)
    from lightning_cnnviz.demo.models import SmallCNN

    model = SmallCNN(in_channels=1, num_classes=10, channels=(16, 32, 32)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    chosen = select_balanced(y_val.cpu(), 64)  # a fixed, class-balanced probe set
    writer = SummaryWriter(args.logdir)
    pictures = Pictures(TensorBoardSink(writer), x_val[chosen], y_val[chosen], window=10, extra=extra)
    with pictures.start(model, mean, std) as tap:
        for epoch in range(args.epochs):
            model.train()
            order = torch.randperm(len(x_train), device=device)
            for batch in order[: 64 * args.steps_per_epoch].split(64):
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                optimizer.zero_grad()
                with tap.paused():
                    loss.backward()
                optimizer.step()
                pictures.step()
            pictures.epoch_end(model, epoch)
    writer.close()
    print(f"TensorBoard: tensorboard --logdir {args.logdir}")
    return Path(args.logdir)


if __name__ == "__main__":
    main()
