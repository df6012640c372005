"""The one place where results become TensorBoard calls. Rank zero writes; every other rank gets a no-op.

Every tag starts with ``cnnviz/``, then the monitor, then the layer or method (the README lists them). The
monitors find the run's ``TensorBoardLogger``; when the Trainer has none (``logger=False``, or only a
CSV/W&B/... logger) they write to a ``SummaryWriter`` of their own in ``<default_root_dir>/cnnviz`` and say so
once, so the pictures are never silently lost.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch
from torch import Tensor

from lightning_cnnviz.core.protocol import Snapshot

__all__ = ["CUSTOM_SCALARS_LAYOUT", "TensorBoardSink"]

CUSTOM_SCALARS_LAYOUT: dict[str, dict[str, list[Any]]] = {
    "cnnviz health": {
        "dead (ReLU family) and dormant (every kind) fraction of every layer": [
            "Multiline",
            [r"cnnviz/activations/dead_fraction/.*", r"cnnviz/activations/dormant_fraction/.*"],
        ],
        "non-finite channels (count)": ["Multiline", [r"cnnviz/activations/nonfinite/.*"]],
        "visualization cost (fraction of training time so far)": ["Multiline", [r"cnnviz/cost/.*/fraction"]],
        "visualization cost (seconds per log)": ["Multiline", [r"cnnviz/cost/.*/seconds"]],
    },
    "cnnviz": {
        "activation sparsity (fraction of zeros)": ["Multiline", [r"cnnviz/activations/sparsity/.*"]],
        "dead filters (count)": ["Multiline", [r"cnnviz/activations/dead/.*"]],
        "dead filters (fraction)": ["Multiline", [r"cnnviz/activations/dead_fraction/.*"]],
        "dormant channels (fraction)": ["Multiline", [r"cnnviz/activations/dormant_fraction/.*"]],
        "filter smoothness": ["Multiline", [r"cnnviz/filters/smoothness/.*"]],
        "embedding kNN accuracy": ["Multiline", [r"cnnviz/embedding/knn_accuracy.*"]],
    },
}

_layout_written: weakref.WeakSet[Any] = weakref.WeakSet()
_fallback_writers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


class TensorBoardSink:
    """Writes images, scalars, histograms and text to a TensorBoard ``SummaryWriter`` (or nowhere).

    Args:
        writer: a ``SummaryWriter``-like object, or ``None`` for a sink that drops everything (ranks > 0).
    """

    def __init__(self, writer: Any | None) -> None:
        self.writer = writer
        if writer is not None and writer not in _layout_written:
            writer.add_custom_scalars(CUSTOM_SCALARS_LAYOUT)
            _layout_written.add(writer)

    @property
    def active(self) -> bool:
        return self.writer is not None

    @classmethod
    def from_trainer(cls, trainer: Any, who: str) -> TensorBoardSink:
        """The run's TensorBoard writer on rank zero (or the documented fallback); a no-op sink elsewhere."""
        if trainer.global_rank != 0:
            return cls(None)
        from lightning.pytorch.loggers import TensorBoardLogger
        from lightning.pytorch.utilities import rank_zero_warn

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return cls(logger.experiment)
        writer = _fallback_writers.get(trainer)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            directory = os.path.join(trainer.default_root_dir, "cnnviz")
            writer = SummaryWriter(log_dir=directory)
            _fallback_writers[trainer] = writer
            rank_zero_warn(
                f"{who}: the Trainer has no TensorBoardLogger (loggers: "
                f"{[type(lg).__name__ for lg in trainer.loggers] or 'none'}); writing the visualizations to "
                f"{directory!r} instead. Open them with `tensorboard --logdir {directory}`, or pass "
                "`logger=TensorBoardLogger(...)` to the Trainer."
            )
        return cls(writer)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        """A (3, H, W) or (1, H, W) image with values in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, image.detach().float().clamp(0, 1).cpu(), global_step=step, dataformats="CHW")

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Several scalars, each under its own tag."""
        for tag, value in values.items() if self.writer is not None else ():
            self.writer.add_scalar(tag, value, global_step=step)  # type: ignore[union-attr]

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        if self.writer is None:
            return
        finite = values.detach().double().cpu()
        finite = finite[torch.isfinite(finite)]
        if finite.numel():
            self.writer.add_histogram(tag, finite, global_step=step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, markdown, global_step=step)

    def embedding(
        self, tag: str, features: Tensor, step: int, metadata: list[str] | None = None, thumbnails: Tensor | None = None
    ) -> None:
        """Projector data: ``features`` (N, D), one metadata string per point, thumbnails (N, C, h, w) in [0, 1]
        for the sprite (TensorBoard caps the sprite at 8192 px a side: keep ``h * ceil(sqrt(N))`` below it)."""
        if self.writer is None:
            return
        self.writer.add_embedding(
            features.detach().float().cpu(),
            metadata=metadata,
            label_img=None if thumbnails is None else thumbnails.detach().float().clamp(0, 1).cpu(),
            global_step=step,
            tag=tag,
        )
        _latest_projector_first(self.writer.get_logdir())

    def write(self, snapshot: Snapshot, step: int) -> None:
        """Every entry of a monitor's :class:`~lightning_cnnviz.core.Snapshot` at ``step``."""
        for tag, values in snapshot.histograms.items():
            self.histogram(tag, values, step)
        self.scalars(snapshot.scalars, step)
        for tag, picture in snapshot.images.items():
            self.image(tag, picture, step)
        for tag, texts in snapshot.texts.items():
            for text in texts:
                self.text(tag, text, step)
        for tag, data in snapshot.embeddings.items():
            self.embedding(tag, data.codes, step, metadata=data.metadata, thumbnails=data.thumbnails)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()


def close_fallback_writer(trainer: Any) -> None:
    """Flush and close the fallback writer made for ``trainer``, if any (called at teardown)."""
    writer = _fallback_writers.pop(trainer, None)
    if writer is not None:
        writer.close()


def _latest_projector_first(logdir: str) -> None:
    """Put the embedding just written first in the run's ``projector_config.pbtxt``: the Projector opens on the
    first one, and the latest codes are the ones to look at."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    path = os.path.join(logdir, "projector_config.pbtxt")
    if not os.path.isfile(path):
        return
    with open(path) as handle:
        config = text_format.Parse(handle.read(), ProjectorConfig())
    if len(config.embeddings) < 2:
        return
    ordered = [config.embeddings[-1], *config.embeddings[:-1]]
    reordered = ProjectorConfig()
    reordered.embeddings.extend(ordered)
    with open(path, "w") as handle:
        handle.write(text_format.MessageToString(reordered))
