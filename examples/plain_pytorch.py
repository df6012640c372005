"""The monitors in a plain PyTorch loop, no Lightning: their Trainer-free core objects, written with TensorBoard's
``SummaryWriter``. The same pictures as the callbacks for the same weights and probe images.

    python examples/plain_pytorch.py --epochs 3 --logdir runs/plain
    tensorboard --logdir runs/plain

Trains the demo CNN on scikit-learn's bundled digits (the ``[demo]`` extra). ``Pictures`` is what a loop of your
own needs: ``start`` once, ``step`` after each optimizer step, ``epoch_end`` to draw.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from lightning_cnnviz.core import (
    ActivationHealth,
    ActivationTap,
    EmbeddingMap,
    FeatureAtlas,
    Moment,
    Probe,
    SaliencyPanel,
    TopPatchGallery,
    filter_smoothness,
    render_filter_grid,
    select_balanced,
)


class Pictures:
    """Every monitor's core object on one model and one fixed probe set, written to ``writer``."""

    def __init__(self, writer: SummaryWriter, probe: Tensor, labels: Tensor, window: int = 20) -> None:
        self.writer, self.probe, self.labels, self.window = writer, probe, labels, window
        self.health = ActivationHealth()
        self.saliency = SaliencyPanel(smoothgrad_samples=8)
        self.gallery = TopPatchGallery(method="both", max_channels=8)
        self.codes = EmbeddingMap(perplexity=20.0)
        self.atlas = FeatureAtlas(steps=64, history=None)
        self.steps = 0
        self.tap: ActivationTap | None = None

    @contextmanager
    def start(self, model: nn.Module, mean: Tensor, std: Tensor) -> Iterator[ActivationTap]:
        """Find the activations and layers, then count every forward inside the block; yields the tap, whose
        ``paused()`` block a backward pass goes in."""
        self.health.discover(model, self.probe[:2])
        self.gallery.configure(model)
        self.gallery.prepare(model, self.probe[:1])
        self.codes.resolve(model)
        self.atlas.use_scale(mean, std)
        with self.health.watch(model) as tap:
            self.tap = tap
            yield tap

    def step(self) -> None:
        """After each optimizer step: count it, and write the window's statistics and alerts when it ends."""
        self.steps += 1
        self.health.step()
        if self.steps % self.window:
            return
        summary = self.health.close_window()
        if summary is None:
            return
        scalars, histograms = self.health.scalars(summary)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, self.steps)
        for tag, values in histograms.items():
            self.writer.add_histogram(tag, values, self.steps)
        for event in self.health.check_alerts(summary, global_step=self.steps):
            self.writer.add_text("cnnviz/alerts", event.message, self.steps)

    def epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Draw every picture of the model as it is now (the pictures' own forwards are not counted)."""
        assert self.tap is not None, "call epoch_end inside start()"
        with self.tap.paused():
            self._draw(model, epoch)

    def _draw(self, model: nn.Module, epoch: int) -> None:
        pictures: dict[str, Tensor] = dict(self.health.snapshot().images)
        scalars: dict[str, float] = {}
        for name, conv in {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}.items():
            pictures[f"cnnviz/filters/{name}"] = render_filter_grid(conv.weight.detach())
            scalars[f"cnnviz/filters/smoothness/{name}"] = float(filter_smoothness(conv.weight.detach()))
            break  # the first conv layer, as FilterMonitor draws by default
        moment = Moment(epoch=epoch, step=self.steps)
        pictures.update(self.saliency.snapshot(model, Probe(self.probe[:8], self.labels[:8]), moment).images)
        tops = self.gallery.scan(model, self.probe, torch.arange(len(self.probe)))
        caption = self.gallery.history.caption(epoch, self.steps)
        colors = self.atlas.colors(self.probe)
        for layer, top in tops.items():
            panels = self.gallery.layer_panels(model, layer, top, self.probe)  # for both pictures of the layer
            pictures.update(self.gallery.pictures(model, layer, top, self.probe, caption, self.steps, panels))
            channels = self.gallery.chosen_channels[layer]
            images = self.atlas.render(model, layer, channels, self.probe, colors)
            pictures.update(self.atlas.pictures(layer, images, channels, caption, self.steps, panels, top.valid))
        codes = self.codes.codes(model, self.probe)
        scalars["cnnviz/embedding/knn_accuracy"] = self.codes.knn(codes, self.labels)
        pictures.update(self.codes.pictures(self.codes.embed(codes), codes, self.probe, self.labels, epoch))
        for tag, picture in pictures.items():
            self.writer.add_image(tag, picture.float().clamp(0, 1), epoch, dataformats="CHW")
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()


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


def main(argv: list[str] | None = None) -> Path:
    args = arguments(argv, __doc__.splitlines()[0], "runs/plain")
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_train, y_train, x_val, y_val, mean, std = digits(device)
    from lightning_cnnviz.demo.models import SmallCNN

    model = SmallCNN(in_channels=1, num_classes=10, channels=(16, 32, 32)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    chosen = select_balanced(y_val.cpu(), 64)  # a fixed, class-balanced probe set
    writer = SummaryWriter(args.logdir)
    pictures = Pictures(writer, x_val[chosen], y_val[chosen], window=10)
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
