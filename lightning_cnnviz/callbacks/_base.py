"""Private to the callbacks: what every monitor shares (argument checks, error policy, the sink, cleanup) and
the epoch cadence with its optional probe set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_cnnviz.callbacks._probe import ProbeSet
from lightning_cnnviz.core._checks import check_choice, check_positive_int
from lightning_cnnviz.core._model import conv_layers
from lightning_cnnviz.sink import TensorBoardSink, close_fallback_writer

ErrorPolicy = Literal["warn", "raise"]
T = TypeVar("T")

__all__ = ["EpochMonitor", "ErrorPolicy", "Monitor", "check_choice", "check_positive_int"]


class Monitor(Callback):
    """Base of the monitors: the ``on_error`` policy, the TensorBoard sink, and cleanup on every exit path.

    Errors raised by visualization work are reported once with ``rank_zero_warn`` and switch that piece off
    for the rest of the run (training goes on), unless ``on_error="raise"``. Configuration errors always
    raise at ``setup``.
    """

    def __init__(self, on_error: ErrorPolicy = "warn") -> None:
        super().__init__()
        self.on_error: ErrorPolicy = check_choice(type(self).__name__, "on_error", on_error, ("warn", "raise"))
        self._disabled: set[str] = set()
        self._sink: TensorBoardSink | None = None

    @property
    def _who(self) -> str:
        return type(self).__name__

    def _check_model(self, pl_module: pl.LightningModule) -> None:
        if not conv_layers(pl_module):
            raise ValueError(
                f"{self._who}: {type(pl_module).__name__} has no nn.Conv2d layer. lightning_cnnviz monitors "
                "convolutional networks; add the monitor to a model with at least one torch.nn.Conv2d."
            )

    def _sink_for(self, trainer: pl.Trainer) -> TensorBoardSink:
        if self._sink is None:
            self._sink = TensorBoardSink.from_trainer(trainer, self._who)
        return self._sink

    def _run(self, piece: str, work: Callable[..., T], *args: Any) -> T | None:
        """Run one piece of visualization work under the error policy; None when it failed or is off."""
        if piece in self._disabled:
            return None
        try:
            return work(*args)
        except Exception as error:
            if self.on_error == "raise":
                raise
            self._disabled.add(piece)
            rank_zero_warn(
                f"{self._who}: {piece} failed with {type(error).__name__}: {error}. It is switched off for the "
                f"rest of this run; training continues. Pass on_error='raise' to {self._who} to see the "
                "traceback."
            )
            return None

    def _cleanup(self) -> None:
        """Remove hooks and any state that spans Lightning hooks. Safe to call several times."""

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


class EpochMonitor(Monitor):
    """A monitor that logs every ``every_n_epochs`` training epochs and once more for the final state; with a
    ``probe_size`` it keeps a :class:`~lightning_cnnviz.callbacks._probe.ProbeSet` (``self.probe``) and feeds it
    the batches it needs."""

    def __init__(
        self,
        every_n_epochs: int = 1,
        on_error: ErrorPolicy = "warn",
        probe_size: int | None = None,
        probe_argument: str = "probe_size",
        **probe: Any,
    ) -> None:
        super().__init__(on_error=on_error)
        self.every_n_epochs = check_positive_int(self._who, "every_n_epochs", every_n_epochs)
        self.probe: ProbeSet | None = None
        if probe_size is not None:
            self.probe = ProbeSet(self._who, check_positive_int(self._who, probe_argument, probe_size), **probe)
        self._last_logged_step: int | None = None
        self._diverged: dict[str, bool] = {}

    @property
    def probe_images(self) -> Tensor | None:
        """The fixed probe set (on the host), once chosen; ``probe_labels``: its labels, when batches carry them."""
        return None if self.probe is None else self.probe.images

    @property
    def probe_labels(self) -> Tensor | None:
        return None if self.probe is None else self.probe.labels

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._check_model(pl_module)
        if stage == "fit" and self.probe is not None:  # chosen once per fit, from that fit's data
            self.probe.reset()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_logged_step = None

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def _log_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_logged_step = trainer.global_step
        if self.probe is not None:
            self.probe.finish(trainer)  # every rank, before any rank-zero-only work: a collective under DDP
        if self.finite(pl_module.parameters(), pl_module.buffers(), what="the model's weights", trainer=trainer):
            self._log(trainer, pl_module)

    def finite(self, *tensors: Any, what: str, trainer: pl.Trainer) -> bool:
        """Whether every tensor (or iterable of tensors) is finite; when not, the epoch's pictures are skipped with
        one message per divergence (the same on every rank: DDP keeps the weights equal), and logging resumes
        once the values are finite again. One host sync."""
        flat = [t for group in tensors for t in ([group] if isinstance(group, Tensor) else group)]
        checks = [torch.isfinite(t).all() for t in flat if t.is_floating_point() and t.numel()]
        ok = bool(torch.stack(checks).all()) if checks else True
        if not ok and not self._diverged.get(what, False):
            rank_zero_warn(
                f"{self._who}: {what} hold NaN or infinite values at epoch {trainer.current_epoch} (step "
                f"{trainer.global_step}): the network diverged. Its pictures are skipped until the values are "
                "finite again; ActivationMonitor names the first layer where they appear."
            )
        self._diverged[what] = not ok
        return ok

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs == 0 or last:
            self._log_now(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run that stopped between cadence points (max_steps, early stopping) still shows its final state.
        if self._last_logged_step != trainer.global_step:
            self._log_now(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is not None:
            self.probe.start(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.probe is not None and self.probe.from_training:
            self.probe.offer(trainer, batch)

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.probe is not None and not trainer.sanity_checking and dataloader_idx == 0:
            self.probe.offer(trainer, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is not None and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.probe.finish(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"probe": self.probe.state_dict()} if self.probe is not None else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.probe is not None:
            self.probe.load_state_dict(state_dict.get("probe", {}))
