"""The configs a user starts from (``configs/``): each parses, and each fits for a few steps where its data is.

The three demo configs are the packaged ones (``lightning_cnnviz/demo/configs``, what ``cnnviz demo`` runs), byte
for byte. Fashion-MNIST and CIFAR-10 fit where their real data is found (``CNNVIZ_DATA``, our CI's folder, Debian's
Fashion-MNIST package) and are only parsed elsewhere (under ``CI=true`` missing data fails); the ResNet-18 config
fits on a small ImageFolder made here.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import ROOT, SHARED_DATA, in_ci, read_events
from lightning_cnnviz.cli import lightning_cli
from lightning_cnnviz.demo.data import find_data, how_to_get

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MONITORS = ("FilterMonitor", "ActivationMonitor", "ActivationMapMonitor", "SaliencyMonitor", "TopPatchMonitor")
MONITORS += ("EmbeddingMonitor", "ClassModelMonitor", "InversionMonitor")
MONITORS += ("FeatureVisMonitor", "ActivationAtlasMonitor", "OcclusionMonitor", "InvarianceMonitor")
TAGS = ("cnnviz/filters/", "cnnviz/activations/", "cnnviz/saliency/", "cnnviz/top_patches/", "cnnviz/embedding/")
TAGS += ("cnnviz/feature_vis/", "cnnviz/occlusion/", "cnnviz/invariance/")


def test_the_demo_configs_are_the_packaged_ones() -> None:
    packaged = sorted((ROOT / "lightning_cnnviz" / "demo" / "configs").glob("*.yaml"))
    assert [path.name for path in packaged] == ["cifar10.yaml", "digits.yaml", "fashion_mnist.yaml"]
    for path in packaged:
        assert (ROOT / "configs" / path.name).read_bytes() == path.read_bytes(), f"configs/{path.name} differs"
    assert {path.name for path in CONFIGS} >= {"resnet18_imagefolder.yaml", "every_monitor.yaml"}


def image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 40) -> Path:
    """A small ImageFolder tree of coloured noise, images of two sizes (the data module resizes them)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in range(classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for index in range(per_class):
                side = size + 8 * (index % 2)
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                pixels[..., label] = 255
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def data_arguments(config: Path, tmp_path: Path) -> list[str] | None:
    """Arguments that point ``config`` at data on this machine; None when its data is not here."""
    if config.stem in ("digits", "every_monitor"):
        return []
    if config.stem == "resnet18_imagefolder":
        tree = image_folder(tmp_path / "tree")
        sizes = ["--data.init_args.image_size", "32", "--data.init_args.batch_size", "8"]
        return ["--data.init_args.root", str(tree), *sizes, "--model.init_args.num_classes", "3"]
    name = {"fashion_mnist": "fashion-mnist", "cifar10": "cifar10"}[config.stem]
    found = find_data(name, roots=[SHARED_DATA])
    if found is None and in_ci():
        pytest.fail(f"{config.name} cannot be fitted: {how_to_get(name)} (CI=true: CI must provide it)")
    return None if found is None else ["--data.init_args.root", str(found), "--data.init_args.limit_val", "256"]


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_config_parses_and_fits_where_its_data_is(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # LightningCLI reads its arguments from ``args`` only
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exited:
        lightning_cli(["fit", "--config", str(config), "--print_config"])
    assert exited.value.code in (0, None)
    parsed = yaml.safe_load(printed.getvalue())
    monitors = [callback["class_path"].rsplit(".", 1)[-1] for callback in parsed["trainer"]["callbacks"]]
    assert sorted(monitors) == sorted(MONITORS)  # every config has every monitor
    data = data_arguments(config, tmp_path)
    if data is None:
        print(f"\n{config.name}: parsed; its data is not on this machine, so no fit")
        return
    logdir = tmp_path / "runs"
    short = "--trainer.max_epochs 1 --trainer.limit_train_batches 2 --trainer.limit_val_batches 2"
    short += " --trainer.enable_progress_bar false --trainer.enable_model_summary false"
    short += " --trainer.enable_checkpointing false --trainer.accelerator cpu"
    lightning_cli(
        ["fit", "--config", str(config), *data, "--trainer.logger.init_args.save_dir", str(logdir), *short.split()]
    )
    tags = set(read_events(logdir)["images"]) | set(read_events(logdir)["scalars"])
    for prefix in TAGS:
        assert any(tag.startswith(prefix) for tag in tags), f"{config.name}: no {prefix}* tag"


def test_every_monitor_config_writes_each_argument_at_its_default() -> None:
    """``configs/every_monitor.yaml`` says it lists every argument at its default: each value it writes is the
    monitor's default, and it leaves out only the arguments that take a Python function."""
    import inspect

    import lightning_cnnviz

    config = yaml.safe_load((ROOT / "configs" / "every_monitor.yaml").read_text())
    seen = set()
    for callback in config["trainer"]["callbacks"]:
        name = callback["class_path"].rsplit(".", 1)[1]
        seen.add(name)
        parameters = inspect.signature(getattr(lightning_cnnviz, name)).parameters
        written = callback["init_args"]
        for argument, value in written.items():
            default = parameters[argument].default
            default = list(default) if isinstance(default, tuple) else default
            assert value == default, f"{name}.{argument}: the config writes {value!r}, the default is {default!r}"
        left_out = {a for a in parameters if a not in written}
        functions = {"batch_to_images", "batch_to_labels", "output_to_logits", "normalize", "on_dead"}
        assert left_out <= functions, f"{name}: {sorted(left_out - functions)} not written out"
    assert seen == set(MONITORS)


def test_print_config_lists_every_argument_of_every_monitor(capsys: pytest.CaptureFixture[str]) -> None:
    """The monitors document a parameter once and refer to their core object for the rest; LightningCLI still sees
    every argument of every monitor in their signatures."""
    import inspect

    import lightning_cnnviz

    with contextlib.suppress(SystemExit):
        lightning_cli(["fit", "--config", str(ROOT / "configs" / "every_monitor.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    names = []
    for callback in printed["trainer"]["callbacks"]:
        name = callback["class_path"].rsplit(".", 1)[1]
        names.append(name)
        parameters = set(inspect.signature(getattr(lightning_cnnviz, name)).parameters)
        assert set(callback["init_args"]) == parameters, name
    assert sorted(names) == sorted(MONITORS)
