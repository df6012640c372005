"""The protocol every monitor's core object keeps, Trainer-free (:class:`Picture`): ``attach(model, example)`` fits
it to a model, ``snapshot(model, probe, context)`` returns a :class:`Snapshot` of what is drawn, and
``state_dict()``/``load_state_dict()`` carry what a resume needs; an object that also watches training steps keeps
:class:`StepPicture` too.

:class:`Guard` is the error policy (a failing piece of visualization is reported once and switched off, or raises)
and the divergence check; :class:`Ranks` is the one way the monitors gather tensors over processes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from lightning_cnnviz.core.context import Context
    from lightning_cnnviz.core.inputs.probe import Probe

__all__ = ["DoesNotApply", "Embedding", "Guard", "Moment", "Picture", "Ranks", "Snapshot", "StepPicture"]

T = TypeVar("T")


class DoesNotApply(Exception):
    """A picture that cannot be drawn for this model or these batches (no labels where labels are needed, an
    output that is not class scores, ...): the message is one sentence naming what was found and what the user
    can pass. :meth:`Guard.run` says it once and leaves that piece off, whatever the error policy: it is not a bug
    to see a traceback of.

    Example:
        >>> said = []
        >>> guard = Guard("MyPicture", say=said.append)
        >>> def draw(): raise DoesNotApply("it needs class labels, and the batches hold none.")
        >>> guard.run("kNN accuracy", draw), said
        (None, ['MyPicture: kNN accuracy does not apply: it needs class labels, and the batches hold none.'])
    """


@dataclass(frozen=True)
class Moment:
    """Where in training a snapshot is taken: the epoch (the x-axis of epoch-by-epoch pictures) and the global step.

    Example:
        >>> Moment(epoch=2, step=300).caption
        'ep 2 (step 300)'
    """

    epoch: int
    step: int

    @property
    def caption(self) -> str:
        return f"ep {self.epoch} (step {self.step})"


@dataclass
class Embedding:
    """Projector data: codes (N, D), one metadata string per point (or None), sprite thumbnails (N, C, h, w).

    Example:
        >>> shot = Snapshot(embeddings={"cnnviz/embedding": Embedding(torch.zeros(4, 8), ["a", "b", "a", "b"])})
        >>> shot.embeddings["cnnviz/embedding"].codes.shape
        torch.Size([4, 8])
    """

    codes: Tensor
    metadata: list[str] | None = None
    thumbnails: Tensor | None = None


@dataclass
class Snapshot:
    """What a monitor draws at one moment, by tag: images (C, H, W) in [0, 1] with an optional caption each (shown by
    trackers that take one, as W&B), scalars, histograms (values), texts (several entries per tag, each its own
    text) and Projector embeddings. A sink (:class:`~lightning_cnnviz.sinks.Sink`) writes one to a tracker.

    Example:
        >>> shot = Snapshot(scalars={"cnnviz/filters/smoothness/conv1": 0.9})
        >>> shot.update(Snapshot(texts={"cnnviz/alerts": ["conv1 dead", "conv2 dead"]}))
        >>> sorted(shot.tags())
        ['cnnviz/alerts', 'cnnviz/filters/smoothness/conv1']
    """

    images: dict[str, Tensor] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Tensor] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    embeddings: dict[str, Embedding] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)  # by image tag: what the picture shows

    def update(self, other: Snapshot | None) -> None:
        """Add ``other``'s entries (a later entry replaces an earlier one of the same tag)."""
        if other is not None:
            for name in ("images", "scalars", "histograms", "texts", "embeddings", "captions"):
                getattr(self, name).update(getattr(other, name))

    def tags(self) -> list[str]:
        return [*self.images, *self.scalars, *self.histograms, *self.texts, *self.embeddings]


