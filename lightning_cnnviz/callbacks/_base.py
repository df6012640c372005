"""Private to the callbacks: what every monitor keeps (its core picture, the error policy, the sink, cleanup)."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_cnnviz.callbacks._trainer import release_sinks, sinks_of
from lightning_cnnviz.core import DoesNotApply, Guard, Moment, Picture, Ranks, Snapshot, StepPicture, model_device
from lightning_cnnviz.sinks import Sinks

ErrorPolicy = Literal["warn", "raise"]


class Monitor(Callback):
    """Base of the monitors: the core :class:`~lightning_cnnviz.core.Picture` it hosts, the ``on_error`` policy (a
    :class:`~lightning_cnnviz.core.Guard` saying through ``rank_zero_warn``: a failing piece is reported once and
    switched off, training goes on), the sinks of the Trainer's loggers, and cleanup on every exit path.
    Configuration errors always raise at ``setup``; a model the picture cannot serve is said once, and it stays off."""

    _state_fields: tuple[str, ...] = ()  # the attributes that tell two of these monitors apart in a checkpoint

    def __init__(self, core: Picture, on_error: ErrorPolicy = "warn", who: str | None = None) -> None:
        super().__init__()
        who = who or type(self).__name__
        self.core = core
        self.guard = Guard(who, on_error, say=rank_zero_warn, inform=rank_zero_info)  # on_error checked there
        self.on_error: ErrorPolicy = on_error
        self._sink: Sinks | None = None
        self.off = False  # the picture does not apply to the model (said once)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**{name: getattr(self, name) for name in self._state_fields})

    def fit_core(self, model: nn.Module, example: Any = None) -> None:
        """``attach`` the core picture to ``model`` (with ``example``, when it is a tensor): a bad configuration
        raises; a model it cannot serve switches the monitor off, said once; any other failure follows the error
        policy (and leaves it off)."""
        example = example.to(model_device(model)) if isinstance(example, Tensor) else None
        try:
            self.core.attach(model, example)
            self.off = False
        except DoesNotApply as reason:
            self.off = True
            self.guard.warn_once(f"does not apply: {reason} It stays off; the fit goes on.")
        except (ValueError, TypeError):
            raise
        except Exception as error:
            self.off = True
            self.guard.run("setting up", _raise, error)

    def draw(self, model: Any, moment: Moment, ranks: Ranks) -> Snapshot | None:
        """What the monitor draws of ``model`` now (None when nothing is due): the one verb ``cnnviz report`` calls
        for every monitor."""
        raise NotImplementedError

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sink_for(trainer)  # says at once where the pictures go when no logger takes them

    def _sink_for(self, trainer: pl.Trainer) -> Sinks:
        if self._sink is None:
            self._sink = sinks_of(trainer)
        return self._sink

    def write(self, trainer: pl.Trainer, shot: Snapshot | None, moment: Moment, per_step: bool = False) -> None:
        """``shot`` to every logger of the Trainer (rank zero); a tracker that fails follows the error policy."""
        if shot is not None:
            self._sink_for(trainer).write(shot, moment, per_step, guard=self.guard)

    def _cleanup(self) -> None:
        """Remove hooks and any state that spans Lightning hooks (a step picture's tap). Safe to call again."""
        if isinstance(self.core, StepPicture):
            self.core.close()

    @override
    def state_dict(self) -> dict[str, Any]:
        return dict(self.core.state_dict())

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.core.load_state_dict(state_dict)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._cleanup()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._cleanup()
        release_sinks(trainer)
        self._sink = None


def _raise(error: Exception) -> None:
    raise error
