"""lightning_cnnviz: Lightning callbacks that show in TensorBoard, while a CNN trains, what it learns and when
it breaks.

Add the monitors to your Trainer::

    from lightning_cnnviz import ActivationMonitor, FilterMonitor
    trainer = Trainer(callbacks=[FilterMonitor(), ActivationMonitor()])

A picture of your own (any :class:`lightning_cnnviz.core.Picture`) becomes a monitor as ``EpochMonitor(picture)``.
The pictures go to every logger of the Trainer (TensorBoard, W&B, MLflow, CSV; :func:`register_sink` adds a kind).
The tensor work lives in :mod:`lightning_cnnviz.core` (pure torch). The names below are loaded on first use,
so ``import lightning_cnnviz.core`` works without Lightning or TensorBoard installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_cnnviz.callbacks import (
        ActivationAtlasMonitor,
        ActivationMapMonitor,
        ActivationMonitor,
        ClassModelMonitor,
        EmbeddingMonitor,
        EpochMonitor,
        FeatureVisMonitor,
        FilterMonitor,
        InvarianceMonitor,
        InversionMonitor,
        OcclusionMonitor,
        SaliencyMonitor,
        TopPatchMonitor,
    )
    from lightning_cnnviz.core.monitors.alerts import DeadFilterEvent
    from lightning_cnnviz.sinks import TensorBoardSink, register_sink, sink_for

__version__ = "0.1.0"

_SINKS = "lightning_cnnviz.sinks"
_HOMES = {"DeadFilterEvent": "lightning_cnnviz.core.monitors.alerts", "TensorBoardSink": _SINKS}
_HOMES.update(register_sink=_SINKS, sink_for=_SINKS)
__all__ = [
    "ActivationAtlasMonitor",
    "ActivationMapMonitor",
    "ActivationMonitor",
    "ClassModelMonitor",
    "DeadFilterEvent",
    "EmbeddingMonitor",
    "EpochMonitor",
    "FeatureVisMonitor",
    "FilterMonitor",
    "InvarianceMonitor",
    "InversionMonitor",
    "OcclusionMonitor",
    "SaliencyMonitor",
    "TensorBoardSink",
    "TopPatchMonitor",
    "__version__",
    "register_sink",
    "sink_for",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module(_HOMES.get(name, "lightning_cnnviz.callbacks")), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_cnnviz' has no attribute {name!r}")