class Guard:
    """The error policy of one monitor, and its divergence check.

    ``run(piece, work, *args)`` runs one piece of visualization work: with ``on_error="warn"`` an exception is
    warned about once (through ``say``, default: ``warnings.warn``) and switches that piece off (``None`` is returned,
    now and on later calls); with ``"raise"`` it propagates. A :class:`DoesNotApply` switches the piece off with one
    warning that says so (:meth:`switch_off`) under either policy. :meth:`warn` warns, :meth:`warn_once` warns of a
    message once, :meth:`inform` informs once (through ``inform``, default: the ``lightning_cnnviz`` logger at INFO)
    of a choice made; :meth:`finite` warns once per divergence that values are not finite. Every message starts with
    ``who``: the picture's name, or the monitor's when an adapter gives its own.

    Example:
        >>> said = []
        >>> guard = Guard("MyMonitor", on_error="warn", say=said.append)
        >>> guard.run("ratio", lambda: 1 / 0)
        >>> said[0][:58]
        'MyMonitor: ratio failed with ZeroDivisionError: division b'
        >>> guard.run("ratio", lambda: 1), "ratio" in guard.disabled
        (None, True)
    """

    def __init__(
        self,
        who: str,
        on_error: Literal["warn", "raise"] = "raise",
        say: Callable[[str], Any] | None = None,
        inform: Callable[[str], Any] | None = None,
    ) -> None:
        if on_error not in ("warn", "raise"):
            raise ValueError(f"{who}: `on_error` can be {{'warn', 'raise'}}, got {on_error!r}.")
        self.who, self.on_error = who, on_error
        self._say: Callable[[str], Any] = say or (lambda message: warnings.warn(message, stacklevel=3))
        self._inform: Callable[[str], Any] = inform or logging.getLogger("lightning_cnnviz").info
        self.disabled: set[str] = set()
        self._diverged: dict[str, bool] = {}
        self._said: set[str] = set()

    def warn(self, message: str) -> None:
        """Warn of ``message``, prefixed with who says it."""
        self._say(f"{self.who}: {message}")

    def warn_once(self, message: str) -> None:
        """:meth:`warn` of ``message`` unless it was said before."""
        self._once(message, self._say)

    def inform(self, message: str) -> None:
        """Inform once of ``message``: what a picture chose for this run, not a problem."""
        self._once(message, self._inform)

    def _once(self, message: str, through: Callable[[str], Any]) -> None:
        if message not in self._said:
            self._said.add(message)
            through(f"{self.who}: {message}")

    def switch_off(self, piece: str, reason: object) -> None:
        """Switch ``piece`` off for good, warning once that it does not apply and why."""
        self.disabled.add(piece)
        self.warn_once(f"{piece} does not apply: {str(reason).removeprefix(f'{self.who}: ')}")

    def run(self, piece: str, work: Callable[..., T], *args: Any) -> T | None:
        if piece in self.disabled:
            return None
        try:
            return work(*args)
        except DoesNotApply as reason:
            self.switch_off(piece, reason)
            return None
        except Exception as error:
            if self.on_error == "raise":
                raise
            self.disabled.add(piece)
            self.warn(
                f"{piece} failed with {type(error).__name__}: {error}. It is switched off for the rest of this run; "
                f"training continues. Pass on_error='raise' to {self.who} to see the traceback."
            )
            return None

    def finite(self, *tensors: Tensor | Iterable[Tensor], what: str, moment: Moment) -> bool:
        """Whether every tensor (or iterable of tensors) is finite; when not, says so once per divergence (the
        pictures of ``what`` are skipped until the values are finite again). One host sync."""
        flat = [t for group in tensors for t in ([group] if isinstance(group, Tensor) else group)]
        checks = [torch.isfinite(t).all() for t in flat if t.is_floating_point() and t.numel()]
        ok = bool(torch.stack(checks).all()) if checks else True
        if not ok and not self._diverged.get(what, False):
            self.warn(
                f"{what} hold NaN or infinite values at epoch {moment.epoch} (step {moment.step}): the "
                "network diverged. Its pictures are skipped until the values are finite again; ActivationMonitor "
                "names the first layer where they appear."
            )
        self._diverged[what] = not ok
        return ok


