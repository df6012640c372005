"""Private to the callbacks: what they read from a Trainer, written once (its ranks, its probe service, its sinks,
where the fit stands, the learning rate, the progress bar's text while a monitor draws)."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_cnnviz.core import Moment, ProbeService, Ranks
from lightning_cnnviz.sinks import Sinks, sink_for

_services: weakref.WeakKeyDictionary[pl.Trainer, ProbeService] = weakref.WeakKeyDictionary()
_sinks: weakref.WeakKeyDictionary[pl.Trainer, Sinks] = weakref.WeakKeyDictionary()
#: A monitor's log that takes longer than this says what it draws.
SAY_AFTER_SECONDS = 1.0


def sinks_of(trainer: pl.Trainer) -> Sinks:
    """The sinks of the Trainer's loggers (made once per fit, shared by its monitors) on rank zero; none elsewhere."""
    if trainer.global_rank != 0:
        return Sinks()
    if trainer not in _sinks:
        _sinks[trainer] = sink_for(trainer.loggers, trainer.default_root_dir, rank_zero_warn, rank_zero_info)
    return _sinks[trainer]


def release_sinks(trainer: pl.Trainer) -> None:
    """Flush and forget the Trainer's sinks at the end of a fit (a next fit makes them again)."""
    sinks = _sinks.pop(trainer, None)
    if sinks is not None:
        sinks.close()


@contextlib.contextmanager
def saying(trainer: pl.Trainer, what: str) -> Iterator[None]:
    """Runs the body; when it takes more than a second, says ``what`` is being drawn, on rank zero: in the progress
    bar's text (TQDM's), else as one line."""
    bar = getattr(trainer.progress_bar_callback, "train_progress_bar", None) if trainer.is_global_zero else None
    shown: list[str] = []

    def say() -> None:
        if bar is not None and hasattr(bar, "set_postfix_str"):
            shown.append(str(getattr(bar, "postfix", "") or ""))
            bar.set_postfix_str(f"cnnviz: {what}", refresh=True)
        else:
            rank_zero_info(f"cnnviz: {what}")

    timer = threading.Timer(SAY_AFTER_SECONDS, say) if trainer.is_global_zero else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
        if shown and bar is not None:
            bar.set_postfix_str(shown[0], refresh=True)


def ranks_of(trainer: pl.Trainer) -> Ranks:
    """The Trainer's processes: the one gather path of every monitor."""
    return Ranks(trainer.world_size, trainer.global_rank, trainer.strategy.root_device)


def moment_of(trainer: pl.Trainer) -> Moment:
    """Where the fit stands: its epoch and global step."""
    return Moment(trainer.current_epoch, trainer.global_step)


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
