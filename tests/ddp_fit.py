"""A real 2-process Lightning DDP fit on CPU (gloo) with both monitors; each rank writes what it saw as JSON.

Run by tests/test_ddp.py as ``python tests/ddp_fit.py OUT_DIR``; Lightning re-launches this script for rank 1.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_cnnviz import (
    ActivationAtlasMonitor,
    ActivationMapMonitor,
    ActivationMonitor,
    EmbeddingMonitor,
    FeatureVisMonitor,
    FilterMonitor,
    InvarianceMonitor,
    InversionMonitor,
    OcclusionMonitor,
    SaliencyMonitor,
    TopPatchMonitor,
)
from lightning_cnnviz.core import (
    Budget,
    Context,
    Moment,
    Probe,
    Ranks,
    knn_accuracy,
    top_activations,
    visualize_features,
)
from lightning_cnnviz.demo.data import DigitsDataModule
from lightning_cnnviz.demo.models import ImageClassifier

DEAD = [1, 4, 6]


class RankBudget(Budget):
    """A budget that would let rank 0 log at every epoch and rank 1 never: the monitors on "auto" must follow rank
    0's decision on both ranks (else rank 1 skips the collectives of a log and the fit hangs)."""

    def due(self, who: str) -> bool:
        return int(os.environ.get("LOCAL_RANK", "0")) == 0


def main() -> None:
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", message=r"torch\.distributed\.nn\.functional\..* is deprecated")  # shown
    out = sys.argv[1]
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(channels=(8, 16, 16), lr=0.01)
    with torch.no_grad():
        model.net.conv1.weight[DEAD] = 0.0
        model.net.conv1.bias[DEAD] = -100.0
    activations = ActivationMonitor(every_n_steps=4, on_error="raise")
    maps = ActivationMapMonitor(every_n_epochs=1, on_error="raise")
    inversion = InversionMonitor(every_n_epochs=1, steps=8, on_error="raise")
    atlas = ActivationAtlasMonitor(probe_size=40, vectors=200, grid=4, steps=4, every_n_epochs=1, on_error="raise")
    occlusion = OcclusionMonitor(every_n_epochs=1, on_error="raise")
    invariance = InvarianceMonitor(every_n_epochs=1, transformations=("translation", "rotation"), on_error="raise")
    embedding = EmbeddingMonitor(probe_size=60, every_n_epochs=1, on_error="raise")
    saliency = SaliencyMonitor(methods=("grad_cam", "smoothgrad"), num_images=4, smoothgrad_samples=3, on_error="raise")
    patches = TopPatchMonitor(layers=["net.conv1", "net.conv3"], probe_size=50, method="both", on_error="raise")
    vis = FeatureVisMonitor(
        layers=["net.conv2"], every_n_epochs=1, steps=8, probe_size=50, dream_images=1, on_error="raise"
    )
    filters = FilterMonitor(on_error="raise", budget=RankBudget())  # "auto", as the saliency and patch monitors
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=3,
        logger=TensorBoardLogger(out, name="ddp"),
        callbacks=[
            filters,
            activations,
            maps,
            inversion,
            atlas,
            occlusion,
            invariance,
            saliency,
            patches,
            embedding,
            vis,
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=2,
    )
    data = DigitsDataModule(batch_size=32)
    trainer.fit(model, datamodule=data)
    # the merged top-k of the ranks' shards against one single-process scan of the same probe set
    probe = patches.probe_images
    assert probe is not None
    single = top_activations(model, dict(patches.gallery.selection.chosen_channels), probe, k=patches.k)
    top_equal = {
        name: all(
            torch.equal(getattr(patches.last_top[name], f), getattr(single[name], f)) for f in ("images", "ys", "xs")
        )
        and torch.allclose(patches.last_top[name].values, single[name].values)
        for name in single
    }
    # the embedding: codes gathered from both ranks equal one process's codes of the same probe
    assert embedding.probe_images is not None and embedding.probe_labels is not None
    codes = embedding.codes(model, embedding.probe_images)
    single_accuracy = knn_accuracy(codes, embedding.probe_labels, k=5)
    # the feature visualizations: each rank rendered every second channel; rank 0 holds them all, as one process
    assert vis.probe_images is not None
    single_render = visualize_features(
        model, "net.conv2", vis.selection.chosen_channels["net.conv2"], size=16, in_channels=1, steps=8,
        lr=vis.renderer.lr, colors=vis.renderer.colors(vis.probe_images), normalize=vis.renderer.to_model,
    )  # fmt: skip
    rendered = vis.last_images.get("net.conv2")
    # the occlusion figure and the invariance curves: each rank took every second image; rank 0 holds them all
    shown = Probe(occlusion.probe_images, occlusion.probe_labels)
    occlusion_equal = invariance_equal = None
    if occlusion.figure.last is not None and invariance.curves.last is not None:
        context = Context(Moment(epoch=0, step=-1))
        single_panels, _ = occlusion.figure.measure(model, shown.images, shown.labels, context, context.guard)
        occlusion_equal = bool(torch.allclose(occlusion.figure.last.b, single_panels.b, atol=1e-4)
                               and torch.equal(occlusion.figure.last.e, single_panels.e))  # fmt: skip
        scaled = invariance.context(Moment(epoch=0, step=-1), Ranks.single())  # the data module's mean and std
        single_curves, _ = invariance.curves.curves(model, shown.images, shown.labels, scaled)
        invariance_equal = all(
            torch.allclose(invariance.curves.last[kind].distances[layer], found.distances[layer], atol=1e-5)
            for kind, found in single_curves.items() for layer in found.distances
        )
    report = {
        "feature_vis_equal_single_process": None
        if rendered is None
        else bool(torch.allclose(rendered, single_render, atol=1e-4)),
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "windows": activations.health.windows,
        "rate_history": activations.health.rate_history,
        "last_dead": activations.health.policy.last_dead,
        "alerts": activations.alerts,
        "pid": os.getpid(),
        "probe_is_first_val_images": bool(torch.equal(probe, data._val.tensors[0][: len(probe)])),
        "probe_size": len(probe),
        "top_equal_single_process": top_equal,
        "top_images": {name: top.images.tolist() for name, top in patches.last_top.items()},
        "evolution_columns": len(patches.history.columns("net.conv1")),
        "embedding_probe_is_first_val": bool(
            torch.equal(embedding.probe_images, data._val.tensors[0][:60])
            and torch.equal(embedding.probe_labels, data._val.tensors[1][:60])
        ),
        "saliency_probe": [saliency.probe_labels.tolist(), saliency.probe_images.sum().item()],
        "maps_probe": [maps.probe_labels.tolist(), maps.probe_images.sum().item()],
        "inversion_probe": [inversion.probe_labels.tolist(), inversion.probe_images.sum().item()],
        "inversion_drawn": inversion.inversion.last_images is not None,
        "atlas_probe": atlas.probe_images.sum().item(),
        "atlas_drawn": atlas.atlas.last_images is not None,
        "occlusion_probe": [occlusion.probe_labels.tolist(), occlusion.probe_images.sum().item()],
        "occlusion_equal_single_process": occlusion_equal,
        "invariance_equal_single_process": invariance_equal,
        "maps_dead": {name: [list(drawn["health"].dead), drawn["seen"]] for name, drawn in maps.maps.last.items()},
        "embedding_map_shape": None if embedding.last_map is None else list(embedding.last_map.shape),
        "embedding_knn": embedding.last_knn_accuracy,
        "embedding_knn_single_process": single_accuracy,
        "auto_logged_epochs": [m.logged_epochs for m in (filters, saliency, patches)],
    }
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
