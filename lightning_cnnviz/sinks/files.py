"""The files sink: pictures as PNG files, ``<folder>/<tag>/<step>.png`` (the tags start with ``cnnviz/``), for a
``CSVLogger`` (its log folder; the scalars in its metrics file) or a Trainer without a logger (the run's
``default_root_dir``; the scalars in ``cnnviz/metrics.csv`` there). Every entry goes at the global step."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning_cnnviz.core.protocol import Moment, Snapshot
from lightning_cnnviz.sinks.base import as_moment, markdown, png, say_once, write_projector

__all__ = ["FileSink"]


class FileSink:
    """Writes a snapshot as files under ``folder``: each picture as ``<tag>/<step>.png``, each text as
    ``<tag>/<step>.md``, Projector data in TensorBoard's layout under ``cnnviz/projector/``; the scalars through
    ``metrics`` (a logger's ``log_metrics(values, step)``, as a ``CSVLogger``'s) or, without one, as rows of
    ``step,epoch,tag,value`` in ``cnnviz/metrics.csv``. Histograms are not written (said once).

    Example:
        >>> import tempfile, torch
        >>> from lightning_cnnviz.core import Moment, Snapshot
        >>> sink = FileSink(tempfile.mkdtemp())
        >>> sink.write(Snapshot(images={"cnnviz/filters/conv1": torch.zeros(3, 4, 4)}), Moment(epoch=1, step=20))
        >>> sorted(p.name for p in (sink.folder / "cnnviz" / "filters" / "conv1").iterdir())
        ['20.png']
    """

    def __init__(self, folder: str | os.PathLike[str], metrics: Any = None) -> None:
        self.folder, self.metrics = Path(folder), metrics
        self._said: set[str] = set()

    @property
    def where(self) -> str:
        return f"PNG files under {str(self.folder / 'cnnviz')!r}"

    def _path(self, tag: str, name: str) -> Path:
        parts = [part for part in tag.split("/") if part not in ("", ".", "..")]
        path = self.folder.joinpath(*parts, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, snapshot: Snapshot, moment: Moment | int, per_step: bool = False) -> None:
        moment = as_moment(moment)
        step = moment.step
        for tag, image in snapshot.images.items():
            self._path(tag, f"{step}.png").write_bytes(png(image))
        if snapshot.scalars:
            self._scalars(snapshot.scalars, moment)
        for tag, texts in snapshot.texts.items():
            with self._path(tag, f"{step}.md").open("a", encoding="utf-8") as handle:
                handle.write(markdown(texts))
        if snapshot.histograms:
            say_once(self._said, f"{self.where}: histograms are not written as files ({sorted(snapshot.histograms)[0]}"
                     ", ...); TensorBoard and W&B show them.")  # fmt: skip
        for tag, data in snapshot.embeddings.items():
            projector = self.folder / "cnnviz" / "projector"
            write_projector(str(projector), tag, step, data.codes, data.metadata, data.thumbnails)

    def _scalars(self, values: dict[str, float], moment: Moment) -> None:
        if self.metrics is not None:
            self.metrics.log_metrics(dict(values), moment.step)
            return
        path = self._path("cnnviz", "metrics.csv")
        new = not path.exists()
        with path.open("a", newline="", encoding="utf-8") as handle:
            rows = csv.writer(handle)
            if new:
                rows.writerow(["step", "epoch", "tag", "value"])
            rows.writerows([moment.step, moment.epoch, tag, repr(float(v))] for tag, v in values.items())

    def flush(self) -> None:
        """Nothing is buffered: every file is written when its entry comes."""

    def close(self) -> None:
        self.flush()
