"""Private to the callbacks: what every monitor keeps (its core object, the error policy, the sink, cleanup)."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_cnnviz.core import Guard, check_choice, conv_layers
from lightning_cnnviz.sink import TensorBoardSink, close_fallback_writer

ErrorPolicy = Literal["warn", "raise"]


class Monitor(Callback):
    """Base of the monitors: the ``on_error`` policy (a :class:`~lightning_cnnviz.core.Guard` saying through
    ``rank_zero_warn``: a failing piece is reported once and switched off, training goes on), the TensorBoard sink,
    and cleanup on every exit path. Configuration errors always raise at ``setup``."""

    core: Any = None  # the Trainer-free object that holds the monitor's state and logic
    _state_fields: tuple[str, ...] = ()  # the attributes that tell two of these monitors apart in a checkpoint

    def __init__(self, on_error: ErrorPolicy = "warn") -> None:
        super().__init__()
        self.on_error: ErrorPolicy = check_choice(type(self).__name__, "on_error", on_error, ("warn", "raise"))
        self.guard = Guard(type(self).__name__, self.on_error, say=rank_zero_warn, inform=rank_zero_info)
        self._sink: TensorBoardSink | None = None
        self.off = False  # the monitor does not apply to the model (see ``applies``)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**{name: getattr(self, name) for name in self._state_fields})

    def applies(self, model: nn.Module) -> str | None:
        """Why this monitor does not apply to ``model`` (it then stays off, said once); None when it does."""
        return None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        reason = self.applies(pl_module)
        self.off = reason is not None
        if reason is not None:
            self.guard.once(f"does not apply: {reason} It stays off; the fit goes on.")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sink_for(trainer)  # says at once where the pictures go when the Trainer has no TensorBoardLogger

    def _sink_for(self, trainer: pl.Trainer) -> TensorBoardSink:
        if self._sink is None:
            self._sink = TensorBoardSink.from_trainer(trainer, self.guard.who)
        return self._sink

    def _cleanup(self) -> None:
        """Remove hooks and any state that spans Lightning hooks. Safe to call several times."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return dict(self.core.state_dict()) if hasattr(self.core, "state_dict") else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if hasattr(self.core, "load_state_dict"):
            self.core.load_state_dict(state_dict)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._cleanup()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._cleanup()
        if self._sink is not None:
            self._sink.flush()
        close_fallback_writer(trainer)
        self._sink = None


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def convolutions(model: nn.Module) -> str:
    """What convolutions ``model`` has, for a sentence: ``"nn.Conv1d layers"``, ``"no convolution"``."""
    kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, CONVS)})
    return " and ".join(f"nn.{kind}" for kind in kinds) + " layers" if kinds else "no convolution"


def needs_2d_images(model: nn.Module) -> str | None:
    """Why a monitor of 2-D images does not apply to ``model`` (no ``nn.Conv2d``), else None."""
    if conv_layers(model):
        return None
    return (
        f"it needs 2-D images (N, C, H, W) and nn.Conv2d layers, and {type(model).__name__} has {convolutions(model)}."
    )
