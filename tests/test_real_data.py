"""Real scenario on real data: the demo CNN on Fashion-MNIST, destructive vs sane learning rate; CIFAR-10.

The data is found by ``conftest.real_data`` (``CNNVIZ_DATA``, our CI's folder, Debian's Fashion-MNIST package);
without it these tests skip, saying how to get it (and fail under ``CI=true``)."""

from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor

from conftest import make_trainer, real_data
from lightning_cnnviz import ActivationMonitor
from lightning_cnnviz.core import select_balanced
from lightning_cnnviz.core.methods import saliency as S
from lightning_cnnviz.demo.data import IDXDataModule
from lightning_cnnviz.demo.models import ImageClassifier

STEPS = 150


@pytest.fixture(scope="module")
def fashion() -> IDXDataModule:
    root = real_data("fashion-mnist")
    data = IDXDataModule(str(root), batch_size=128, limit_train=STEPS * 128, limit_val=512)
    data.setup()
    return data


def train(tmp_path: Path, data: IDXDataModule, optimizer: str, lr: float) -> tuple[ActivationMonitor, Any]:
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(in_channels=1, num_classes=10, optimizer=optimizer, lr=lr)  # type: ignore[arg-type]
    monitor = ActivationMonitor(every_n_steps=25)
    trainer = make_trainer(tmp_path, [monitor], max_steps=STEPS, deterministic=False)
    trainer.fit(model, datamodule=data)
    return monitor, trainer


def last_dead_counts(monitor: ActivationMonitor) -> dict[str, int]:
    return {name: sum(1 for rate in history[-1] if rate == 0) for name, history in monitor.health.rate_history.items()}


@pytest.fixture(scope="module")
def sane_run(fashion: IDXDataModule, tmp_path_factory: pytest.TempPathFactory) -> tuple[ActivationMonitor, Any]:
    return train(tmp_path_factory.mktemp("sane"), fashion, "sgd", 0.05)


def test_destructive_learning_rate_alerts_and_sane_one_does_not(
    tmp_path: Path, fashion: IDXDataModule, sane_run: tuple[ActivationMonitor, Any]
) -> None:
    sane, sane_trainer = sane_run
    broken, broken_trainer = train(tmp_path / "broken", fashion, "adam", 0.03)
    sane_dead, broken_dead = last_dead_counts(sane), last_dead_counts(broken)
    print(
        f"\nsane (SGD lr=0.05): dead per layer {sane_dead}, alerts {len(sane.alerts)}, "
        f"val_acc {float(sane_trainer.callback_metrics['val_acc']):.3f}"
    )
    print(
        f"destructive (Adam lr=0.03): dead per layer {broken_dead}, alerts {len(broken.alerts)}, "
        f"val_acc {float(broken_trainer.callback_metrics['val_acc']):.3f}"
    )
    assert sane.alerts == []
    assert sum(sane_dead.values()) == 0
    assert broken.alerts, "the destructive learning rate should kill filters and alert"
    assert sum(broken_dead.values()) >= 32
    assert all("learning rate: 0.03" in alert["message"] for alert in broken.alerts)
    sane_acc = float(sane_trainer.callback_metrics["val_acc"])
    assert sane_acc > 0.6 and sane_acc > float(broken_trainer.callback_metrics["val_acc"]) + 0.3


def probe(data: IDXDataModule, count: int = 16) -> tuple[Tensor, Tensor]:
    images, labels = data._val.tensors
    chosen = select_balanced(labels, count)
    return images[chosen], labels[chosen]


def mean_rank_correlation(before: Tensor, after: Tensor) -> tuple[float, int]:
    """Mean Spearman correlation over images; a constant map (no ranking) counts as 0. Also the constant count."""
    from scipy.stats import spearmanr

    values, constant = [], 0
    for a, b in zip(before, after, strict=True):
        if a.flatten().unique().numel() == 1 or b.flatten().unique().numel() == 1:
            constant += 1
            values.append(0.0)
        else:
            values.append(float(spearmanr(a.flatten().numpy(), b.flatten().numpy())[0]))
    return sum(values) / len(values), constant


