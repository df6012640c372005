"""Probe images: the fixed sets of images that the monitors draw on, chosen once, the same on every rank, and
collected for every monitor in one pass over the batches."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_cnnviz.core.budget import Budget
from lightning_cnnviz.core.checks import check_callable
from lightning_cnnviz.core.inputs.batches import NoImages, images_from_batch, inputs_from_batch, labels_from_batch
from lightning_cnnviz.core.methods.perturbation.occlusion import OcclusionMemo
from lightning_cnnviz.core.methods.stats import ChannelHealth
from lightning_cnnviz.core.protocol import Ranks

__all__ = ["Probe", "ProbeService", "ProbeSet", "select_balanced"]

_MAX_STATE_BYTES = 32 * 2**20  # a larger probe is not saved in checkpoints; it is chosen afresh after a resume


def select_balanced(labels: Tensor, count: int) -> list[int]:
    """Indices of ``count`` items, round-robin over the classes in label order (first of each class, then the
    second, ...), so every class is represented as evenly as the data allows. Deterministic.

    Example:
        >>> import torch
        >>> select_balanced(torch.tensor([1, 1, 0, 2, 0]), 4)
        [2, 0, 3, 4]
    """
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        by_class.setdefault(int(label), []).append(index)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count and any(depth < len(v) for v in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(chosen) < count:
                chosen.append(by_class[label][depth])
        depth += 1
    return chosen


@dataclass(frozen=True)
class Probe:
    """Probe images (N, C, H, W) and their labels (any kind, :func:`.labels_from_batch`)
    when the batches carry them, on the host.

    Example:
        >>> Probe(torch.zeros(4, 1, 8, 8)).labels is None
        True
    """

    images: Tensor
    labels: Tensor | None = None

    def to(self, device: torch.device | str) -> Probe:
        return Probe(self.images.to(device), None if self.labels is None else self.labels.to(device))

    def shard(self, ranks: Ranks) -> tuple[Tensor, Tensor]:
        """This rank's share of the images (every ``world``-th) and their indices in the probe."""
        return self.images[ranks.rank :: ranks.world], torch.arange(ranks.rank, len(self.images), ranks.world)


