"""The plain-PyTorch and Fabric examples run and write every monitor's pictures. (That the core objects they use
draw exactly what the callbacks draw is tested per monitor: the ``test_a_plain_loop_*`` tests.)"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from conftest import ROOT, global_state_clean, read_events

FAMILIES = ("cnnviz/filters/", "cnnviz/activations/dead_map/", "cnnviz/activations/distribution/")
FAMILIES += ("cnnviz/saliency/grad_cam", "cnnviz/top_patches/", "cnnviz/evolution/", "cnnviz/embedding/tsne")
FAMILIES += ("cnnviz/activation_maps/", "cnnviz/activation_maps_evolution/", "cnnviz/class_models")
FAMILIES += ("cnnviz/embedding/neighbours", "cnnviz/feature_vis/", "cnnviz/feature_vis_evolution/")
FAMILIES += ("cnnviz/feature_vis_patches/",)


@pytest.mark.parametrize("example", ["plain_pytorch", "fabric"])
def test_example_writes_every_monitors_pictures(example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    module = importlib.import_module(example)
    logdir = module.main(["--epochs", "2", "--steps-per-epoch", "10", "--logdir", str(tmp_path / "runs")])
    events = read_events(logdir)
    for family in FAMILIES:
        tags = [tag for tag in events["images"] if tag.startswith(family)]
        assert tags, f"{example}: no {family}* picture"
        assert all([e.step for e in events["images"][tag]] in ([0, 1], [10, 20]) for tag in tags), family
    assert "cnnviz/embedding/knn_accuracy" in events["scalars"]
    assert any(tag.startswith("cnnviz/activations/dead_fraction/") for tag in events["scalars"])
    assert global_state_clean()
    sys.modules.pop(example, None)
