"""Private to the callbacks: what they read from a Trainer, written once (its ranks, its probe service, where the
fit stands, the learning rate)."""

from __future__ import annotations

import weakref

import lightning.pytorch as pl

from lightning_cnnviz.core import ProbeService, Ranks

_services: weakref.WeakKeyDictionary[pl.Trainer, ProbeService] = weakref.WeakKeyDictionary()


def ranks_of(trainer: pl.Trainer) -> Ranks:
    """The Trainer's processes: the one gather path of every monitor."""
    return Ranks(trainer.world_size, trainer.global_rank, trainer.strategy.root_device)


def service_of(trainer: pl.Trainer) -> ProbeService:
    """The one probe service of ``trainer``, shared by all its monitors (a monitor set up without one has its own)."""
    return ProbeService() if trainer is None else _services.setdefault(trainer, ProbeService())


def learning_rate(trainer: pl.Trainer) -> float | None:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError, TypeError):
        return None


def last_by_max_epochs(trainer: pl.Trainer) -> bool:
    """Whether the epoch now ending is the last that ``max_epochs`` allows: the epoch monitors' last log at an epoch
    end. A fit that stops for another reason (max_steps, early stopping) is drawn once more at its end instead,
    at the epoch count the Trainer then reports (:func:`last_epoch` asks whether it stops for any reason)."""
    return trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1


def last_epoch(trainer: pl.Trainer) -> bool:
    """Whether the fit stops after the epoch now ending (max_epochs, max_steps or a stop request)."""
    steps_done = trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step
    epochs_done = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
    return bool(trainer.should_stop or steps_done or epochs_done)
