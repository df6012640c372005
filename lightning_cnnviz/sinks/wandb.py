"""The W&B sink: every entry of a snapshot in one ``log_metrics`` call of the ``WandbLogger`` at the global step,
with the epoch alongside. ``wandb`` is imported when the first entry is written, never before."""

from __future__ import annotations

from typing import Any

from lightning_cnnviz.core.protocol import Moment, Snapshot
from lightning_cnnviz.sinks.base import as_moment, caption_of, finite_values, pixels

__all__ = ["WandbSink"]

#: Projector points that get a thumbnail in the W&B table (each thumbnail is one file of the run).
MAX_THUMBNAILS = 1024


class WandbSink:
    """Writes a snapshot to W&B through ``logger.log_metrics(entries, step)`` (Lightning's ``WandbLogger``, or any
    logger with that method whose run takes ``wandb`` values): pictures as ``wandb.Image`` with their captions,
    scalars as numbers, histograms as ``wandb.Histogram``, texts (the alerts) as a ``wandb.Table`` of
    ``epoch, step, text``, Projector data as a ``wandb.Table`` of each point's metadata, thumbnail and code.

    Example:
        >>> class Logger:  # a stand-in for WandbLogger, to show the call
        ...     def log_metrics(self, metrics, step): print(sorted(metrics), step)
        >>> from lightning_cnnviz.core import Moment, Snapshot
        >>> WandbSink(Logger()).write(Snapshot(scalars={"cnnviz/cost/FilterMonitor/seconds": 0.1}), Moment(2, 40))
        ['cnnviz/cost/FilterMonitor/seconds', 'epoch'] 40
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    @property
    def where(self) -> str:
        return f"W&B ({type(self.logger).__name__})"

    def write(self, snapshot: Snapshot, moment: Moment | int, per_step: bool = False) -> None:
        moment = as_moment(moment)
        entries: dict[str, Any] = dict(snapshot.scalars)
        if snapshot.images or snapshot.histograms or snapshot.texts or snapshot.embeddings:
            entries.update(self._media(snapshot, moment))
        if entries:
            self.logger.log_metrics({**entries, "epoch": moment.epoch}, step=moment.step)

    def _media(self, snapshot: Snapshot, moment: Moment) -> dict[str, Any]:
        import wandb

        entries: dict[str, Any] = {
            tag: wandb.Image(pixels(image), caption=caption_of(snapshot, tag, moment))
            for tag, image in snapshot.images.items()
        }
        for tag, values in snapshot.histograms.items():
            finite = finite_values(values)
            if finite.numel():
                entries[tag] = wandb.Histogram(finite.tolist())
        for tag, texts in snapshot.texts.items():
            entries[tag] = wandb.Table(
                columns=["epoch", "step", "text"], data=[[moment.epoch, moment.step, text] for text in texts]
            )
        for tag, data in snapshot.embeddings.items():
            codes = data.codes.detach().float().cpu().tolist()
            metadata = data.metadata or [""] * len(codes)
            shown: Any = [] if data.thumbnails is None else data.thumbnails[:MAX_THUMBNAILS]
            thumbs = [wandb.Image(pixels(t)) for t in shown]
            rows = [[i, metadata[i], thumbs[i] if i < len(thumbs) else None, code] for i, code in enumerate(codes)]
            entries[tag] = wandb.Table(columns=["point", "metadata", "thumbnail", "code"], data=rows)
        return entries

    def flush(self) -> None:
        """W&B writes in its own process; the run's end (``wandb.finish``) waits for it."""

    def close(self) -> None:
        self.flush()