@dataclass(frozen=True)
class Ranks:
    """The processes a monitor's work is split over, and the one way it gathers tensors between them
    (``torch.distributed.all_gather``, and ``all_reduce`` for :meth:`sum`; nothing when there is one process).
    Every method is a collective when
    ``world > 1``: every rank calls it at the same point.

    Example:
        >>> ranks = Ranks.single()
        >>> ranks.gather(torch.tensor([1.0, 2.0])).tolist()  # (world, ...)
        [[1.0, 2.0]]
        >>> ranks.interleave(torch.arange(3.0)[:, None], torch.tensor([3])).flatten().tolist()
        [0.0, 1.0, 2.0]
    """

    world: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> Ranks:
        return cls(1, 0, torch.device(device))

    @classmethod
    def current(cls, device: torch.device | str = "cpu") -> Ranks:
        """The processes of the initialised ``torch.distributed`` group, else one."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_world_size(), torch.distributed.get_rank(), torch.device(device))
        return cls.single(device)

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the ranks, in place (``torch.distributed.all_reduce``); itself on one process."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(tensor)
        return tensor

    def gather(self, tensor: Tensor) -> Tensor:
        """Every rank's ``tensor`` (the same shape on all), stacked: (world, *shape), on ``device``."""
        tensor = tensor.to(self.device).contiguous()
        if self.world == 1 or not torch.distributed.is_initialized():
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        torch.distributed.all_gather(parts, tensor)
        return torch.stack(parts)

    def interleave(self, local: Tensor, counts: Tensor) -> Tensor:
        """All ranks' ``local`` rows (rank ``r`` holds ``counts[r]``) in the order of a distributed sampler without
        shuffling: row 0 of rank 0, row 0 of rank 1, ..., row 1 of rank 0, ... On the host."""
        quota = int(counts.max())
        padded = local.new_zeros((quota, *local.shape[1:]))
        padded[: len(local)] = local
        everything = self.gather(padded).cpu()  # (W, quota, ...)
        keep = torch.arange(quota)[:, None] < counts.cpu()[None, :]  # (quota, W)
        return everything.transpose(0, 1)[keep]

    def split(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world``-th from its rank."""
        return list(items[self.rank :: self.world])

    def join(self, local: Tensor, total: int) -> Tensor:
        """The rows each rank computed for its :meth:`split` of ``total`` items, in item order, on every rank."""
        if self.world == 1:
            return local
        counts = torch.tensor([len(range(r, total, self.world)) for r in range(self.world)])
        return self.interleave(local, counts).to(local.device)

    def join_rows(self, local: Tensor | None, total: int) -> Tensor | None:
        """:meth:`join` of each rank's rows (N_r, D), or None on every rank alike when a rank has none (its work
        failed) or the ranks' widths differ: what a picture that splits its images over the ranks gathers.

        Example:
            >>> Ranks.single().join_rows(torch.ones(2, 3), 2).shape, Ranks.single().join_rows(None, 2)
            (torch.Size([2, 3]), None)
        """
        width = self.gather(torch.tensor([-1 if local is None else local.shape[1]])).view(-1)
        if local is None or int(width.min()) < 0 or int(width.min()) != int(width.max()):
            return None
        return self.join(local, total)

    def agree(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank."""
        return bool(self.gather(torch.tensor([int(ok)])).min()) if self.world > 1 else ok


@runtime_checkable
class Picture(Protocol):
    """What every monitor's core object is: a picture of a model, Trainer-free. Any object with these four verbs
    becomes a monitor through the one epoch adapter (``lightning_cnnviz.EpochMonitor``), and is drawn by a plain loop
    or the report the same way.

    * ``attach(model, example)``: fit to ``model``, given one example input batch (or None, when none is known
      yet: it may be called again with one). ``ValueError`` for a bad configuration (naming the argument and what
      is allowed); :class:`DoesNotApply` for a model it cannot serve (said once; the object stays off).
    * ``snapshot(model, probe, context)``: what is drawn now, on the fixed ``probe`` (None for a picture of the
      weights alone), given the :class:`~lightning_cnnviz.core.Context`; with nothing else required.
    * ``state_dict()`` / ``load_state_dict(state)``: what a resumed run needs (empty where there is nothing).

    An object that asks the other pictures of a step for work they share (the occlusion figure, SaliencyMonitor's
    occluded forwards) may also define ``share(service)``, which the adapter calls with the run's
    :class:`~lightning_cnnviz.core.ProbeService` once attached.

    Example:
        >>> class WeightNorm:
        ...     def attach(self, model, example=None): pass
        ...     def snapshot(self, model, probe, context):
        ...         norm = sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5
        ...         return Snapshot(scalars={"cnnviz/weight_norm": float(norm)})
        ...     def state_dict(self): return {}
        ...     def load_state_dict(self, state): pass
        >>> isinstance(WeightNorm(), Picture)
        True
    """

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None: ...

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class StepPicture(Picture, Protocol):
    """A :class:`Picture` that also observes training steps (ActivationHealth): ``follow`` opens a tap on the
    model's training forwards (counted while ``gate()`` holds), ``step`` counts one step, ``end_window`` closes a
    window of steps into a :class:`Snapshot` and the events it alerts on, ``close`` removes the tap.

    Example:
        >>> from lightning_cnnviz.core import ActivationHealth, FilterPanel
        >>> isinstance(ActivationHealth(), StepPicture), isinstance(FilterPanel(), StepPicture)
        (True, False)
    """

    def follow(self, model: nn.Module, images: Tensor, *, gate: Callable[[], bool], guard: Guard | None = None) -> Any:
        ...

    def step(self) -> None: ...

    def end_window(
        self, moment: Moment, window: int, *, learning_rate: float | None = None, guard: Guard | None = None
    ) -> tuple[Snapshot, list[Any]]: ...

    def close(self) -> None: ...
