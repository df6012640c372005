"""The MLflow sink: pictures through the run's client (``log_image`` with a key and the global step, written
synchronously), scalars through the ``MLFlowLogger``'s ``log_metrics``, texts and Projector data as artifacts."""

from __future__ import annotations

import re
import tempfile
from typing import Any

from lightning_cnnviz.core.protocol import Moment, Snapshot
from lightning_cnnviz.sinks.base import as_moment, markdown, pixels, say_once, write_projector

__all__ = ["MLflowSink"]


def image_key(tag: str) -> str:
    """``tag`` as an MLflow image key (letters, digits, ``_ - . /`` and spaces; anything else becomes ``_``)."""
    return re.sub(r"[^a-zA-Z0-9_\-./ ]", "_", tag)


class MLflowSink:
    """Writes a snapshot to an MLflow run: ``logger.experiment`` (an ``MlflowClient``) and ``logger.run_id``, as
    Lightning's ``MLFlowLogger`` has them. Pictures with ``log_image(run_id, image, key=tag, step=global step,
    synchronous=True)`` (nothing is left in a queue at the end of a fit), scalars with ``logger.log_metrics``,
    texts as ``<tag>/<step>.md`` artifacts, Projector data as TensorBoard's files under the ``cnnviz_projector``
    artifact folder. Histograms have no MLflow form: they are not written (said once).

    Example:
        >>> sink = MLflowSink(logger=None)  # a run's MLFlowLogger in practice
        >>> sink.where
        'MLflow (NoneType)'
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self._said: set[str] = set()

    @property
    def where(self) -> str:
        return f"MLflow ({type(self.logger).__name__})"

    def write(self, snapshot: Snapshot, moment: Moment | int, per_step: bool = False) -> None:
        moment = as_moment(moment)
        client, run_id, step = self.logger.experiment, self.logger.run_id, moment.step
        for tag, image in snapshot.images.items():
            client.log_image(run_id, pixels(image), key=image_key(tag), step=step, synchronous=True)
        if snapshot.scalars:
            self.logger.log_metrics(dict(snapshot.scalars), step)
        for tag, texts in snapshot.texts.items():
            client.log_text(run_id, markdown(texts), f"{image_key(tag)}/{step}.md")
        if snapshot.histograms:
            say_once(self._said, f"{self.where}: MLflow has no histograms; {sorted(snapshot.histograms)[0]}, ... are "
                     "not written there (TensorBoard and W&B show them).")  # fmt: skip
        for tag, data in snapshot.embeddings.items():
            with tempfile.TemporaryDirectory() as folder:
                write_projector(folder, tag, step, data.codes, data.metadata, data.thumbnails)
                client.log_artifacts(run_id, folder, artifact_path="cnnviz_projector")

    def flush(self) -> None:
        """Every write is synchronous: nothing is queued."""

    def close(self) -> None:
        self.flush()