class ProbeSet:
    """One monitor's fixed probe: the first ``size`` images offered (with ``balanced`` and integer class labels,
    round-robin over the classes, :func:`select_balanced`, holding about ``2 * size`` images while it collects),
    and their labels. Images are (N, C, H, W); with ``signals``, also (N, C, L) signals and (N, C, D, H, W)
    volumes.

    Under several processes each rank offers its own batches and :meth:`finish` gathers the parts in a distributed
    sampler's interleaved order, so every rank holds the same probe. At most 32 MiB of it is kept in
    :meth:`state_dict`.

    Example:
        >>> probe = ProbeSet("MyMonitor", 3)
        >>> probe.offer((torch.rand(2, 1, 8, 8), torch.tensor([0, 1])))
        >>> probe.offer((torch.rand(2, 1, 8, 8), torch.tensor([2, 3])))
        >>> probe.finish()
        >>> probe.labels.tolist()
        [0, 1, 2]
    """

    def __init__(
        self,
        who: str,
        size: int,
        *,
        balanced: bool = False,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        signals: bool = False,
    ) -> None:
        self.who, self.size, self.balanced, self.signals = who, size, balanced, signals
        self.batch_to_images = check_callable(who, "batch_to_images", batch_to_images)
        self.batch_to_labels = check_callable(who, "batch_to_labels", batch_to_labels)
        self.from_training = False
        self.reset()

    def reset(self) -> None:
        """Forget the probe: the next pass chooses it afresh."""
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        self._collected: list[tuple[Tensor, Tensor | None]] = []  # (image, label or None), in arrival order
        self.problem: str | None = None  # why the batches give no probe (said once by the monitor)

    @property
    def probe(self) -> Probe | None:
        return None if self.images is None else Probe(self.images, self.labels)

    def wants(self, world: int = 1) -> bool:
        """Whether another batch may still change the probe."""
        if self.images is not None or self.problem is not None:
            return False
        quota = math.ceil(self.size / max(1, world))
        return (self.balanced and not self.from_training) or len(self._collected) < quota

    @property
    def reader(self) -> tuple[int, int, bool]:
        """What tells apart how probes read a batch: probes alike share one reading of it."""
        return id(self.batch_to_images), id(self.batch_to_labels), self.signals

    def find(self, batch: Any) -> Tensor:
        """The images (or, with ``signals``, signals and volumes) of a batch; :class:`NoImages` when it has none."""
        if not self.signals:
            return images_from_batch(batch, who=self.who, batch_to_images=self.batch_to_images)
        found = inputs_from_batch(batch, who=self.who, batch_to_inputs=self.batch_to_images)
        if found.dim() not in (3, 4, 5) or not found.is_floating_point():
            raise NoImages(f"{self.who}: the batch's input must be a floating (N, C, L), (N, C, H, W) or "
                           f"(N, C, D, H, W) tensor, got {found.dtype} of shape {tuple(found.shape)}. Pass "
                           "`batch_to_images=` to tell the monitor where the images are.")  # fmt: skip
        return found

    def unpack(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """The images and labels of a batch, as this probe's settings find them."""
        images = self.find(batch)
        return images, labels_from_batch(batch, images, self.batch_to_labels)

    def offer(self, batch: Any, world: int = 1) -> None:
        """Keep what the probe may still need from one batch."""
        if self.wants(world):
            self.take(*self.unpack(batch), world=world)

    def take(self, images: Tensor, labels: Tensor | None, world: int = 1) -> None:
        """Keep what the probe may still need from a batch's (unpacked) images and labels."""
        if not self.wants(world):
            return
        if not self.balanced or labels is None or labels.dim() != 1 or labels.is_floating_point():
            quota = math.ceil(self.size / max(1, world))
            take = images[: quota - len(self._collected)].detach().cpu().clone()
            kept = labels[: len(take)].detach().cpu() if labels is not None else [None] * len(take)
            self._collected += list(zip(take.unbind(0), kept))
            return
        # balanced: keep per class what a round-robin choice can still pick (copies of single images, so no
        # batch stays alive for one image)
        by_class: dict[int, list[tuple[Tensor, Tensor | None]]] = {}
        for pair in self._collected:
            by_class.setdefault(int(pair[1]), []).append(pair)  # type: ignore[arg-type]
        for image, label in zip(images.detach(), labels.detach().cpu()):
            if len(members := by_class.setdefault(int(label), [])) < self.size:
                members.append((image.cpu().clone(), label))
        classes = sorted(by_class)[: self.size]
        cap = -(-self.size // len(classes))
        self._collected = [pair for label in classes for pair in by_class[label][:cap]]

    def finish(self, ranks: Ranks | None = None) -> None:
        """Fix the probe set. A collective when ``ranks.world > 1``: every rank calls it at the same point."""
        ranks = ranks or Ranks.single()
        if self.images is not None:
            return
        pairs = self._collected
        images = torch.stack([image for image, _ in pairs]) if pairs else None
        labelled = bool(pairs) and all(label is not None for _, label in pairs)
        labels = torch.stack([label for _, label in pairs]) if labelled else None  # type: ignore[misc]
        if ranks.world > 1:
            counts = ranks.gather(torch.tensor([len(pairs)])).view(-1).cpu()
            if int(counts.max()) == 0:
                return
            if images is None:
                raise RuntimeError(f"{self.who}: a rank collected no probe images while others did")
            images = ranks.interleave(images, counts)
            labelled = ranks.agree(labels is not None)
            labels = ranks.interleave(labels, counts) if labelled else None  # type: ignore[arg-type]
        if images is None or len(images) == 0:
            return
        classes = labels is not None and labels.dim() == 1 and not labels.is_floating_point()
        chosen = select_balanced(labels, self.size) if self.balanced and classes else range(self.size)  # type: ignore[arg-type]
        index = torch.as_tensor(list(chosen), dtype=torch.long)[: len(images)]
        self.images = images[index].contiguous()
        self.labels = None if labels is None else labels[index].contiguous()
        self._collected = []

    def state_dict(self) -> dict[str, Any]:
        if self.images is None or self.images.numel() * self.images.element_size() > _MAX_STATE_BYTES:
            return {}
        return {"images": self.images.clone(), "labels": None if self.labels is None else self.labels.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("images") is not None:
            self.images, self.labels, self._collected = state["images"], state.get("labels"), []


class ProbeService:
    """The probe sets of every monitor of one run, filled in one pass over the batches: each batch is unpacked
    once per distinct ``batch_to_images``/``batch_to_labels`` pair (``reads`` counts it), however many monitors
    draw on it; each set keeps its own size and balance. It also keeps the latest top-activation scan, so a
    second monitor drawing the same layers at the same step reuses it (:meth:`scan`), and ``health``: each
    activation's dead and dormant channels in the latest window of training steps, by activation name (an
    :class:`~lightning_cnnviz.core.ActivationHealth`'s ``marks``, which ActivationMonitor shares here), and
    ``occlusions``: the occluded forwards of the latest step, which the occlusion saliency map and the occlusion
    figure share (:class:`~lightning_cnnviz.core.methods.perturbation.occlusion.OcclusionMemo`).

    Example:
        >>> service = ProbeService()
        >>> small, large = ProbeSet("A", 2), ProbeSet("B", 4)
        >>> service.join(small), service.join(large)
        (None, None)
        >>> for _ in range(3):
        ...     service.offer(torch.rand(2, 1, 8, 8))
        >>> service.finish()
        >>> len(small.images), len(large.images), service.reads  # the third batch was not needed by anyone
        (2, 4, 2)
    """

    def __init__(self) -> None:
        self.members: list[ProbeSet] = []
        self.reads = 0
        self.budget = Budget()  # the run's time budget, shared by its monitors
        self.budget_given = False  # whether a monitor set it (a second one may not set another)
        self._scan: tuple[Any, Any] | None = None  # (key, (tops, probe images))
        self._example: tuple[tuple[int, int, bool], Tensor] | None = None  # the latest example batch's images
        self.health: dict[str, ChannelHealth] = {}  # by activation name, the latest training window's
        self.occlusions = OcclusionMemo()  # the latest occluded forwards, for the pictures of one step

    def join(self, probe: ProbeSet) -> None:
        if all(member is not probe for member in self.members):
            self.members.append(probe)

    def wants(self, world: int = 1) -> bool:
        return any(member.wants(world) for member in self.members)

    def offer(self, batch: Any, world: int = 1) -> None:
        """Give one batch to every member that still wants one. A batch a member cannot read (no image tensor
        where it looks) never raises here: the member keeps the reason in ``problem`` and wants nothing more."""
        unpacked: dict[tuple[int, int, bool], tuple[Tensor, Tensor | None] | Exception] = {}
        for member in self.members:
            if member.wants(world):
                key = member.reader
                if key not in unpacked:
                    try:
                        unpacked[key] = member.unpack(batch)
                    except Exception as error:
                        unpacked[key] = error
                    self.reads += 1
                found = unpacked[key]
                if isinstance(found, Exception):
                    member.problem = f"{type(found).__name__}: {found}"
                else:
                    member.take(*found, world=world)

    def example(self, batch: Any, member: ProbeSet) -> Tensor:
        """One image of ``batch`` as ``member`` finds images (an example to fit a picture to), the batch unpacked
        once for every member that finds images alike. :class:`~lightning_cnnviz.core.inputs.batches.NoImages` when it
        holds none."""
        key = (id(batch), id(member.batch_to_images), member.signals)
        if self._example is None or self._example[0] != key:
            self._example = (key, member.find(batch)[:1].clone())  # one image kept, not the batch it views
        return self._example[1]

    def finish(self, ranks: Ranks | None = None) -> None:
        """Fix every member's probe (a collective under several processes)."""
        for member in self.members:
            member.finish(ranks)

    def scan(self, step: int, wanted: dict[str, list[int]], k: int, probe: Tensor, compute: Callable[[], Any]) -> Any:
        """Top activations of the ``wanted`` layers' channels, ``k`` each, at ``step``: the scan made at this step
        by another monitor when it covered them on a probe at least as large as ``probe``, else ``compute()``
        (kept for the others). Returns ``(tops, the probe images they index)``."""
        if self._scan is not None:
            (at, covered, depth, size), found = self._scan
            if (at == step and depth == k and size >= len(probe) and found[0] is not None
                    and all(covered.get(layer) == channels for layer, channels in wanted.items())):  # fmt: skip
                return found
        found = (compute(), probe)
        self._scan = ((step, dict(wanted), k, len(probe)), found)
        return found
