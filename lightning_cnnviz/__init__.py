"""lightning_cnnviz: Lightning callbacks that show in TensorBoard, while a CNN trains, what it learns and when it breaks.

Add the monitors to your Trainer::

    from lightning_cnnviz import ActivationMonitor, FilterMonitor
    trainer = Trainer(callbacks=[FilterMonitor(), ActivationMonitor()])

The tensor work lives in :mod:`lightning_cnnviz.core` (pure torch, usable without Lightning).
"""

from lightning_cnnviz.callbacks import ActivationMonitor, DeadFilterEvent, FilterMonitor
from lightning_cnnviz.sink import TensorBoardSink

__version__ = "0.1.0"

__all__ = ["ActivationMonitor", "DeadFilterEvent", "FilterMonitor", "TensorBoardSink", "__version__"]
