"""Where the pictures go: one :class:`Sink` per kind of logger, chosen by the logger's type.

:func:`sink_for` makes the sinks of a run's loggers (a Trainer's ``trainer.loggers``, Fabric's ``fabric.loggers``,
or none): TensorBoard, W&B, MLflow and CSV loggers are known; :func:`register_sink` adds another kind (Comet,
Neptune, ...). Each logger gets every picture, scalar and text; without a logger, or with only loggers that hold
no pictures, they go to PNG files under the run's folder, said once. Nothing imports ``wandb`` or ``mlflow``
unless such a logger is in use. Sinks are made on rank zero only; other ranks write nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lightning_cnnviz.core.protocol import Guard, Moment, Snapshot
from lightning_cnnviz.sinks.base import Sink, write_projector
from lightning_cnnviz.sinks.files import FileSink
from lightning_cnnviz.sinks.mlflow import MLflowSink
from lightning_cnnviz.sinks.tensorboard import CUSTOM_SCALARS_LAYOUT, TensorBoardSink
from lightning_cnnviz.sinks.wandb import WandbSink

__all__ = [
    "CUSTOM_SCALARS_LAYOUT",
    "FileSink",
    "MLflowSink",
    "Sink",
    "Sinks",
    "TensorBoardSink",
    "WandbSink",
    "register_sink",
    "sink_for",
    "write_projector",
]

SinkFactory = Callable[[Any], "Sink | None"]

#: Logger type (a class, or its ``module.QualName`` so that the module need not be imported) -> factory.
_REGISTRY: dict[type | str, SinkFactory] = {}


def register_sink(logger_type: type | str, factory: SinkFactory) -> None:
    """Write the pictures of a run to every logger of ``logger_type`` (a class, or its ``"module.QualName"``; its
    subclasses too) with the :class:`Sink` that ``factory(logger)`` makes (None: the logger takes no pictures, as
    Lightning's stand-in logger of ``fast_dev_run``, and the run counts as having none). A later registration of the
    same type replaces an earlier one.

    Example:
        >>> class MyLogger:  # a Comet or Neptune logger, say
        ...     def log_metrics(self, metrics, step): pass
        >>> register_sink(MyLogger, WandbSink)  # or your own sink: write(snapshot, moment, per_step), flush, close
        >>> [type(s).__name__ for s in sink_for([MyLogger()], root=".").sinks]
        ['WandbSink']
    """
    if not (isinstance(logger_type, (type, str)) and callable(factory)):
        raise TypeError(
            "register_sink(logger_type, factory): logger_type is a class or its 'module.QualName' and factory a "
            f"callable of the logger; got {logger_type!r} and {factory!r}."
        )
    _REGISTRY[logger_type] = factory


def factory_of(logger: Any) -> SinkFactory | None:
    """The factory registered for the logger's type or its nearest base class, else None."""
    for cls in type(logger).__mro__:
        for key in (cls, f"{cls.__module__}.{cls.__qualname__}"):
            if key in _REGISTRY:
                return _REGISTRY[key]
    return None


class Sinks:
    """Several sinks written as one: what a monitor writes goes to each. With a ``guard``, a sink that fails is
    reported once and left out for that writer, and the others go on (the fit is never stopped by a tracker).

    Example:
        >>> import tempfile
        >>> from lightning_cnnviz.core import Snapshot
        >>> sinks = Sinks([FileSink(tempfile.mkdtemp())])
        >>> sinks.write(Snapshot(scalars={"cnnviz/x": 1.0}), 0)
        >>> sinks.where.startswith("PNG files under")
        True
    """

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks = list(sinks)

    @property
    def where(self) -> str:
        return "; ".join(s.where for s in self.sinks) or "nowhere"

    def write(
        self, snapshot: Snapshot, moment: Moment | int, per_step: bool = False, guard: Guard | None = None
    ) -> None:
        for sink in self.sinks:
            if guard is None:
                sink.write(snapshot, moment, per_step)
            else:
                guard.run(f"writing to {sink.where}", sink.write, snapshot, moment, per_step)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def sink_for(
    loggers: Sequence[Any], root: str | os.PathLike[str], say: Callable[[str], Any] | None = None,
    inform: Callable[[str], Any] | None = None,
) -> Sinks:  # fmt: skip
    """The sinks of a run's ``loggers``: one per logger whose type is registered (its nearest registered base
    class). Without a logger, PNG files under ``root`` (the Trainer's ``default_root_dir``), said once through
    ``inform``; a logger with no registered sink is named once through ``say``, with where its pictures went
    (to the other loggers, else to PNG files under its own ``log_dir`` or ``root``).

    Example:
        >>> import tempfile
        >>> [type(s).__name__ for s in sink_for([], root=tempfile.mkdtemp(), inform=lambda m: None).sinks]
        ['FileSink']
    """
    say = say or _warn
    inform = inform or _warn
    made: list[Sink] = []
    unknown, files = [], None
    for logger in loggers:
        factory = factory_of(logger)
        if factory is None:
            unknown.append(logger)
        elif (sink := factory(logger)) is not None:
            made.append(sink)
    if not made:
        folder = next((d for d in (getattr(lg, "log_dir", None) for lg in unknown) if isinstance(d, str)), None)
        files = FileSink(folder or root)
        made.append(files)
        if not unknown:
            inform(
                f"lightning_cnnviz: the run has no logger; the pictures go to {files.where} as <tag>/<step>.png, "
                f"the scalars to {str(files.folder / 'cnnviz' / 'metrics.csv')!r}."
            )
    for logger in unknown:
        say(
            f"lightning_cnnviz: no sink is registered for the logger {type(logger).__name__} (register one with "
            f"lightning_cnnviz.register_sink); its pictures went to {Sinks(made).where}."
        )
    for sink in made:
        if isinstance(sink, FileSink) and sink.metrics is not None:
            inform(f"lightning_cnnviz: the pictures go to {sink.where} as <tag>/<step>.png; the scalars to the "
                   f"{type(sink.metrics).__name__}'s metrics file.")  # fmt: skip
    return Sinks(made)


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)


def _register_lightning_loggers() -> None:
    """Lightning's and Fabric's loggers (their modules import neither ``wandb`` nor ``mlflow``), and W&B's Fabric
    logger by name (its module imports ``wandb``)."""
    from lightning.fabric import loggers as fabric
    from lightning.pytorch import loggers as trainer

    def tensorboard(logger: Any) -> Sink:
        return TensorBoardSink(logger.experiment)

    def files(logger: Any) -> Sink:
        return FileSink(logger.log_dir, metrics=logger)

    for kind, factory in ((trainer.TensorBoardLogger, tensorboard), (fabric.TensorBoardLogger, tensorboard),
                          (trainer.CSVLogger, files), (fabric.CSVLogger, files)):  # fmt: skip
        register_sink(kind, factory)
    register_sink(trainer.WandbLogger, WandbSink)
    register_sink("wandb.integration.lightning.fabric.logger.WandbLogger", WandbSink)
    register_sink(trainer.MLFlowLogger, MLflowSink)
    register_sink("lightning.pytorch.loggers.logger.DummyLogger", lambda logger: None)  # fast_dev_run's


try:  # the core and the plain-loop sinks work without Lightning; the registry then starts empty
    _register_lightning_loggers()
except ImportError:  # pragma: no cover - Lightning is a dependency of the package
    pass
