"""Make the README's pictures from real runs: the PNGs TensorBoard shows, read back from the event files.

    python examples/readme_images.py --out docs/images

Runs (CPU, a few minutes): the demo CNN on the CIFAR-10 zip (7x7 RGB first layer) for filters, saliency and top
patches, and on Fashion-MNIST with a sane and a destructive learning rate and for the t-SNE maps. The data is
found as ``lightning_cnnviz.demo.data.find_data`` finds it (``$CNNVIZ_DATA``, Debian's Fashion-MNIST package) or
given with ``--data DIR`` (a folder holding ``fashion-mnist/`` and ``cifar10/cifar10-jpg.zip``).
``--parts`` picks some of ``saliency activations activation_maps top_patches embedding feature_vis class_models
occlusion tasks other`` (``occlusion``: the demo CNN on Fashion-MNIST, its occlusion figure and invariance curves, and
the areas under the curves trained and untrained; ``activation_maps``: the demo CNN on Fashion-MNIST, its maps and
their sparsity epoch by epoch;
``class_models``: the demo CNN on CIFAR-10, its class models, how each scores, and its feature inversions; ``tasks``: a
segmentation network's saliency and a regression network's t-SNE map, on generated images; ``other``: Conv1d and
Conv3d filters and a detector's saliency, on generated signals, clips and boxes).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from lightning_cnnviz import (
    ActivationAtlasMonitor,
    ActivationMapMonitor,
    ActivationMonitor,
    ClassModelMonitor,
    EmbeddingMonitor,
    FeatureVisMonitor,
    FilterMonitor,
    InvarianceMonitor,
    InversionMonitor,
    OcclusionMonitor,
    SaliencyMonitor,
    TopPatchMonitor,
)
from lightning_cnnviz.core import Context, InputScale, Moment, filter_smoothness
from lightning_cnnviz.core.methods.perturbation.invariance import distance_between_images
from lightning_cnnviz.demo.data import IDXDataModule, ImageFolderDataModule, find_data, how_to_get
from lightning_cnnviz.demo.models import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
ROOTS: list[str] = []  # --data folders, searched after $CNNVIZ_DATA


def data_path(name: str, roots: list[str]) -> Path:
    found = find_data(name, roots=roots)
    if found is None:
        raise SystemExit(how_to_get(name))
    return found


def fit(
    logdir: Path,
    data: pl.LightningDataModule,
    model: pl.LightningModule,
    callbacks: list[pl.Callback],
    **trainer_args: object,
) -> Path:
    pl.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(str(logdir), name="run")
    trainer = pl.Trainer(
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        **trainer_args,
    )  # type: ignore[arg-type]
    trainer.fit(model, datamodule=data)
    return Path(logger.log_dir)


def save_last_image(run: Path, tag: str, target: Path) -> None:
    accumulator = EventAccumulator(str(run), size_guidance={IMAGES: 0})
    accumulator.Reload()
    image = accumulator.Images(tag)[-1]
    target.write_bytes(image.encoded_image_string)
    print(f"{target}: {tag} at step {image.step}, {image.width}x{image.height}")


def cifar_classes() -> list[str]:
    return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    parts = ["saliency", "activations", "activation_maps", "top_patches", "embedding", "feature_vis", "class_models",
             "occlusion", "tasks", "other"]
    parser.add_argument("--parts", nargs="+", default=parts)
    parser.add_argument("--data", action="append", default=[], help="a folder holding fashion-mnist/ and cifar10/")
    args = parser.parse_args()
    ROOTS.extend(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        if "saliency" in args.parts:
            saliency_and_filters(Path(tmp), out)
        if "activations" in args.parts:
            activations(Path(tmp), out)
        if "activation_maps" in args.parts:
            activation_maps(Path(tmp), out)
        if "top_patches" in args.parts:
            top_patches(Path(tmp), out)
        if "embedding" in args.parts:
            embedding(Path(tmp), out)
        if "feature_vis" in args.parts:
            feature_vis(Path(tmp), out)
        if "class_models" in args.parts:
            class_models(Path(tmp), out)
        if "occlusion" in args.parts:
            occlusion(Path(tmp), out)
        if "tasks" in args.parts:
            tasks(Path(tmp), out)
        if "other" in args.parts:
            other_inputs(Path(tmp), out)


def tasks(tmp: Path, out: Path) -> None:
    """Segmentation (torchvision LRASPP, 64 px squares, the foreground weighted for its 6% of pixels) and
    regression (the square's brightness): what SaliencyMonitor and EmbeddingMonitor draw for them."""
    import torch
    import torch.nn.functional as F

    from lightning_cnnviz.demo.tasks import TaskData, TaskModule, segmentation_net, task

    weight = torch.tensor([1.0, 8.0])

    def segmentation_loss(module: torch.nn.Module, batch: Any) -> torch.Tensor:
        return F.cross_entropy(module(batch[0])["out"], batch[1], weight=weight)

    net = segmentation_net()
    for module in net.modules():  # MobileNet-V3's momentum of 0.01 would keep the eval statistics near their start
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    data = TaskData("mask", count=1024, batch_size=32, side=64, dim_square=False)
    saliency = SaliencyMonitor(methods=("vanilla_gradient", "occlusion"), num_images=4, every_n_epochs=6)
    run = fit(tmp / "segmentation", data, TaskModule(net, segmentation_loss), [saliency], max_epochs=6)
    for method in saliency.methods:
        save_last_image(run, f"cnnviz/saliency/{method}", out / f"saliency_{method}_segmentation.png")
    model, _ = task("regression")
    values = TaskData("value", count=1024, batch_size=32)
    embedding = EmbeddingMonitor(probe_size=512, every_n_epochs=10, perplexity=20)
    run = fit(tmp / "regression", values, model, [embedding], max_epochs=10)
    save_last_image(run, "cnnviz/embedding/tsne", out / "embedding_tsne_regression.png")


def other_inputs(tmp: Path, out: Path) -> None:
    """A Conv1d and a Conv3d network's first-layer filters, trained on generated signals and clips; and SaliencyMonitor
    on torchvision's Faster R-CNN, at initialisation, on generated boxes."""
    from lightning_cnnviz.demo.tasks import TaskData, TaskModule, detector, task

    for name, inputs, png in (("signal", "signals", "filters_conv1d.png"), ("clip", "clips", "filters_conv3d.png")):
        model, _ = task(name)
        data = TaskData("class", count=2048, batch_size=64, inputs=inputs)
        run = fit(tmp / name, data, model, [FilterMonitor(every_n_epochs=8)], max_epochs=8)
        save_last_image(run, "cnnviz/filters/net.0", out / png)
    # A detector learns to find boxes in far more steps than a CPU picture affords (after 36 steps it finds none yet:
    # "no box" and an empty map); drawn at initialisation (lr=0), it scores boxes everywhere.
    model, _ = task("detection")
    model = TaskModule(detector(), model.loss, lr=0.0, detects=True)
    boxes = TaskData(None, count=8, batch_size=8, side=64, inputs="boxes")
    saliency = SaliencyMonitor(methods=("smoothgrad",), num_images=4)
    run = fit(tmp / "detection", boxes, model, [saliency], max_epochs=1, limit_val_batches=1)
    save_last_image(run, "cnnviz/saliency/smoothgrad", out / "saliency_detection.png")

def saliency_and_filters(tmp: Path, out: Path) -> None:
    cifar = ImageFolderDataModule(str(data_path("cifar10", ROOTS)), limit_val=1000)
    saliency = SaliencyMonitor(
        methods=("smoothgrad", "guided_backprop", "grad_cam", "occlusion"),
        num_images=6,
        every_n_epochs=8,
        class_names=cifar_classes(),
    )
    model = ImageClassifier(in_channels=3, first_kernel=7)
    run = fit(tmp / "cifar", cifar, model, [FilterMonitor(), saliency], max_epochs=8)
    save_last_image(run, "cnnviz/filters/net.conv1", out / "filters_cifar10.png")
    for method in saliency.methods:
        save_last_image(run, f"cnnviz/saliency/{method}", out / f"saliency_{method}_cifar10.png")


def activations(tmp: Path, out: Path) -> None:
    fashion = IDXDataModule(str(data_path("fashion-mnist", ROOTS)), limit_train=128 * 300, limit_val=1000)
    sane = fit(
        tmp / "sane",
        fashion,
        ImageClassifier(),
        [FilterMonitor(), ActivationMonitor(every_n_steps=20)],
        max_steps=300,
    )
    save_last_image(sane, "cnnviz/filters/net.conv1", out / "filters_fashion_mnist.png")
    save_last_image(sane, "cnnviz/activations/dead_map/net.relu3", out / "dead_map_sane.png")
    broken = fit(
        tmp / "broken",
        fashion,
        ImageClassifier(optimizer="adam", lr=0.03),
        [ActivationMonitor(every_n_steps=20)],
        max_steps=300,
    )
    save_last_image(broken, "cnnviz/activations/dead_map/net.relu2", out / "dead_map_destructive_lr.png")


def activation_maps(tmp: Path, out: Path) -> None:
    """The demo CNN on Fashion-MNIST, 6 epochs of 100 steps of 128, the maps of four test images every epoch (dead
    channels framed from ActivationMonitor's windows); prints each layer's fraction of zeros in the maps, by epoch."""
    fashion = IDXDataModule(str(data_path("fashion-mnist", ROOTS)), limit_val=1000)
    maps = ActivationMapMonitor(every_n_epochs=1, class_names=FASHION_CLASSES)
    monitors = [ActivationMonitor(every_n_steps=50), maps]
    run = fit(tmp / "maps", fashion, ImageClassifier(), monitors, max_epochs=6, limit_train_batches=100)
    save_last_image(run, "cnnviz/activation_maps/net.relu1", out / "activation_maps_relu1_fashion_mnist.png")
    save_last_image(run, "cnnviz/activation_maps/net.relu3", out / "activation_maps_relu3_fashion_mnist.png")
    evolution = out / "activation_maps_evolution_relu2_fashion_mnist.png"
    save_last_image(run, "cnnviz/activation_maps_evolution/net.relu2", evolution)
    accumulator = EventAccumulator(str(run))
    accumulator.Reload()
    for tag in sorted(t for t in accumulator.Tags()["scalars"] if t.startswith("cnnviz/activation_maps/sparsity/")):
        values = ", ".join(f"{event.value:.3f}" for event in accumulator.Scalars(tag))
        print(f"{tag.rsplit('/', 1)[-1]}: fraction of zeros in the maps, epoch by epoch: {values}")


def occlusion(tmp: Path, out: Path) -> None:
    """The demo CNN on Fashion-MNIST, 6 epochs of 100 steps of 128: the occlusion figure and the invariance curves of
    four test images every epoch; prints the areas under the translation curves epoch by epoch and, on the same
    images, of the untrained network."""
    fashion = IDXDataModule(str(data_path("fashion-mnist", ROOTS)), limit_val=1000)
    figure = OcclusionMonitor(every_n_epochs=1, class_names=FASHION_CLASSES)
    curves = InvarianceMonitor(every_n_epochs=1, class_names=FASHION_CLASSES)
    pl.seed_everything(0, verbose=False)
    untrained = ImageClassifier()  # the trained network's own initialisation
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier()
    run = fit(tmp / "occlusion", fashion, model, [figure, curves], max_epochs=6, limit_train_batches=100)
    save_last_image(run, "cnnviz/occlusion/net.relu3", out / "occlusion_fashion_mnist.png")
    for kind in ("translation", "scale", "rotation"):
        save_last_image(run, f"cnnviz/invariance/{kind}", out / f"invariance_{kind}_fashion_mnist.png")
    accumulator = EventAccumulator(str(run))
    accumulator.Reload()
    for tag in sorted(t for t in accumulator.Tags()["scalars"] if t.startswith("cnnviz/invariance/")):
        values = ", ".join(f"{event.value:.3f}" for event in accumulator.Scalars(tag))
        print(f"{tag}: area under the normalised distance, epoch by epoch: {values}")
    context = Context(Moment(epoch=0, step=0), scale=InputScale.of(fashion))
    assert curves.probe_images is not None
    before, _ = curves.curves.curves(untrained, curves.probe_images, curves.probe_labels, context)
    for kind, found in before.items():
        print(f"untrained, {kind}: " + ", ".join(f"{layer} {found.area(layer):.3f}" for layer in found.distances))
    for name, network in (("untrained", untrained), ("trained", model)):
        between = distance_between_images(network, curves.probe_images, curves.curves.read(network))
        print(f"{name}: mean normalised distance between the probe images: "
              + ", ".join(f"{layer} {value:.3f}" for layer, value in between.items()))  # fmt: skip


def top_patches(tmp: Path, out: Path) -> None:
    """Short epochs (100 steps of 128) so the evolution shows the first layer's features forming."""
    cifar = ImageFolderDataModule(str(data_path("cifar10", ROOTS)), limit_val=1000)
    monitor = TopPatchMonitor(probe_size=1000, method="both", max_channels=8)
    model = ImageClassifier(in_channels=3, first_kernel=7)
    run = fit(tmp / "top", cifar, model, [monitor], max_epochs=16, limit_train_batches=100)
    save_last_image(run, "cnnviz/evolution/net.conv1", out / "evolution_conv1_cifar10.png")
    save_last_image(run, "cnnviz/top_patches/net.conv3", out / "top_patches_conv3_cifar10.png")
    save_last_image(run, "cnnviz/top_patches/net.conv1", out / "top_patches_conv1_cifar10.png")
    for caption, thumbnails in monitor.history.columns("net.conv1"):
        # lag-1 autocorrelation of the strongest projections: noise ~0, smooth oriented structure -> 1
        score = filter_smoothness(thumbnails.float().mean(dim=1, keepdim=True)).item()
        print(f"net.conv1 strongest projections, {caption}: smoothness {score:.3f}")


FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def embedding(tmp: Path, out: Path) -> None:
    """The demo CNN on all of Fashion-MNIST for 6 epochs; t-SNE of 2,000 test images every 2 epochs."""
    fashion = IDXDataModule(str(data_path("fashion-mnist", ROOTS)), limit_val=2000)
    monitor = EmbeddingMonitor(probe_size=2000, every_n_epochs=2, class_names=FASHION_CLASSES)
    run = fit(tmp / "embedding", fashion, ImageClassifier(), [monitor], max_epochs=6)
    save_last_image(run, "cnnviz/embedding/tsne", out / "embedding_tsne_fashion_mnist.png")
    save_last_image(run, "cnnviz/embedding/grid", out / "embedding_grid_fashion_mnist.png")
    save_last_image(run, "cnnviz/embedding/neighbours", out / "embedding_neighbours_fashion_mnist.png")
    print(f"kNN accuracy of the codes: {monitor.last_knn_accuracy}")


def feature_vis(tmp: Path, out: Path) -> None:
    """Short epochs (100 steps of 128) on CIFAR-10, a render every epoch: the first layer's synthesised images
    forming, and the last conv layer's renders beside their top patches at the end."""
    cifar = ImageFolderDataModule(str(data_path("cifar10", ROOTS)), limit_val=1000)
    monitor = FeatureVisMonitor(every_n_epochs=1, max_channels=8, probe_size=1000, dream_images=3)
    model = ImageClassifier(in_channels=3, first_kernel=7)
    run = fit(tmp / "vis", cifar, model, [monitor], max_epochs=8, limit_train_batches=100)
    save_last_image(run, "cnnviz/feature_vis_patches/net.conv3", out / "feature_vis_patches_conv3_cifar10.png")
    save_last_image(run, "cnnviz/feature_vis_evolution/net.conv1", out / "feature_vis_evolution_conv1_cifar10.png")
    save_last_image(run, "cnnviz/feature_vis/net.conv3", out / "feature_vis_conv3_cifar10.png")
    save_last_image(run, "cnnviz/deep_dream", out / "deep_dream_cifar10.png")


def class_models(tmp: Path, out: Path) -> None:
    """The demo CNN on CIFAR-10, 12 epochs of the whole training set (weight decay 5e-4, about 71% test accuracy),
    the class models, the feature inversions and the activation atlas (with each cell's best probe patch) every 3
    epochs; then, for each class, the logits of its class model against the best of 1,000 test images of that
    class."""
    import torch

    from lightning_cnnviz.core import InputScale

    cifar = ImageFolderDataModule(str(data_path("cifar10", ROOTS)), limit_val=1000)
    monitor = ClassModelMonitor(every_n_epochs=3, class_names=cifar_classes())
    inversion = InversionMonitor(every_n_epochs=3)
    atlas = ActivationAtlasMonitor(every_n_epochs=3, examples=True)
    model = ImageClassifier(in_channels=3, first_kernel=7, weight_decay=5e-4)
    run = fit(tmp / "classes", cifar, model, [monitor, inversion, atlas], max_epochs=12)
    save_last_image(run, "cnnviz/class_models", out / "class_models_cifar10.png")
    save_last_image(run, "cnnviz/class_models_evolution", out / "class_models_evolution_cifar10.png")
    save_last_image(run, "cnnviz/inversion", out / "inversion_cifar10.png")
    save_last_image(run, "cnnviz/inversion_evolution", out / "inversion_evolution_cifar10.png")
    save_last_image(run, "cnnviz/activation_atlas/net.relu3", out / "activation_atlas_cifar10.png")
    print(f"inversion PSNR per layer (dB): {inversion.inversion.last_psnr}")
    scale, renders = InputScale.of(cifar), monitor.models.last_images
    assert renders is not None
    model.eval()
    with torch.no_grad():
        logits = model(scale.to_model(renders))
        images, labels = zip(*((x, y) for x, y in cifar.val_dataloader()), strict=True)
        probe_logits, probe_labels = model(torch.cat(images)), torch.cat(labels)
    ratios = []
    for c, row in enumerate(logits):
        best = probe_logits[probe_labels == c, c].max()
        ratios.append(float(row[c] / best))
        print(f"{cifar_classes()[c]}: its class model's logit {float(row[c]):.2f} (the highest of all classes: "
              f"{int(row.argmax()) == c}), the best of its test images {float(best):.2f}")
    print(f"median ratio of the class model's logit to the best test image's: {torch.tensor(ratios).median():.2f}")


if __name__ == "__main__":
    main()
