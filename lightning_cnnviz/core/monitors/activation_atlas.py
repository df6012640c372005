"""ActivationAtlasMonitor's logic, Trainer-free: the activation atlas of a layer (Carter et al. 2019), its layout
aligned from one call to the next."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_number, check_positive_int
from lightning_cnnviz.core.context import Context, InputScale
from lightning_cnnviz.core.drawing.basic import annotate, tile_grid, to_rgb
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.methods.activation_sites import find_activation_sites
from lightning_cnnviz.core.methods.atlas import Cells, bin_layout, spatial_vectors
from lightning_cnnviz.core.methods.embedding import tsne_after
from lightning_cnnviz.core.methods.feature_vis import color_correlation, render_objective
from lightning_cnnviz.core.methods.objectives import Objective, direction, direction_scores
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import evaluating, hooked, model_device, resolve_modules
from lightning_cnnviz.core.model.trunk import ImageEntry
from lightning_cnnviz.core.protocol import Snapshot

__all__ = ["ActivationAtlas"]

TILE_PX = 48  # the least side of a cell's tile in the picture
COSINE_POWER = 0.0  # the direction objective's cosine power (Lucid's cossim_pow): 0, the dot product of Carter et al.


def last_conv_block(part: nn.Module, example: Tensor) -> str:
    """The module whose output is the last conv layer's activation: the activation module the last conv feeds
    (:meth:`~lightning_cnnviz.core.LayerMap.feeds`) when it is called once a forward; else the innermost block
    holding the last conv whose output is still a feature map (a residual block, after its addition and ReLU); else
    the last conv itself. Carter et al. lay out activations after the nonlinearity: before it, most of a conv's
    values are negative and every vector shares them."""
    layers = LayerMap.of(part)
    last = layers.last
    fed = layers.feeds(part, example[:1]).get(last)
    sites = {site.name: site for site in find_activation_sites(part, example[:1])}
    site = sites.get(fed) if fed is not None else None
    if site is not None and site.kind == "module" and site.places == 1 and site.channel_dim == 1:
        return site.module
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(part.named_modules())  # a part's names may start inside the model (a detector's backbone)
    blocks = [name for end in range(last.count("."), 0, -1) if (name := ".".join(last.split(".")[:end])) in modules]

    def keeper(name: str) -> Any:
        def keep(module: nn.Module, args: Any, out: Any) -> None:  # a block called twice keeps its first output
            shapes.setdefault(name, tuple(out.shape) if isinstance(out, Tensor) else ())

        return keep

    with torch.no_grad(), evaluating(part), hooked([(modules[name], keeper(name)) for name in blocks]):
        part(example[:1])  # containers never called (a ModuleDict) keep no shape
    return next((block for block in blocks if len(shapes.get(block, ())) == 4), last)


class ActivationAtlas:
    """The activation atlas of a layer (Carter, Armstrong, Schubert, Johnson and Olah 2019): ``vectors`` spatial
    activation vectors of the layer over the probe images (evenly over images and positions), laid out in 2-D by
    t-SNE, binned into a ``grid x grid`` grid; each non-empty cell's average vector is rendered as the image that
    maximises its direction objective (the dot product of the layer's vector at the central position with the
    average: Lucid's ``direction_neuron``, as Carter et al. render the cells), all cells in one batch.
    ``cnnviz/activation_atlas/<layer>``: the grid of renders, each cell's density shown by its opacity (over white)
    and its count of vectors; with ``examples``, each render has beside it the probe patch (the position's
    receptive field) whose vector scores highest on the cell's direction. The layout of each call starts from the
    previous one and is aligned to it (Procrustes), so the cells keep their places from epoch to epoch; the previous
    layout is kept in :meth:`state_dict`.

    The renders are made as FeatureVisMonitor's (decorrelated Fourier parameterisation in the probe images'
    colours, squashed to [0, 1], random jitter, scale and rotation at each step) and normalised as the model
    expects: ``normalize``, or ``(x - mean) / std``, else the context's scale, else as they are.

    Args:
        layer: the module whose output is laid out (default: the last conv's activation, :func:`last_conv_block`).
        vectors: activation vectors laid out (fewer when the probe has fewer positions).
        grid: cells per side.
        perplexity: the t-SNE perplexity.
        steps, lr, seed: each cell's render (Adam; cell ``i`` starts from its own seed).
        cosine_power: weight the dot product by the cosine to this power (Lucid's ``cossim_pow``; 0: the plain dot
            product).
        size: side of the renders (default: the probe images').
        examples: draw the best probe patch beside each cell's render.
        mean, std, normalize: how the model's inputs are normalised (else the context's).
        module: the part of the model fed the probe images (default: the model, or its backbone for a detector).

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
        >>> atlas = ActivationAtlas(vectors=60, grid=3, steps=2, perplexity=5)
        >>> shot = atlas.snapshot(net, Probe(torch.rand(6, 3, 12, 12)), Context(Moment(epoch=0, step=0)))
        >>> sorted(shot.images), atlas.layer_name, int(atlas.last_cells.count.sum())
        (['cnnviz/activation_atlas/3'], '3', 60)
    """

    what = "the activation atlas"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        layer: str | None = None,
        vectors: int = 2000,
        grid: int = 8,
        perplexity: float = 30.0,
        steps: int = 48,
        lr: float = 0.1,
        cosine_power: float = COSINE_POWER,
        seed: int = 0,
        size: int | None = None,
        examples: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        module: str | None = None,
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        self.layer = layer
        self.vectors = check_positive_int(who, "vectors", vectors)
        self.grid = check_positive_int(who, "grid", grid)
        self.perplexity = check_number(who, "perplexity", perplexity, lambda v: v > 0, "a positive number")
        self.steps = check_positive_int(who, "steps", steps)
        self.lr = check_number(who, "lr", lr, lambda v: v > 0, "a positive number")
        self.cosine_power = check_number(who, "cosine_power", cosine_power, lambda v: v >= 0, "a number >= 0")
        self.seed, self.examples = int(seed), bool(examples)
        self.size = None if size is None else check_positive_int(who, "size", size)
        if (mean is None) != (std is None):
            raise ValueError(f"{who}: pass both `mean` and `std`, or neither (got mean={mean}, std={std}).")
        self.scale = InputScale(mean, std, normalize)
        self.entry = ImageEntry(who, module)
        self.layer_name: str | None = None
        self.previous: Tensor | None = None  # the latest layout (M, 2) on the host, in state_dict
        self.last_cells: Cells | None = None  # the latest binning, its renders and their scores (on the host)
        self.last_images: Tensor | None = None  # (filled cells, C, H, W) in [0, 1]
        self.last_vectors: Tensor | None = None  # (M, C)
        self.last_positions: Tensor | None = None  # (M, 3): image, y, x

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Check the layer (:class:`~lightning_cnnviz.core.DoesNotApply` for a network without ``nn.Conv2d``: the
        atlas lays out the positions of a 2-D feature map)."""
        LayerMap.of(model).need_images()
        self.entry.check(model)
        if example is not None:
            self.choose(self.entry.of(model, example), example)

    def choose(self, part: nn.Module, example: Tensor) -> str:
        """The layer laid out on ``part``: ``layer``, else :func:`last_conv_block`."""
        if self.layer is not None:
            resolve_modules(part, [self.layer], what=f"{self.who} `layer`")
            self.layer_name = self.layer
        else:
            self.layer_name = last_conv_block(part, example)
        return self.layer_name

    def lay_out(self, vectors: Tensor) -> Tensor:
        """The t-SNE layout (M, 2) of ``vectors``, started from and aligned to the previous one when there is one
        of the same size; it becomes the previous one."""
        perplexity = min(self.perplexity, max(1.0, (len(vectors) - 1) / 3))
        layout = tsne_after(vectors, self.previous, perplexity=perplexity, seed=self.seed)
        self.previous = layout.detach().cpu()
        return layout

    def render(self, part: nn.Module, cells: Cells, probe: Tensor, scale: InputScale) -> Tensor:
        """Each non-empty cell's render (filled, C, H, W) in [0, 1], all in one batch."""
        assert self.layer_name is not None
        filled = cells.filled
        side = self.size
        shape = (side or probe.shape[-2], side or probe.shape[-1])
        colors = color_correlation(scale.to_pixels(probe[:256].float()))
        seeds = [self.seed * 1_000_003 + int(c) for c in filled]
        objective = self.objective(cells)
        return render_objective(
            part, objective, len(filled), size=shape, in_channels=probe.shape[1], steps=self.steps, lr=self.lr,
            seeds=seeds, colors=colors, normalize=scale.to_model, device=model_device(part),
        )  # fmt: skip

    def objective(self, cells: Cells) -> Objective:
        """What each non-empty cell's render maximises: the direction of its average vector."""
        assert self.layer_name is not None
        return direction(self.layer_name, cells.average[cells.filled], self.cosine_power, position="centre")

    def best_patches(self, part: nn.Module, cells: Cells, vectors: Tensor, positions: Tensor, pixels: Tensor) -> Tensor:
        """For each non-empty cell, the probe patch (its position's receptive field, cropped to the image) of the
        cell's vector with the highest dot product with the cell's average (filled, C, h, w)."""
        assert self.layer_name is not None
        scores = direction_scores(vectors, cells.average[cells.cell], self.cosine_power)  # as the objective scores
        filled = cells.filled
        best = torch.full((cells.grid**2,), -math.inf, device=scores.device).scatter_reduce(
            0, cells.cell, scores, reduce="amax"
        )
        winner = torch.nonzero(scores == best[cells.cell]).flatten()
        chosen = torch.full((cells.grid**2,), -1, dtype=torch.long, device=scores.device)
        chosen[cells.cell[winner]] = winner  # one vector per cell (any of equal scores)
        where = positions[chosen[filled]]
        field = LayerMap.of(part).receptive_fields(part, [self.layer_name], pixels[:1])[self.layer_name]
        tops, lefts, height, width = field.crop_corners(where[:, 1].cpu(), where[:, 2].cpu())
        crops = [
            pixels[int(i), :, int(t) : int(t) + height, int(left) : int(left) + width]
            for i, t, left in zip(where[:, 0].tolist(), tops.tolist(), lefts.tolist(), strict=True)
        ]
        return torch.stack(crops)

    def picture(self, cells: Cells, renders: Tensor, patches: Tensor | None) -> Tensor:
        """The grid: each non-empty cell's render (and patch) over white, as opaque as the cell is dense (from 0.25
        for one vector to 1 for the densest, on a log scale), with its count in the corner."""
        grid, filled = cells.grid, cells.filled.cpu()
        side = max(TILE_PX, renders.shape[-1], renders.shape[-2])
        tiles = F.interpolate(to_rgb(renders.float().clamp(0, 1)).cpu(), size=(side, side), mode="nearest")
        if patches is not None:
            shown = F.interpolate(to_rgb(patches.float().clamp(0, 1)).cpu(), size=(side, side), mode="nearest")
            tiles = torch.cat([tiles, shown], dim=3)
        counts = cells.count.cpu()
        alpha = 0.25 + 0.75 * torch.log1p(counts[filled].float()) / math.log1p(float(counts.max()))
        tiles = alpha.view(-1, 1, 1, 1) * tiles + (1 - alpha.view(-1, 1, 1, 1))
        canvas = torch.ones(grid * grid, *tiles.shape[1:])
        canvas[filled] = tiles
        padding = 2
        image = tile_grid(canvas, grid, padding=padding, pad_value=0.85)
        step_y, step_x = tiles.shape[-2] + padding, tiles.shape[-1] + padding
        labels = [(padding + (int(c) % grid) * step_x, padding + (int(c) // grid) * step_y, str(int(counts[c])))
                  for c in filled]  # fmt: skip
        return annotate(image, labels)

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """The atlas of the layer on the probe images (rank zero: one forward of the probe, t-SNE, one batch of
        renders)."""
        guard, moment, shot = context.guard, context.moment, Snapshot()
        if probe is None or not context.ranks.is_zero or probe.images.dim() != 4:
            return shot
        inputs = probe.images.to(model_device(model))
        part = guard.run("the activation atlas", self.entry.of, model, inputs[:1], guard)
        if part is None or guard.run("the activation atlas", self.choose, part, inputs[:1]) is None:
            return shot
        layer = self.layer_name
        assert layer is not None
        scale = self.scale.over(context.scale)
        found = guard.run("the activation atlas", spatial_vectors, part, inputs, layer, self.vectors, self.seed)
        if found is None or not guard.finite(found[0], what=f"the activations of {layer}", moment=moment):
            return shot
        vectors, positions = found
        layout = guard.run("the activation atlas's layout", self.lay_out, vectors)
        if layout is None:
            return shot
        cells = bin_layout(layout.to(vectors.device), vectors, self.grid)
        renders = guard.run("the activation atlas's renders", self.render, part, cells, inputs, scale)
        if renders is None or not guard.finite(renders, what="the activation atlas", moment=moment):
            return shot
        patches = None
        if self.examples:
            low, high = inputs.min(), inputs.max()  # without a known scale: the box the probe images span
            pixels = scale.to_pixels(inputs.float()) if scale.known else (inputs.float() - low) / (high - low + 1e-12)
            patches = guard.run("the activation atlas's examples", self.best_patches, part, cells, vectors, positions,
                                pixels)  # fmt: skip
        self.last_cells = Cells(cells.grid, cells.cell.cpu(), cells.count.cpu(), cells.average.cpu())
        self.last_images, self.last_vectors, self.last_positions = renders.cpu(), vectors.cpu(), positions.cpu()
        tag = f"cnnviz/activation_atlas/{layer}"
        drawn = guard.run("the activation atlas picture", self.picture, cells, renders, patches)
        if drawn is not None:
            shot.images[tag] = drawn
            beside = " beside the probe patch that scores highest on it" if patches is not None else ""
            shot.captions[tag] = (
                f"activation atlas of {layer}: {len(vectors)} activation vectors laid out by t-SNE in a "
                f"{self.grid}x{self.grid} grid; each cell's average direction rendered{beside}; opacity and the "
                "number: the vectors in the cell"
            )
        return shot

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        previous = state.get("previous")
        self.previous = previous if isinstance(previous, Tensor) else None
