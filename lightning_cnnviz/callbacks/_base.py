"""What every monitor shares: argument checks, error policy, cadence, the sink, cleanup."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_cnnviz.core.images import images_from_batch, labels_from_batch
from lightning_cnnviz.core.layers import conv_layers
from lightning_cnnviz.sink import TensorBoardSink, close_fallback_writer

ErrorPolicy = Literal["warn", "raise"]
T = TypeVar("T")

__all__ = [
    "EpochMonitorBase",
    "ErrorPolicy",
    "MonitorBase",
    "OrderedProbeMonitorBase",
    "ProbeMonitorBase",
    "check_choice",
    "check_positive_int",
    "gather_interleaved",
]


def check_positive_int(who: str, argument: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{who}: `{argument}` must be a positive integer, got {value!r}.")
    return value


def check_choice(who: str, argument: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        raise ValueError(f"{who}: `{argument}` can be {{{', '.join(map(repr, allowed))}}}, got {value!r}.")
    return value


class MonitorBase(Callback):
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


class EpochMonitorBase(MonitorBase):
    """A monitor that logs every ``every_n_epochs`` training epochs and once more for the final state."""

    def __init__(self, every_n_epochs: int = 1, on_error: ErrorPolicy = "warn") -> None:
        super().__init__(on_error=on_error)
        self.every_n_epochs = check_positive_int(self._who, "every_n_epochs", every_n_epochs)
        self._last_logged_step: int | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_logged_step = None

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def _log_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_logged_step = trainer.global_step
        self._log(trainer, pl_module)

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


class ProbeMonitorBase(EpochMonitorBase):
    """An epoch monitor with a fixed probe set from the validation data, or, in a run without validation
    data, from the first training batches (``self._probe_from_training`` says which, from ``on_train_start``)."""

    def __init__(self, every_n_epochs: int = 1, on_error: ErrorPolicy = "warn") -> None:
        super().__init__(every_n_epochs=every_n_epochs, on_error=on_error)
        self._probe_from_training = False

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._probe_from_training = not any(trainer.num_val_batches)


def gather_interleaved(trainer: pl.Trainer, local: Tensor, counts: Tensor) -> Tensor:
    """All ranks' ``local`` rows (rank ``r`` holds ``counts[r]`` of them) in the order of a distributed sampler
    without shuffling: row 0 of rank 0, row 0 of rank 1, ..., row 1 of rank 0, ... A collective; returned on
    the host."""
    quota = int(counts.max())
    padded = local.new_zeros((quota, *local.shape[1:]))
    padded[: len(local)] = local
    everything = trainer.strategy.all_gather(padded.to(trainer.strategy.root_device)).cpu()  # (W, quota, ...)
    keep = torch.arange(quota)[:, None] < counts.cpu()[None, :]  # (quota, W)
    return everything.transpose(0, 1)[keep]


class OrderedProbeMonitorBase(ProbeMonitorBase):
    """Probe = the first ``probe_size`` images (and labels, when batches have them) of the first validation pass
    (the sanity check excluded), in the validation order; without validation data, of the first training
    batches. Under DDP every rank keeps ``ceil(probe_size / world_size)`` of its own batches and the parts are
    gathered in the distributed sampler's interleaved order, so every rank holds the same probe set, the one a
    single process would take."""

    def __init__(
        self,
        probe_size: int,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        every_n_epochs: int = 1,
        on_error: ErrorPolicy = "warn",
    ) -> None:
        super().__init__(every_n_epochs=every_n_epochs, on_error=on_error)
        self.probe_size = check_positive_int(self._who, "probe_size", probe_size)
        self.batch_to_images = batch_to_images
        self._reset_probe()

    def _reset_probe(self) -> None:
        self._collected: list[tuple[Tensor, Tensor | None]] = []
        self._probe: Tensor | None = None
        self._probe_labels: Tensor | None = None

    @property
    def probe_images(self) -> Tensor | None:
        """The fixed probe set (on the host), once chosen."""
        return self._probe

    @property
    def probe_labels(self) -> Tensor | None:
        """The probe set's labels (on the host), when the batches carry them."""
        return self._probe_labels

    def _quota(self, trainer: pl.Trainer) -> int:
        return math.ceil(self.probe_size / max(1, trainer.world_size))

    def _offer(self, trainer: pl.Trainer, batch: Any) -> None:
        have = sum(len(images) for images, _ in self._collected)
        if self._probe is not None or have >= self._quota(trainer):
            return
        images = images_from_batch(batch, who=self._who, batch_to_images=self.batch_to_images)
        take = self._quota(trainer) - have
        labels = labels_from_batch(batch, images)
        self._collected.append(
            (images[:take].detach().cpu(), None if labels is None else labels[:take].detach().cpu().long())
        )

    def _finish_probe(self, trainer: pl.Trainer) -> None:
        """Fix the probe set. A collective under DDP: every rank calls it at the same point."""
        if self._probe is not None:
            return
        images = torch.cat([i for i, _ in self._collected]) if self._collected else None
        with_labels = bool(self._collected) and all(labels is not None for _, labels in self._collected)
        labels = torch.cat([lab for _, lab in self._collected if lab is not None]) if with_labels else None
        if trainer.world_size > 1:
            device = trainer.strategy.root_device
            count = torch.tensor([0 if images is None else len(images)], device=device)
            counts = trainer.strategy.all_gather(count).view(-1).cpu()
            if int(counts.max()) == 0:
                return
            if images is None:
                raise RuntimeError(f"{self._who}: a rank collected no probe images while others did")
            images = gather_interleaved(trainer, images, counts)
            has_labels = trainer.strategy.all_gather(torch.tensor([int(labels is not None)], device=device))
            if int(has_labels.min()) == 1:
                assert labels is not None
                labels = gather_interleaved(trainer, labels, counts)
            else:
                labels = None
        if images is None or len(images) == 0:
            return
        self._probe = images[: self.probe_size].contiguous()
        self._probe_labels = None if labels is None else labels[: self.probe_size].contiguous()
        self._collected = []

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.sanity_checking and dataloader_idx == 0:
            self._offer(trainer, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._finish_probe(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._probe_from_training:
            self._offer(trainer, batch)
