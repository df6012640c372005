"""EmbeddingMonitor: periodic t-SNE maps of the network's penultimate codes for a fixed probe set."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_cnnviz.callbacks._base import EpochMonitor, ErrorPolicy, check_positive_int
from lightning_cnnviz.callbacks._probe import ProbeSet, all_gather, gather_interleaved, select_balanced
from lightning_cnnviz.core._images import tile_grid, upscale_nearest
from lightning_cnnviz.core._model import class_name, evaluating, named_modules, resolve_modules, run_to
from lightning_cnnviz.core.embedding import knn_accuracy, nearest_neighbours, procrustes_align, tsne
from lightning_cnnviz.core.render import display_rgb, render_scatter, render_thumbnail_grid

__all__ = ["EmbeddingMonitor", "penultimate_layer"]

NEIGHBOURS = 8  # queries, and neighbours per query, of cnnviz/embedding/neighbours

_SPRITE_PX = 8192  # TensorBoard's Projector caps the sprite image at this side


def penultimate_layer(model: nn.Module) -> tuple[str, bool]:
    """Where the penultimate-layer code is: ``(name, True)`` for the input of the last ``nn.Linear``; without one,
    the last ``nn.Conv2d``, by its input when it is a 1x1 classifier conv (SqueezeNet, All-CNN) and by its output
    otherwise, ``(name, is_input)``."""
    linears = [name for name, module in named_modules(model).items() if isinstance(module, nn.Linear)]
    if linears:
        return linears[-1], True
    convs = [(name, module) for name, module in named_modules(model).items() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"EmbeddingMonitor: {type(model).__name__} has neither an nn.Linear nor an nn.Conv2d, so no code layer "
            "can be chosen; pass `layer=` with the name of the module whose output is the code."
        )
    name, conv = convs[-1]
    return name, tuple(conv.kernel_size) == (1, 1)


class EmbeddingMonitor(EpochMonitor):
    """t-SNE maps of the penultimate-layer codes of a fixed probe set, every ``every_n_epochs`` epochs.

    Writes ``cnnviz/embedding/tsne`` (class-coloured scatter), ``cnnviz/embedding/grid`` (the probe images on a
    grid at their map positions, Karpathy's "t-SNE of CNN codes"), ``cnnviz/embedding/knn_accuracy``
    (leave-one-out ``knn_k``-NN accuracy in code space) and the Projector data (codes, labels, a sprite) under
    ``cnnviz/embedding``; the step is the epoch.

    The code is the input of the last ``nn.Linear``; without one, the globally pooled input of a last 1x1 conv
    (a conv classifier head, as in SqueezeNet) or else the pooled output of the last conv (said once at the
    start); or the output of the module ``layer`` (averaged over positions). Each map is Procrustes-aligned to the
    previous one (saved in checkpoints), so the slider shows clusters forming, not the map turning, and with
    ``warm_start`` starts from it without early exaggeration.
    The probe set is the first ``probe_size`` images and labels of the first validation pass; under DDP each
    rank codes its shard, the codes are gathered, and rank zero embeds and draws.

    Args:
        probe_size: probe images.
        every_n_epochs: log every this many epochs (and after the last one).
        perplexity: t-SNE perplexity.
        layer: module whose output is the code (default: the input of the last ``nn.Linear``, see above).
        knn_k: neighbours of the kNN accuracy.
        grid_cells: cells per side of the thumbnail grid (at most ``sqrt(probe_size)``); ``cell_px`` their size.
        warm_start: start each map from the previous one.
        projector: write the Projector data.
        class_names: names for the legend and the Projector labels.
        seed: t-SNE seed.
        batch_to_images: where the images are in a batch; ``batch_to_labels``: where the labels are (see
            :class:`SaliencyMonitor`).
        on_error: ``"warn"`` or ``"raise"``.

    Example:
        >>> monitor = EmbeddingMonitor(probe_size=1000, every_n_epochs=2)
    """

    probe: ProbeSet

    def __init__(
        self,
        probe_size: int = 2000,
        every_n_epochs: int = 5,
        perplexity: float = 30.0,
        layer: str | None = None,
        knn_k: int = 5,
        grid_cells: int = 32,
        cell_px: int = 32,
        warm_start: bool = True,
        projector: bool = True,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        on_error: ErrorPolicy = "warn",
    ) -> None:
        probe: dict[str, Any] = {"batch_to_images": batch_to_images, "batch_to_labels": batch_to_labels}
        super().__init__(every_n_epochs, on_error, probe_size, **probe)
        if not (isinstance(perplexity, (int, float)) and perplexity > 0):
            raise ValueError(f"EmbeddingMonitor: `perplexity` must be a positive number, got {perplexity!r}.")
        self.perplexity = float(perplexity)
        self.layer = layer
        self.knn_k = check_positive_int(self._who, "knn_k", knn_k)
        self.grid_cells = check_positive_int(self._who, "grid_cells", grid_cells)
        self.cell_px = check_positive_int(self._who, "cell_px", cell_px)
        self.warm_start = bool(warm_start)
        self.projector = bool(projector)
        self.class_names = list(class_names) if class_names is not None else None
        self.seed = seed
        self._layer_name: str | None = None
        self._take_input = False
        self._said_too_few = False
        self._previous: Tensor | None = None
        self.last_map: Tensor | None = None
        self.last_knn_accuracy: float | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(probe_size=self.probe.size, layer=self.layer)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._take_input = False
        if self.layer is None:
            self._layer_name, self._take_input = penultimate_layer(pl_module)
            if not isinstance(named_modules(pl_module)[self._layer_name], nn.Linear):
                where = "input" if self._take_input else "output"
                rank_zero_info(
                    f"EmbeddingMonitor: {type(pl_module).__name__} has no nn.Linear; the codes are the globally "
                    f"pooled {where} of its last conv layer '{self._layer_name}'."
                )
        else:
            resolve_modules(pl_module, [self.layer], what="EmbeddingMonitor `layer`")
            self._layer_name = self.layer

    def codes(self, pl_module: nn.Module, images: Tensor, max_batch: int = 256) -> Tensor:
        """The codes of ``images`` (N, D) on the model's device: eval mode, no gradient, each forward stopped
        as soon as the code is known."""
        assert self._layer_name is not None
        parts: list[Tensor] = []

        def take(name: str, value: Tensor) -> None:
            parts.append((value.mean(dim=(2, 3)) if value.dim() == 4 else value).detach().flatten(1).float())

        with evaluating(pl_module):
            for chunk in images.split(max_batch):
                run_to(pl_module, chunk, [self._layer_name], take, take_input=self._take_input)
        return torch.cat(parts)

    def _gather_codes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        """Every rank codes its shard; the codes come back in probe order on every rank. A collective."""
        assert self.probe.images is not None
        world, device = trainer.world_size, pl_module.device
        shard, _ = self.probe.shard(trainer.global_rank, world)
        local = self._run("embedding codes", self.codes, pl_module, shard.to(device))
        if world == 1:
            return local
        width = all_gather(trainer, torch.tensor([-1 if local is None else local.shape[1]], device=device))
        if local is None or int(width.min()) < 0 or int(width.min()) != int(width.max()):
            return None  # every rank returns here alike
        counts = torch.tensor([len(range(r, len(self.probe.images), world)) for r in range(world)])
        return gather_interleaved(trainer, local, counts).to(device)

    def embed(self, codes: Tensor) -> Tensor:
        """The t-SNE map of ``codes``, started from and aligned to the previous map when there is one."""
        previous = self._previous if self._previous is not None and len(self._previous) == len(codes) else None
        if previous is not None and self.warm_start:
            init = previous.to(codes.device)
            embedding = tsne(codes, perplexity=self.perplexity, init=init, early_exaggeration_iter=0, seed=self.seed)
        else:
            embedding = tsne(codes, perplexity=self.perplexity, seed=self.seed)
        if previous is not None:
            embedding = procrustes_align(embedding, previous.to(embedding.device))
        return embedding

    def _thumbnails(self, count: int) -> Tensor:
        assert self.probe.images is not None
        side = max(4, min(self.probe.images.shape[-1], 64, _SPRITE_PX // math.ceil(math.sqrt(count))))
        shown = display_rgb(self.probe.images.float())
        return F.interpolate(shown, size=(side, side), mode="area" if shown.shape[-1] > side else "nearest")

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe.images is None or len(self.probe.images) <= max(3, self.knn_k):
            if not self._said_too_few:
                self._said_too_few = True
                held = 0 if self.probe.images is None else len(self.probe.images)
                rank_zero_warn(
                    f"EmbeddingMonitor: the probe holds {held} image(s), and a map needs more than "
                    f"{max(3, self.knn_k)} (knn_k={self.knn_k}); nothing is drawn. The probe is filled from the "
                    "first validation pass (else the first training batches): give it more batches or images."
                )
            return
        codes = self._gather_codes(trainer, pl_module)
        if codes is None or not self.finite(codes, what="the probe's codes", trainer=trainer):
            return
        sink = self._sink_for(trainer)
        if not sink.active:
            return
        epoch = trainer.current_epoch
        labels = self.probe.labels
        if labels is not None:
            accuracy = self._run("embedding knn accuracy", knn_accuracy, codes, labels, self.knn_k)
            if accuracy is not None:
                self.last_knn_accuracy = accuracy
                sink.scalars({"cnnviz/embedding/knn_accuracy": accuracy}, epoch)
        embedding = self._run("embedding t-SNE", self.embed, codes)
        if embedding is None:
            return
        embedding = embedding.detach().cpu()
        self._previous = self.last_map = embedding

        def draw() -> None:
            assert self.probe.images is not None
            where = f"{self._layer_name} input" if self._take_input else self._layer_name
            title = f"epoch {epoch}: t-SNE of {where} codes, {len(codes)} probe images"
            scatter = render_scatter(embedding, labels, self.class_names, title=title)
            sink.image("cnnviz/embedding/tsne", scatter, epoch)
            grid = render_thumbnail_grid(embedding, self.probe.images, cells=self.grid_cells, cell_px=self.cell_px)
            sink.image("cnnviz/embedding/grid", grid, epoch)
            if len(codes) > NEIGHBOURS:
                sink.image("cnnviz/embedding/neighbours", self.neighbours_image(codes), epoch)

        self._run("embedding images", draw)
        if self.projector:
            self._run("embedding projector", self._write_projector, sink, codes, labels, epoch)

    def neighbours(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """(queries (Q,), their nearest probe images (Q, 8)): 8 class-balanced queries (the first probe images
        without labels) and their neighbours by L2 distance of the codes, the query itself excluded."""
        labels = self.probe.labels
        count = min(NEIGHBOURS, len(codes))
        chosen = select_balanced(labels, count) if labels is not None else list(range(count))
        queries = torch.as_tensor(chosen, dtype=torch.long)
        return queries, nearest_neighbours(codes.float(), NEIGHBOURS)[queries.to(codes.device)].cpu()

    def neighbours_image(self, codes: Tensor) -> Tensor:
        """One row per query: [query | its 8 nearest neighbours in code space] (CS231n, "Visualizing what ConvNets
        learn"): neighbours alike in meaning, not in pixels, are what a good code does."""
        assert self.probe.images is not None
        queries, found = self.neighbours(codes)
        shown = display_rgb(self.probe.images.float())
        rows = torch.cat([queries[:, None], found], dim=1)  # (Q, 1 + 8)
        tiles = shown[rows.flatten()]
        factor = max(1, 48 // max(tiles.shape[-2:]))
        tiles = upscale_nearest(tiles, factor)
        tiles[:: NEIGHBOURS + 1] = F.pad(tiles[:: NEIGHBOURS + 1, :, 2:-2, 2:-2], (2, 2, 2, 2), value=0.0)  # frame
        return tile_grid(tiles, NEIGHBOURS + 1, padding=2)

    def _write_projector(self, sink: Any, codes: Tensor, labels: Tensor | None, epoch: int) -> None:
        metadata = None if labels is None else [class_name(v, self.class_names) for v in labels.tolist()]
        sink.embedding("cnnviz/embedding", codes, epoch, metadata=metadata, thumbnails=self._thumbnails(len(codes)))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous": None if self._previous is None else self._previous.clone()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        previous = state_dict.get("previous")
        self._previous = None if previous is None else previous.float().cpu()
