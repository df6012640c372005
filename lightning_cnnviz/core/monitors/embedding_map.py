"""EmbeddingMonitor's logic, Trainer-free: the codes of probe images, their t-SNE map tracked from one call to the
next, and the pictures of it."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_choice, check_number, check_positive_int
from lightning_cnnviz.core.context import Context
from lightning_cnnviz.core.drawing.basic import annotate, tile_grid, upscale
from lightning_cnnviz.core.drawing.render import display_rgb, render_scatter, render_thumbnail_grid
from lightning_cnnviz.core.inputs.probe import Probe, select_balanced
from lightning_cnnviz.core.inputs.task import TASKS, Task, describe_labels, label_kind
from lightning_cnnviz.core.methods._calls import flat_tensors
from lightning_cnnviz.core.methods.embedding import knn_accuracy, nearest_neighbours, tsne_after
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import evaluating, model_device, named_modules, resolve_modules, run_to
from lightning_cnnviz.core.model.passes import pass_size
from lightning_cnnviz.core.model.trunk import ImageEntry, Trunk
from lightning_cnnviz.core.protocol import DoesNotApply, Embedding, Snapshot

__all__ = ["EmbeddingMap"]

NEIGHBOURS = 8  # queries, and neighbours per query, of cnnviz/embedding/neighbours
SPRITE_PX = 8192  # TensorBoard's Projector caps the sprite image at this side


class EmbeddingMap:
    """t-SNE maps of the penultimate-layer codes of probe images (van der Maaten & Hinton 2008; Karpathy's "t-SNE
    visualization of CNN codes"), each started from and aligned to the previous one, and their pictures: a
    class-coloured scatter, the images on a grid at their places, and probe images beside their nearest
    neighbours in code space; the kNN accuracy of the codes.

    Args:
        perplexity: t-SNE perplexity.
        layer: module whose output is the code (default: the code layer of the model's
            :class:`~lightning_cnnviz.core.LayerMap`, globally pooled).
        knn_k: neighbours of the kNN accuracy.
        grid_cells: cells per side of the thumbnail grid (at most ``sqrt(N)``); ``cell_px`` their size.
        warm_start: start each map from the previous one.
        class_names: names for the legend and the Projector labels.
        seed: t-SNE seed.
        projector: give the Projector data (codes, labels, a sprite) in :meth:`snapshot`.
        task: how the labels colour the map: ``"auto"`` by their kind (classes; the first positive class of
            multi-hot labels; a colour bar of values; no colours for masks or no labels), or a task of
            :data:`.TASKS` to read them as. The kNN accuracy needs one class per image.
        module: the part of the model fed the probe images (default: the model, or its backbone when the model
            transforms its input before its first conv, as a detector does:
            :class:`.ImageEntry`); fed to a part, the code is its last feature map, globally
            pooled, unless ``layer`` says.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
        >>> embedding_map = EmbeddingMap(perplexity=5.0)
        >>> embedding_map.resolve(net)
        >>> images, labels = torch.randn(40, 1, 8, 8), torch.arange(40) % 4
        >>> codes = embedding_map.codes(net, images)
        >>> points = embedding_map.embed(codes)
        >>> points.shape, sorted(embedding_map.pictures(points, codes, images, labels, epoch=0))
        (torch.Size([40, 2]), ['cnnviz/embedding/grid', 'cnnviz/embedding/neighbours', 'cnnviz/embedding/tsne'])
    """

    what = "the t-SNE map of the codes"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        perplexity: float = 30.0,
        layer: str | None = None,
        knn_k: int = 5,
        grid_cells: int = 32,
        cell_px: int = 32,
        warm_start: bool = True,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        projector: bool = True,
        task: Task = "auto",
        module: str | None = None,
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        self.entry = ImageEntry(who, module)
        self.perplexity = check_number(who, "perplexity", perplexity, lambda v: v > 0, "a positive number")
        self.layer = layer
        self.knn_k = check_positive_int(who, "knn_k", knn_k)
        self.grid_cells = check_positive_int(who, "grid_cells", grid_cells)
        self.cell_px = check_positive_int(who, "cell_px", cell_px)
        self.warm_start = bool(warm_start)
        self.class_names = list(class_names) if class_names is not None else None
        self.seed = seed
        self.layer_name: str | None = None
        self.take_input = False
        self.previous: Tensor | None = None  # the last map, in state_dict
        self.last_knn_accuracy: float | None = None
        self.projector = bool(projector)
        self.task = check_choice(who, "task", task, ("auto", *TASKS))
        self._said_too_few = False
        self._told: str | None = None  # the code layer chosen at attach, told at the first snapshot

    def resolve(self, model: nn.Module) -> str | None:
        """Choose the code layer of ``model`` (ValueError for an unknown ``layer``); what to tell the user when the
        model has no ``nn.Linear`` and the codes are a conv layer's, else None."""
        self.take_input = False
        self.entry.check(model)
        if self.layer is not None:
            resolve_modules(model, [self.layer], what=f"{self.who} `layer`")
            self.layer_name = self.layer
            return None
        if isinstance(model, Trunk):
            self.layer_name = model.name
            return f"{self.who}: the codes are the globally pooled last feature map of {model.name!r}, one per image."
        try:
            self.layer_name, self.take_input = LayerMap.of(model).code
        except ValueError as error:
            raise ValueError(f"{self.who}: {error}") from None
        if isinstance(named_modules(model)[self.layer_name], nn.Linear):
            return None
        where = "input" if self.take_input else "output"
        return (
            f"{self.who}: {type(model).__name__} has no nn.Linear; the codes are the globally pooled {where} of its "
            f"last conv layer '{self.layer_name}'."
        )

    def codes(self, model: nn.Module, images: Tensor, max_batch: int | None = None) -> Tensor:
        """The codes of ``images`` (N, D) on the model's device: eval mode, no gradient, each forward stopped
        as soon as the code is known, ``max_batch`` images per forward (default:
        :func:`~lightning_cnnviz.core.model.passes.pass_size`)."""
        if self.layer_name is None:
            self.resolve(model)
        assert self.layer_name is not None
        parts: list[Tensor] = []
        whole = isinstance(model, Trunk) and self.layer_name == model.name
        max_batch = max_batch or pass_size(model, images[:1])

        def take(name: str, value: Tensor, count: int) -> None:
            if len(value) != count:
                raise DoesNotApply(
                    f"the code layer {name!r} gives {len(value)} rows for {count} images (features per box or per "
                    "token, not per image): pass `layer=` with a module that gives one code per image, or `module=`."
                )
            parts.append((value.mean(dim=(2, 3)) if value.dim() == 4 else value).detach().flatten(1).float())

        with evaluating(model):
            for chunk in images.split(max_batch):
                if whole:
                    take(self.layer_name, _last_map(model(chunk), self.layer_name), len(chunk))
                else:
                    see = functools.partial(_count_first, take, len(chunk))
                    run_to(model, chunk, [self.layer_name], see, take_input=self.take_input)
        return torch.cat(parts)

    def knn(self, codes: Tensor, labels: Tensor) -> float:
        """Leave-one-out ``knn_k``-NN accuracy of the classes in code space."""
        self.last_knn_accuracy = knn_accuracy(codes, labels, self.knn_k)
        return self.last_knn_accuracy

    def embed(self, codes: Tensor) -> Tensor:
        """The t-SNE map of ``codes`` (on the host), started from and aligned to the previous map when there is
        one; it becomes the previous map."""
        embedding = tsne_after(codes, self.previous, perplexity=self.perplexity, seed=self.seed,
                               warm_start=self.warm_start)  # fmt: skip
        self.previous = embedding.detach().cpu()
        return self.previous

    def colours(self, labels: Tensor | None) -> tuple[str | None, Tensor | None]:
        """How ``labels`` colour the map: ``("class", classes)`` (for multi-hot labels the first positive class,
        -1 for none), ``("value", values)``, or ``(None, None)``."""
        if labels is None:
            return None, None
        kind: str | None = label_kind(labels, len(labels))
        if self.task != "auto" and kind is not None:  # the labels read as the task says
            kind = {"classification": "class", "multilabel": "multilabel", "regression": "value"}.get(self.task)
        if kind == "class" and labels.dim() == 1:
            return "class", labels.long()
        if kind == "multilabel" and labels.dim() == 2:
            positive = labels > 0.5
            return "class", torch.where(positive.any(dim=1), positive.float().argmax(dim=1), -1)
        if kind == "value":
            return "value", labels.float().reshape(len(labels), -1)[:, 0]
        return None, None

    def pictures(
        self, embedding: Tensor, codes: Tensor, images: Tensor, labels: Tensor | None, epoch: int
    ) -> dict[str, Tensor]:
        """The scatter, the thumbnail grid and (with more than 8 images) the neighbours, by tag."""
        where = f"{self.layer_name} input" if self.take_input else self.layer_name
        title = f"epoch {epoch}: t-SNE of {where} codes, {len(codes)} probe images"
        kind, colours = self.colours(labels)
        if kind == "class" and labels is not None and labels.dim() == 2:
            title += ", coloured by the first positive class"
        pictures = {
            "cnnviz/embedding/tsne": render_scatter(embedding, colours, self.class_names, title=title),
            "cnnviz/embedding/grid": render_thumbnail_grid(embedding, images, cells=self.grid_cells,
                                                           cell_px=self.cell_px),
        }  # fmt: skip
        if len(codes) > NEIGHBOURS:
            pictures["cnnviz/embedding/neighbours"] = self.neighbours_image(codes, images, self.classes(labels))
        return pictures

    def classes(self, labels: Tensor | None) -> Tensor | None:
        """One class per image when the labels are classes (as this map reads them), else None."""
        kind, colours = self.colours(labels)
        return colours if kind == "class" and labels is not None and labels.dim() == 1 else None

    def neighbours(self, codes: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """(queries (Q,), their nearest probe images (Q, 8)): 8 class-balanced queries (the first images without
        labels) and their neighbours by L2 distance of the codes, the query itself excluded."""
        count = min(NEIGHBOURS, len(codes))
        chosen = select_balanced(labels, count) if labels is not None else list(range(count))
        queries = torch.as_tensor(chosen, dtype=torch.long)
        return queries, nearest_neighbours(codes.float(), NEIGHBOURS)[queries.to(codes.device)].cpu()

    def pixel_neighbours(self, images: Tensor, queries: Tensor) -> Tensor:
        """(Q, 8) nearest probe images of each query by Euclidean distance of the images as the network takes them
        (its input pixels), the query itself excluded: the contrast to the code neighbours."""
        return nearest_neighbours(images.flatten(1).float(), NEIGHBOURS)[queries.to(images.device)].cpu()

    def neighbours_image(self, codes: Tensor, images: Tensor, labels: Tensor | None) -> Tensor:
        """Two rows per query (CS231n, "Visualizing what ConvNets learn"; Olah et al.'s essay, Fig. 5): [query | its 8
        nearest neighbours in code space], then [query | its 8 nearest neighbours in pixel space]. Code neighbours
        alike in meaning, pixel neighbours alike in brightness and layout: what a good code does."""
        queries, found = self.neighbours(codes, labels)
        near = self.pixel_neighbours(images, queries)
        shown = display_rgb(images.float())
        rows = torch.stack([torch.cat([queries[:, None], found], 1), torch.cat([queries[:, None], near], 1)], 1)
        tiles = upscale(shown[rows.flatten()], 48)
        tiles[:: NEIGHBOURS + 1] = F.pad(tiles[:: NEIGHBOURS + 1, :, 2:-2, 2:-2], (2, 2, 2, 2), value=0.0)  # frame
        grid = tile_grid(tiles, NEIGHBOURS + 1, padding=2)
        step = tiles.shape[-2] + 2
        marks = [(2, 2 + row * step + tiles.shape[-2] - 13, "code" if row % 2 == 0 else "pixels")
                 for row in range(2 * len(queries))]  # fmt: skip
        return annotate(grid, marks)

    def thumbnails(self, images: Tensor) -> Tensor:
        """The Projector's sprite tiles of ``images``: at most 64 px, all of them within its 8192 px sprite."""
        side = max(4, min(images.shape[-1], 64, SPRITE_PX // math.ceil(math.sqrt(len(images)))))
        shown = display_rgb(images.float())
        return F.interpolate(shown, size=(side, side), mode="area" if shown.shape[-1] > side else "nearest")

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Choose the code layer of ``model`` (ValueError for an unknown ``layer``; DoesNotApply without a
        ``nn.Conv2d``); the choice is told at the first snapshot when the model has no ``nn.Linear``."""
        LayerMap.of(model).need_images()
        self._told = self.resolve(model)

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """The map of the probe's codes at this moment: the kNN accuracy, the pictures and the Projector data. Each
        rank codes its share of the probe and the codes are gathered (a collective); rank zero embeds and draws."""
        guard, ranks, moment, shot = context.guard, context.ranks, context.moment, Snapshot()
        if probe is None:
            return shot
        if self._told is not None:
            guard.inform(self._told.removeprefix(f"{self.who}: "))
            self._told = None
        images, labels = probe.images, probe.labels
        if len(images) <= max(3, self.knn_k):
            if not self._said_too_few:
                self._said_too_few = True
                guard.warn(
                    f"the probe holds {len(images)} image(s), and a map needs more than {max(3, self.knn_k)} "
                    f"(knn_k={self.knn_k}); nothing is drawn. The probe is filled from the first validation pass "
                    "(else the first training batches): give it more batches or images."
                )
            return shot
        device = model_device(model)
        part = guard.run("embedding codes", self.entry.of, model, images[:1].to(device), guard)
        if part is None:
            return shot
        if part is not model and self.layer_name != getattr(part, "name", None) and self.layer is None:
            guard.inform(str(self.resolve(part)).removeprefix(f"{self.who}: "))
        model = part
        shard, _ = probe.shard(ranks)
        local = guard.run("embedding codes", self.codes, model, shard.to(device))
        codes = ranks.join_rows(local, len(images))
        if codes is None:
            return shot  # every rank returns here alike
        if not guard.finite(codes, what="the probe's codes", moment=moment) or not ranks.is_zero:
            return shot
        classes = self.classes(labels)
        if classes is not None:
            accuracy = guard.run("embedding knn accuracy", self.knn, codes, classes)
            if accuracy is not None:
                shot.scalars["cnnviz/embedding/knn_accuracy"] = accuracy
        else:
            found = "no labels" if labels is None else f"labels of shape {tuple(labels.shape)} ({labels.dtype})"
            guard.switch_off("the kNN accuracy", f"it needs one integer class per image, and the batches hold {found}; "
                       "the map is drawn without it (pass `batch_to_labels=` to give classes).")  # fmt: skip
        embedding = guard.run("embedding t-SNE", self.embed, codes)
        if embedding is None:
            return shot
        drawn = guard.run("embedding images", self.pictures, embedding, codes, images, labels, moment.epoch) or {}
        shot.images.update(drawn)
        about = f"{len(codes)} probe codes, t-SNE (perplexity {self.perplexity:g})"
        shot.captions.update(dict.fromkeys(drawn, about))
        if self.projector:
            metadata = describe_labels(labels, self.class_names) if self.colours(labels)[0] else None
            thumbnails = guard.run("embedding projector", self.thumbnails, images)
            shot.embeddings["cnnviz/embedding"] = Embedding(codes, metadata, thumbnails)
        return shot

    def state_dict(self) -> dict[str, Any]:
        return {"previous": None if self.previous is None else self.previous.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        previous = state_dict.get("previous")
        self.previous = None if previous is None else previous.float().cpu()


def _count_first(take: Callable[[str, Tensor, int], None], count: int, name: str, value: Tensor) -> None:
    take(name, value, count)


def _last_map(output: Any, name: str) -> Tensor:
    """The last feature map (N, C, H, W) in a part's output (a tensor, or a dict or tuple of them, as a feature
    pyramid gives)."""
    maps = [tensor for tensor in flat_tensors(output) if tensor.dim() == 4]
    if not maps:
        raise DoesNotApply(f"{name!r} gives no feature map (N, C, H, W): pass `layer=` with the module of the code.")
    return maps[-1]