def test_model_randomisation_sanity_check(fashion: IDXDataModule, sane_run: tuple[ActivationMonitor, Any]) -> None:
    """Adebayo et al. 2018: re-initialising the top layers must change the maps of a faithful method."""
    trained = sane_run[1].lightning_module
    randomised = copy.deepcopy(trained)
    torch.manual_seed(1)
    randomised.net.fc.reset_parameters()
    randomised.net.conv3.reset_parameters()
    images, labels = probe(fashion)
    report = {}
    for method in (S.vanilla_gradient, S.grad_cam, S.guided_backprop):
        before, after = method(trained, images, labels), method(randomised, images, labels)
        if before.dim() == 4:
            before, after = before.abs().sum(dim=1), after.abs().sum(dim=1)
        report[method.__name__] = mean_rank_correlation(before, after)
    print(f"\nmean Spearman rank correlation, trained vs top layers re-initialised (constant maps): {report}")
    assert report["vanilla_gradient"][0] < 0.5
    assert report["grad_cam"][0] < 0.5
    # guided backprop is known to be largely insensitive to the top layers (Adebayo et al., Fig. 2)
    assert report["guided_backprop"][0] > report["vanilla_gradient"][0]


def test_occluding_the_most_salient_region_hurts_more_than_a_random_one(
    fashion: IDXDataModule, sane_run: tuple[ActivationMonitor, Any]
) -> None:
    model = sane_run[1].lightning_module
    images, labels = probe(fashion)
    saliency = S.smoothgrad(model, images, labels, samples=25, generator=torch.Generator().manual_seed(0))
    patch, stride = 8, 2
    window_mass = torch.nn.functional.avg_pool2d(saliency[:, None], patch, stride=stride)[:, 0]
    best = window_mass.flatten(1).argmax(dim=1)
    salient = [(int(b // window_mass.shape[2]) * stride, int(b % window_mass.shape[2]) * stride) for b in best]

    def probability_drop(corners: list[tuple[int, int]]) -> float:
        occluded = images.clone()
        for i, (y, x) in enumerate(corners):
            occluded[i, :, y : y + patch, x : x + patch] = images[i].mean()
        with torch.no_grad():
            model.eval()
            clean = model(images).softmax(dim=1).gather(1, labels[:, None])
            hidden = model(occluded).softmax(dim=1).gather(1, labels[:, None])
        return float((clean - hidden).mean())

    generator = torch.Generator().manual_seed(0)
    limit = images.shape[-1] - patch + 1
    random_drops = [
        probability_drop([tuple(torch.randint(0, limit, (2,), generator=generator).tolist()) for _ in labels])
        for _ in range(10)
    ]
    salient_drop, random_drop = probability_drop(salient), sum(random_drops) / len(random_drops)
    print(f"\nmean target-probability drop: salient region {salient_drop:.4f}, random region {random_drop:.4f}")
    assert salient_drop > random_drop


def test_the_code_layer_is_more_invariant_to_translation_than_the_first_layer_once_trained(
    fashion: IDXDataModule, sane_run: tuple[ActivationMonitor, Any]
) -> None:
    """Zeiler & Fergus Fig. 5: under vertical translation, the code's normalised distance stays below the first
    layer's on the trained demo CNN; the untrained network's areas are reported beside."""
    from lightning_cnnviz.core import Context, InputScale, InvarianceCurves, Moment
    from lightning_cnnviz.core.methods.perturbation.invariance import distance_between_images

    trained = sane_run[1].lightning_module
    pl.seed_everything(0, verbose=False)
    untrained = ImageClassifier(in_channels=1, num_classes=10)
    images, labels = probe(fashion, count=16)
    context = Context(Moment(epoch=0, step=0), scale=InputScale.of(fashion))
    areas, between = {}, {}
    for name, model in (("trained", trained), ("untrained", untrained)):
        curves = InvarianceCurves(transformations=("translation",))
        found, _ = curves.curves(model, images, labels, context)
        areas[name] = {layer: round(found["translation"].area(layer), 3) for layer in found["translation"].distances}
        apart = distance_between_images(model, images, curves.read(model))
        between[name] = {layer: round(value, 3) for layer, value in apart.items()}
    print(f"\nareas under the translation curves: {areas}; distances between images: {between}")
    assert areas["trained"]["net.fc"] < areas["trained"]["net.conv1"]


def test_first_layer_features_form_in_the_evolution_on_cifar10(tmp_path: Path) -> None:
    """The demo CNN on the CIFAR-10 zip: the strongest first-layer projections and the first layer's synthesised
    images go from noise to smooth structure; the last conv layer's synthesised images excite every channel more
    than the best of 1,000 probe images."""
    from lightning_cnnviz import FeatureVisMonitor, TopPatchMonitor
    from lightning_cnnviz.core import filter_smoothness, visualize_features
    from lightning_cnnviz.core.methods.feature_vis import color_correlation
    from lightning_cnnviz.demo.data import ImageFolderDataModule

    archive = real_data("cifar10")
    data = ImageFolderDataModule(str(archive), batch_size=128, limit_per_class=640, limit_val=1000)
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(in_channels=3, first_kernel=7)
    monitor = TopPatchMonitor(layers="net.conv1", every_n_epochs=1, probe_size=512, max_channels=32, on_error="raise")
    vis = FeatureVisMonitor(
        layers="net.conv1", every_n_epochs=1, steps=128, patches=False, dream_images=0, on_error="raise"
    )
    trainer = make_trainer(tmp_path, [monitor, vis], max_epochs=6, limit_train_batches=40, deterministic=False)
    trainer.fit(model, datamodule=data)

    def smoothness(columns: list[tuple[str, Tensor]]) -> list[float]:
        return [filter_smoothness(thumbnails.float().mean(dim=1, keepdim=True)).item() for _, thumbnails in columns]

    scores = smoothness(monitor.history.columns("net.conv1"))
    # the first layer is rendered for its central position: the 7x7 patch there is what the filter wants
    columns = vis.history.columns("net.conv1")
    side = columns[0][1].shape[-1]
    low, high = side // 2 - 7 * side // 64, side // 2 + 7 * side // 64 + 1
    synthesised = smoothness([(caption, thumbnails[..., low:high, low:high]) for caption, thumbnails in columns])
    print(f"conv1 strongest-projection smoothness per epoch (40 steps each): {[round(s, 3) for s in scores]}")
    print(f"conv1 feature-vis smoothness (central 7x7) per epoch: {[round(s, 3) for s in synthesised]}")
    assert len(scores) == len(synthesised) == 6
    assert scores[-1] > scores[0] + 0.1 and scores[-1] > 0.15
    # The 1/f Fourier prior keeps every render smooth, so the change shows in what the patch depicts: each
    # channel's central 7x7 patch follows its filter as the model sees pixels (weights / std). Jitter and rotation
    # blur it, so the cosine is well below the 1.0 of the untransformed case, but far above chance (about 0.08
    # for 147 values).
    final = vis.last_images["net.conv1"][:, :, 13:20, 13:20] - 0.5
    weights = model.net.conv1.weight.detach()[vis.selection.chosen_channels["net.conv1"]] / data.std.view(1, -1, 1, 1)
    cosines = torch.nn.functional.cosine_similarity(final.flatten(1), weights.flatten(1))
    print(f"conv1 central patch against its filter: cosine median {cosines.median():.2f}, min {cosines.min():.2f}")
    assert float(cosines.min()) > 0.2 and float(cosines.median()) > 0.4

    # every channel of the last conv layer: its synthesised image against the best of the 1,000 probe images
    probe = data._val.tensors[0][:1000]
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
    images = visualize_features(
        model, "net.conv3", list(range(128)), size=32, steps=256,
        colors=color_correlation((probe * std + mean).clamp(0, 1)), mean=data.mean, std=data.std,
    )  # fmt: skip
    from lightning_cnnviz.core.model.modules import evaluating, run_to

    def mean_activations(inputs: Tensor) -> Tensor:  # (N, 128): each image's mean activation per channel
        parts: list[Tensor] = []
        with evaluating(model):
            for chunk in inputs.split(250):
                run_to(model, chunk, ["net.conv3"], lambda name, out: parts.append(out.mean((2, 3))))
        return torch.cat(parts)

    best = mean_activations(probe).amax(dim=0)
    ours = mean_activations((images - mean) / std).diagonal()
    positive = best > 0
    ratios = ours[positive] / best[positive]
    print(
        f"conv3, 128 channels: synthesised / best of 1,000 probe images, median {ratios.median():.2f} "
        f"(min {ratios.min():.2f}, {int(positive.sum())} channels with a positive best); "
        f"synthesised higher for {int((ours > best).sum())} of 128"
    )
    assert bool((ours > best).all())

    labels = data._val.tensors[1][:1000]
    check_inversion(model, probe, labels, mean, std)
    check_diversity(model, probe, mean, std)


@pytest.fixture(scope="module")
def cifar_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The demo CNN trained on the CIFAR-10 zip for 5 epochs of the whole training set, weight decay 5e-4 (about 67%
    test accuracy): (model, data module)."""
    from lightning_cnnviz.demo.data import ImageFolderDataModule

    data = ImageFolderDataModule(str(real_data("cifar10")), limit_val=1000)
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(in_channels=3, first_kernel=7, weight_decay=5e-4)
    trainer = make_trainer(tmp_path_factory.mktemp("cifar"), [], max_epochs=5, deterministic=False)
    trainer.fit(model, datamodule=data)
    return model.eval(), data


def test_class_models_win_their_class_on_a_trained_cifar10_cnn(cifar_trained: tuple[Any, Any]) -> None:
    """Each class model at ClassModelMonitor's defaults makes its class the network's top class, and scores it above
    the best of 1,000 test images of that class (Simonyan et al. 2013). (Trained 240 steps, at about 45% accuracy,
    deer's model raises horse's logit higher still: the network has no deer features of its own yet.)"""
    from lightning_cnnviz.core import ClassModels, Context, InputScale, Moment, Probe
    from lightning_cnnviz.core.model.modules import evaluating

    model, data = cifar_trained
    probe, labels = data._val.tensors[0][:1000], data._val.tensors[1][:1000]
    models = ClassModels()
    models.snapshot(model, Probe(probe, labels), Context(Moment(epoch=0, step=0), scale=InputScale.of(data)))
    assert models.last_images is not None
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
    with torch.no_grad(), evaluating(model):
        logits, probe_logits = model((models.last_images - mean) / std), model(probe)
    accuracy = float((probe_logits.argmax(dim=1) == labels).float().mean())
    best_logit = torch.stack([probe_logits[labels == c, c].max() for c in range(10)])
    wins = logits.argmax(dim=1) == torch.arange(10)
    ratios = logits.diagonal() / best_logit
    print(f"class models (test accuracy {accuracy:.3f}): {int(wins.sum())} of 10 win their class; logit over the best "
          f"test image's: median {ratios.median():.2f}, min {ratios.min():.2f}")  # fmt: skip
    assert bool(wins.all()) and bool((ratios > 1).all()) and float(ratios.median()) > 2


def test_activation_atlas_of_a_trained_cifar10_cnn(cifar_trained: tuple[Any, Any]) -> None:
    """ActivationAtlas at its defaults (2,000 vectors of relu3 over 1,000 test images, 8 x 8 cells): each cell's
    render raises its direction objective above the best probe vector of the cell, and the layout's trustworthiness
    is within 0.01 of openTSNE's on the same vectors (Carter et al. 2019)."""
    import numpy as np
    from openTSNE import TSNE
    from sklearn.manifold import trustworthiness

    from lightning_cnnviz.core import ActivationAtlas, Context, InputScale, Moment, Probe
    from lightning_cnnviz.core.methods.feature_vis import evaluate

    model, data = cifar_trained
    scale = InputScale.of(data)
    atlas = ActivationAtlas(examples=True)
    atlas.snapshot(model, Probe(data._val.tensors[0][:1000]), Context(Moment(epoch=0, step=0), scale=scale))
    cells, vectors = atlas.last_cells, atlas.last_vectors
    assert cells is not None and vectors is not None and atlas.last_images is not None and atlas.previous is not None
    assert atlas.layer_name == "net.relu3" and len(vectors) == 2000
    with torch.no_grad():
        ours = evaluate(model, atlas.objective(cells), scale.to_model(atlas.last_images))
    scores = (vectors * cells.average[cells.cell]).sum(dim=1)
    best = torch.full((cells.grid**2,), -float("inf")).scatter_reduce(0, cells.cell, scores, reduce="amax")
    ratios = ours / best[cells.filled]
    theirs = np.asarray(TSNE(n_jobs=2, random_state=0).fit(vectors.numpy()))
    trust = [trustworthiness(vectors.numpy(), layout, n_neighbors=5) for layout in (atlas.previous.numpy(), theirs)]
    print(f"activation atlas of net.relu3: {len(cells.filled)} cells, renders above their cell's best probe vector in "
          f"{int((ratios > 1).sum())}, render / best median {ratios.median():.2f} (min {ratios.min():.2f}); "
          f"trustworthiness ours {trust[0]:.4f}, openTSNE {trust[1]:.4f}")  # fmt: skip
    assert bool((ratios > 1).all()) and abs(trust[0] - trust[1]) <= 0.01


def check_inversion(model: Any, probe: Tensor, labels: Tensor, mean: Tensor, std: Tensor) -> None:
    """Four test images (one per class) inverted from conv1, conv2, conv3 and the code at the monitor's defaults: at
    least 20 dB from the first conv, the error growing with depth, and each reconstruction's code nearer its
    original's than any other probe image's code (Mahendran and Vedaldi 2015)."""
    from lightning_cnnviz.core import Context, FeatureInversion, InputScale, Moment, Probe
    from lightning_cnnviz.core.methods.inversion import code_distances

    chosen = torch.tensor([int((labels == c).nonzero()[0]) for c in range(4)])
    inversion = FeatureInversion()
    scale = InputScale(mean.flatten().tolist(), std.flatten().tolist())
    inversion.snapshot(model, Probe(probe[chosen], labels[chosen]), Context(Moment(epoch=0, step=0), scale=scale))
    assert inversion.last_images is not None
    quality = list(inversion.last_psnr.values())
    print(f"inversion PSNR (dB) per layer: {inversion.last_psnr}")
    assert quality[0] >= 20 and all(a > b for a, b in itertools.pairwise(quality))
    originals = probe[chosen]
    for index, site in enumerate(inversion.sites):
        rebuilt = (inversion.last_images[index] - mean) / std
        to_original = code_distances(model, rebuilt, originals, site)  # (reconstruction, original)
        between = code_distances(model, originals, originals, site).fill_diagonal_(float("inf"))
        assert bool((to_original.diagonal() < between.min(dim=1).values).all()), site


def check_diversity(model: Any, probe: Tensor, mean: Tensor, std: Tensor) -> None:
    """``diversity=4`` on eight channels of conv3: the four images' activations at the layer are less alike (mean
    pairwise cosine) than four seeds rendered without the penalty, and still excite their channel to about 0.7 of
    those seeds' mean or more (Olah et al. 2017); the figures are printed."""
    from lightning_cnnviz.core import visualize_features
    from lightning_cnnviz.core.methods.feature_vis import color_correlation
    from lightning_cnnviz.core.model.modules import evaluating, run_to

    colors = color_correlation((probe[:512] * std + mean).clamp(0, 1))
    options = {"size": 32, "steps": 128, "colors": colors, "mean": mean.flatten(), "std": std.flatten()}

    def activations(images: Tensor) -> Tensor:
        found: list[Tensor] = []
        with torch.no_grad(), evaluating(model):
            run_to(model, (images - mean) / std, ["net.conv3"], lambda name, out: found.append(out))
        return found[0]

    def pairwise(values: Tensor) -> float:
        unit = torch.nn.functional.normalize(values.flatten(1), dim=1)
        similar = unit @ unit.T
        return float((similar.sum() - similar.diagonal().sum()) / (len(values) * (len(values) - 1)))

    rows = []
    for c in (0, 5, 17, 40, 64, 77, 100, 120):
        seeds = torch.cat([visualize_features(model, "net.conv3", [c], seed=s, **options) for s in range(4)])
        diverse = visualize_features(model, "net.conv3", [c], diversity_images=4, **options)
        plain, apart = activations(seeds), activations(diverse)
        optimum = plain[:, c].mean(dim=(1, 2)).mean()
        rows.append((c, pairwise(plain), pairwise(apart), float(apart[:, c].mean(dim=(1, 2)).min() / optimum)))
    print("diversity (channel, cosine of 4 seeds, cosine of 4 diverse, weakest diverse / seeds' optimum): "
          + "; ".join(f"{c}: {a:.3f} {b:.3f} {r:.2f}" for c, a, b, r in rows))  # fmt: skip
    # on the README's network: lower for 8 of 8, each image at least 0.69 of the optimum (7 of 8 at 0.7 or more)
    assert sum(b < a for _, a, b, _ in rows) >= 7 and sum(r >= 0.7 for *_, r in rows) >= 6
    assert min(r for *_, r in rows) >= 0.5 and sum(a - b for _, a, b, _ in rows) > 0.2


def test_tsne_of_trained_cnn_codes_matches_opentsne_quality(
    fashion: IDXDataModule, sane_run: tuple[ActivationMonitor, Any]
) -> None:
    """Penultimate codes of the demo CNN trained on Fashion-MNIST: our t-SNE against openTSNE's defaults."""
    import numpy as np
    from openTSNE import TSNE
    from sklearn.manifold import trustworthiness

    from lightning_cnnviz import EmbeddingMonitor
    from lightning_cnnviz.core import knn_accuracy, tsne

    _, trainer = sane_run
    model = trainer.lightning_module
    images, labels = fashion._val.tensors[0][:512], fashion._val.tensors[1][:512]
    monitor = EmbeddingMonitor()
    monitor.setup(trainer, model, "validate")
    codes = monitor.codes(model, images)
    assert codes.shape == (512, 128)
    ours = tsne(codes).numpy()
    theirs = np.asarray(TSNE(n_jobs=2, random_state=0).fit(codes.numpy()))
    scores = {
        name: (
            trustworthiness(codes.numpy(), embedding, n_neighbors=5),
            knn_accuracy(torch.from_numpy(np.ascontiguousarray(embedding)), labels),
        )
        for name, embedding in (("ours", ours), ("openTSNE", theirs))
    }
    print(f"CNN codes: trustworthiness / 5-NN accuracy {scores}")
    assert abs(scores["ours"][0] - scores["openTSNE"][0]) <= 0.01
    assert abs(scores["ours"][1] - scores["openTSNE"][1]) <= 0.02


class WindowMagnitudes(pl.Callback):
    """Independent of the monitor: per channel, the float64 sum of |activation| of every training forward of the
    last window (steps ``start`` to the end), from plain forward hooks on the activation modules."""

    def __init__(self, names: list[str], start: int) -> None:
        self.names, self.start = names, start
        self.sums: dict[str, Tensor] = {}
        self.positions: dict[str, int] = {}
        self.handles: list[Any] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        modules = dict(pl_module.named_modules())
        for name in self.names:

            def keep(module: torch.nn.Module, args: Any, output: Tensor, name: str = name) -> None:
                if pl_module.training and trainer.global_step >= self.start:
                    values = output.detach().double().abs().transpose(0, 1).reshape(output.shape[1], -1)
                    self.sums[name] = self.sums.get(name, 0) + values.sum(1)
                    self.positions[name] = self.positions.get(name, 0) + values.shape[1]

            self.handles.append(modules[name].register_forward_hook(keep))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self.handles:
            handle.remove()

    def dormant(self, name: str, threshold: float = 0.1) -> list[int]:
        means = self.sums[name] / self.positions[name]
        return [int(i) for i in torch.nonzero(means / means.mean() <= threshold).flatten()]


@pytest.mark.parametrize("nonlinearity", ["silu", "gelu"])
def test_dormant_alert_fires_on_destructive_learning_rate_and_matches_brute_force(
    tmp_path: Path, fashion: IDXDataModule, nonlinearity: str
) -> None:
    names = ["net.act1", "net.act2", "net.act3"]
    results = {}
    for optimizer, lr in (("sgd", 0.05), ("adam", 0.03)):
        pl.seed_everything(0, verbose=False)
        model = ImageClassifier(in_channels=1, num_classes=10, optimizer=optimizer, lr=lr, nonlinearity=nonlinearity)  # type: ignore[arg-type]
        monitor = ActivationMonitor(every_n_steps=25)
        reference = WindowMagnitudes(names, start=STEPS - 25)
        trainer = make_trainer(tmp_path / optimizer, [monitor, reference], max_steps=STEPS, deterministic=False)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            trainer.fit(model, datamodule=fashion)
        # the last window's dormant sets (red cells of the dormant map) against the brute-force ones
        for name in names:
            last = monitor.health.rate_history[name][-1]
            assert [c for c, rate in enumerate(last) if rate == 0] == reference.dormant(name), name
        results[optimizer] = (monitor, {name: len(reference.dormant(name)) for name in names})
        dormant, alerts = results[optimizer][1], len(monitor.alerts)
        print(f"\n{nonlinearity} {optimizer} lr={lr}: dormant per layer {dormant}, alerts {alerts}")
    sane, broken = results["sgd"][0], results["adam"][0]
    assert sane.alerts == []
    assert broken.alerts and all(alert["measure"] == "dormant" for alert in broken.alerts)
    assert sum(results["adam"][1].values()) >= 32
    assert all("dormant" in alert["message"] and "learning rate: 0.03" in alert["message"] for alert in broken.alerts)
