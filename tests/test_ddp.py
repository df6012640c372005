"""Distributed: a real 2-process CPU (gloo) DDP fit; ranks agree on dead filters, images are written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, read_events


def test_ddp_two_processes_agree_and_write_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_PORT", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_fit.py"), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "is deprecated" not in result.stderr, "gathers use collectives torch does not deprecate"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["pid"] != ranks[1]["pid"]
    assert all(r["world_size"] == 2 for r in ranks)
    # 719 images per rank, batch 32, drop_last: 22 steps per epoch -> 5 full windows of 4 and one of 2, per epoch
    # (a short window at the end of an epoch continues into the next, so 17 windows over 66 steps)
    assert ranks[0]["windows"] == ranks[1]["windows"] == 17
    # "auto": rank 0's budget allows every epoch, rank 1's none; both ranks log when rank 0 says
    assert ranks[0]["auto_logged_epochs"] == ranks[1]["auto_logged_epochs"] == [[0, 1, 2]] * 3
    # all-reduced counts: every rank holds the same history, to the last bit
    assert ranks[0]["rate_history"] == ranks[1]["rate_history"]
    assert ranks[0]["last_dead"] == ranks[1]["last_dead"]
    assert ranks[0]["last_dead"]["net.relu1"] == [1, 4, 6]
    assert [a["dead_channels"] for a in ranks[0]["alerts"]] == [a["dead_channels"] for a in ranks[1]["alerts"]]
    assert ranks[0]["alerts"][0]["layer"] == "net.relu1"

    events = read_events(tmp_path)
    with_images = [f for f in events["event_files"] if os.path.getsize(f) > 0]
    assert len({os.path.dirname(f) for f in with_images}) == 1  # one run folder, written by rank 0 only
    assert [e.step for e in events["images"]["cnnviz/filters/net.conv1"]] == [0, 1, 2]  # once per epoch, not twice
    assert [e.step for e in events["scalars"]["cnnviz/cost/FilterMonitor/seconds"]] == [0, 1, 2]
    assert len(events["scalars"]["cnnviz/activations/dead/net.relu1"]) == 17
    assert {e.value for e in events["scalars"]["cnnviz/activations/dead/net.relu1"]} == {3.0}
    # top patches: the probe is the first 50 validation images (gathered in the sampler's order), the merged
    # top-k of the two shards equals a single-process scan, both ranks hold it, images are written once
    for r in ranks:
        assert r["probe_size"] == 50 and r["probe_is_first_val_images"]
        assert r["top_equal_single_process"] == {"net.conv1": True, "net.conv3": True}
    assert ranks[0]["top_images"] == ranks[1]["top_images"]
    assert ranks[0]["evolution_columns"] == 3 and ranks[1]["evolution_columns"] == 0  # drawn on rank 0 only
    assert [e.step for e in events["images"]["cnnviz/top_patches/net.conv3"]] == [0, 1, 2]
    assert [e.step for e in events["images"]["cnnviz/evolution/net.conv1"]] == [0, 1, 2]
    # embedding: same probe on both ranks, codes gathered from both shards, t-SNE and images on rank 0 only
    assert all(r["embedding_probe_is_first_val"] for r in ranks)
    assert ranks[0]["embedding_map_shape"] == [60, 2] and ranks[1]["embedding_map_shape"] is None
    assert abs(ranks[0]["embedding_knn"] - ranks[0]["embedding_knn_single_process"]) < 1e-9
    assert [e.step for e in events["images"]["cnnviz/embedding/tsne"]] == [0, 1, 2]
    assert [e.step for e in events["scalars"]["cnnviz/embedding/knn_accuracy"]] == [0, 1, 2]
    # saliency: one class-balanced probe, gathered from both ranks' candidates, the same on both ranks
    assert ranks[0]["saliency_probe"] == ranks[1]["saliency_probe"]
    assert sorted(ranks[0]["saliency_probe"][0]) == [0, 1, 2, 3]
    # activation maps: one class-balanced probe on both ranks, drawn on rank 0 only, framed by the all-reduced window
    assert ranks[0]["maps_probe"] == ranks[1]["maps_probe"] and sorted(ranks[0]["maps_probe"][0]) == [0, 1, 2, 3]
    assert ranks[1]["maps_dead"] == {}
    dead, seen = ranks[0]["maps_dead"]["net.relu1"]
    assert dead == ranks[0]["last_dead"]["net.relu1"] and seen.startswith("the latest training window")
    assert [e.step for e in events["images"]["cnnviz/activation_maps/net.relu1"]] == [0, 1, 2]
    # inversion: the same class-balanced probe on both ranks, reconstructed and drawn on rank 0 only
    assert ranks[0]["inversion_probe"] == ranks[1]["inversion_probe"] == ranks[0]["maps_probe"]
    assert [ranks[0]["inversion_drawn"], ranks[1]["inversion_drawn"]] == [True, False]
    assert [e.step for e in events["images"]["cnnviz/inversion"]] == [0, 1, 2]
    # the activation atlas: the same probe on both ranks, laid out and drawn on rank 0 only
    assert ranks[0]["atlas_probe"] == ranks[1]["atlas_probe"]
    assert [ranks[0]["atlas_drawn"], ranks[1]["atlas_drawn"]] == [True, False]
    assert [e.step for e in events["images"]["cnnviz/activation_atlas/net.relu3"]] == [0, 1, 2]
    # the occlusion figure and the invariance curves: images split over the ranks, gathered, drawn on rank 0 only,
    # equal to one process
    assert ranks[0]["occlusion_probe"] == ranks[1]["occlusion_probe"] == ranks[0]["maps_probe"]
    assert ranks[0]["occlusion_equal_single_process"] is True and ranks[1]["occlusion_equal_single_process"] is None
    assert ranks[0]["invariance_equal_single_process"] is True and ranks[1]["invariance_equal_single_process"] is None
    assert [e.step for e in events["images"]["cnnviz/occlusion/net.relu3"]] == [0, 1, 2]
    assert [e.step for e in events["scalars"]["cnnviz/invariance/rotation/net.fc"]] == [0, 1, 2]
    # feature visualization: channels split over the ranks, gathered, drawn on rank 0 only, equal to one process
    assert ranks[0]["feature_vis_equal_single_process"] is True and ranks[1]["feature_vis_equal_single_process"] is None
    for tag in ("cnnviz/feature_vis/net.conv2", "cnnviz/feature_vis_patches/net.conv2", "cnnviz/deep_dream"):
        assert [e.step for e in events["images"][tag]] == [0, 1, 2]
    texts = events["text"]["cnnviz/alerts"]
    assert len(texts) == len(ranks[0]["alerts"])
