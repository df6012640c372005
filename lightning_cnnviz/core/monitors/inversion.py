"""InversionMonitor's logic, Trainer-free: a few probe images reconstructed from their codes at layers spread over
depth (Mahendran and Vedaldi 2015), and the reconstructions over calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_names, check_number, check_positive_int
from lightning_cnnviz.core.context import Context, InputScale
from lightning_cnnviz.core.drawing.basic import captioned_grid, to_rgb
from lightning_cnnviz.core.drawing.history import EvolutionHistory
from lightning_cnnviz.core.drawing.render import render_evolution
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.methods.inversion import TV, CodeSite, code_distances, invert, psnr
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import model_device, resolve_modules
from lightning_cnnviz.core.model.trunk import ImageEntry
from lightning_cnnviz.core.protocol import Snapshot

__all__ = ["FeatureInversion"]


def default_sites(layers: LayerMap, count: int = 3) -> list[CodeSite]:
    """``count`` conv layers spread over depth (:meth:`~lightning_cnnviz.core.LayerMap.default_layers`), then the code
    layer (:attr:`~lightning_cnnviz.core.LayerMap.code`) when it is not the last of them."""
    sites = [CodeSite(name) for name in layers.default_layers(count)]
    try:
        code = CodeSite(*layers.code)
    except ValueError:
        return sites
    return sites if code in sites else [*sites, code]


class FeatureInversion:
    """Feature inversion (Mahendran and Vedaldi 2015; :func:`~lightning_cnnviz.core.methods.inversion.invert`):
    each of ``images`` probe images reconstructed from its code at each chosen layer, what the layer keeps of it.
    ``cnnviz/inversion``: one row per image, [original | from layer 1 | ... | from the code layer], each
    reconstruction captioned with its PSNR against the original; ``cnnviz/inversion_evolution``: the first image's
    row (rows: original and layers) x calls (kept in :meth:`state_dict`); ``cnnviz/inversion/psnr/<layer>`` (dB, mean
    over the images) and ``cnnviz/inversion/code_error/<layer>`` (the reconstruction's code distance to the
    original's, relative to the original code's norm).

    Pixels are optimised in [0, 1] and normalised as the model expects (``normalize``, or ``(x - mean) / std``, else
    the context's scale); with no known scale, in the range of the probe images' values. No random transformation:
    the reconstructions stay aligned with their originals, so the columns compare pixel for pixel.

    Args:
        layers: module names whose outputs are inverted; default: three conv layers spread over depth (as
            TopPatchMonitor's) and the code layer (the input of the last ``nn.Linear``, else the last conv).
        images: probe images reconstructed (rows).
        steps, lr: the optimisation (Adam on the pixels); ``tv``: the weight of the TV prior (default
            :data:`~lightning_cnnviz.core.methods.inversion.TV`); ``beta``: its exponent; ``seed``: the noise the
            reconstructions start from.
        mean, std, normalize: how the model's inputs are normalised (else the context's).
        module: the part of the model fed the probe images (as TopPatchMonitor's).

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 2))
        >>> inversion = FeatureInversion(steps=4)
        >>> shot = inversion.snapshot(net, Probe(torch.rand(4, 3, 8, 8)), Context(Moment(epoch=0, step=0)))
        >>> sorted(shot.images), [str(site) for site in inversion.sites]
        (['cnnviz/inversion', 'cnnviz/inversion_evolution'], ['0', '2', '4 (input)'])
    """

    what = "the feature inversions"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        layers: Sequence[str] | None = None,
        images: int = 4,
        steps: int = 64,
        lr: float = 0.1,
        tv: float = TV,
        beta: float = 2.0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        max_evolution_columns: int = 24,
        module: str | None = None,
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        self.layers = check_names(who, "layers", layers)
        self.images = check_positive_int(who, "images", images)
        self.steps = check_positive_int(who, "steps", steps)
        self.lr = check_number(who, "lr", lr, lambda v: v > 0, "a positive number")
        self.tv = check_number(who, "tv", tv, lambda v: v >= 0, "a number >= 0")
        self.beta = check_number(who, "beta", beta, lambda v: v >= 1, "an exponent >= 1")
        self.seed = int(seed)
        self.scale = InputScale(mean, std, normalize)
        self.entry = ImageEntry(who, module)
        self.history = EvolutionHistory(check_positive_int(who, "max_evolution_columns", max_evolution_columns), 48)
        self.sites: list[CodeSite] = []
        self.last_images: Tensor | None = None  # the latest reconstructions (layers, images, C, H, W) on the host
        self.last_psnr: dict[str, float] = {}

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Check the layers (:class:`~lightning_cnnviz.core.DoesNotApply` for a network without ``nn.Conv2d``: the
        reconstructions are 2-D images)."""
        LayerMap.of(model).need_images()
        self.entry.check(model)
        if example is not None:
            self.choose(self.entry.of(model, example))

    def choose(self, part: nn.Module) -> list[CodeSite]:
        """The sites inverted on ``part``: ``layers``' outputs, else :func:`default_sites`."""
        if self.layers:
            resolve_modules(part, self.layers, what=f"{self.who} layer")
            self.sites = [CodeSite(name) for name in self.layers]
        else:
            self.sites = default_sites(LayerMap.of(part))
        return self.sites

    def reconstruct(self, part: nn.Module, inputs: Tensor, scale: InputScale) -> tuple[Tensor, Tensor, Tensor]:
        """The originals (N, C, H, W) and reconstructions (layers, N, C, H, W) in [0, 1], and each reconstruction's
        relative code error (layers, N)."""
        if scale.known:
            originals, to_model = scale.to_pixels(inputs.float()).clamp(0, 1), scale.to_model
        else:  # the box the probe images span
            low, high = inputs.min(), inputs.max()
            width = (high - low).clamp_min(1e-12)
            originals = (inputs.float() - low) / width

            def to_model(pixels: Tensor) -> Tensor:
                return low + width * pixels

        rebuilt = invert(part, originals, self.sites, steps=self.steps, lr=self.lr, tv=self.tv, beta=self.beta,
                         normalize=to_model, seed=self.seed)  # fmt: skip
        count = originals.shape[0]
        errors = torch.stack([
            code_distances(part, to_model(rebuilt[index]), to_model(originals), site).diagonal()
            for index, site in enumerate(self.sites)
        ])  # fmt: skip
        return originals, rebuilt, errors.view(len(self.sites), count)

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """The probe images' reconstructions from every chosen layer, their PSNR and code error, and the evolution
        (rank zero; a few images, one batch)."""
        guard, moment, shot = context.guard, context.moment, Snapshot()
        if probe is None or not context.ranks.is_zero or probe.images.dim() != 4:
            return shot
        inputs = probe.images[: self.images].to(model_device(model))
        part = guard.run("the inversion picture", self.entry.of, model, inputs[:1], guard)
        if part is None or guard.run("the inversion picture", self.choose, part) is None:
            return shot
        scale = self.scale.over(context.scale)
        made = guard.run("the inversion picture", self.reconstruct, part, inputs, scale)
        if made is None or not guard.finite(made[1], what="the inversions", moment=moment):
            return shot
        originals, rebuilt, errors = made
        quality = torch.stack([psnr(layer, originals) for layer in rebuilt])  # (layers, N)
        numbers = torch.cat([quality.flatten(), errors.flatten()]).cpu().view(2, *quality.shape)
        quality, errors = numbers[0], numbers[1]
        self.last_images = rebuilt.cpu()
        names = [site.name for site in self.sites]
        self.last_psnr = {name: float(quality[index].mean()) for index, name in enumerate(names)}
        for index, name in enumerate(names):
            shot.scalars[f"cnnviz/inversion/psnr/{name}"] = self.last_psnr[name]
            shot.scalars[f"cnnviz/inversion/code_error/{name}"] = float(errors[index].mean())
        rows = torch.cat([originals[None], rebuilt.float()]).transpose(0, 1)  # (N, 1 + layers, C, H, W)
        tiles = to_rgb(rows.flatten(0, 1).clamp(0, 1))
        captions = [
            "original" if column == 0 else f"{names[column - 1]} {float(quality[column - 1, row]):.1f}dB"
            for row in range(rows.shape[0])
            for column in range(rows.shape[1])
        ]
        shot.images["cnnviz/inversion"] = captioned_grid(tiles, captions, min_px=96, columns=rows.shape[1])
        shot.captions["cnnviz/inversion"] = (
            f"feature inversion ({self.steps} steps, TV {self.tv:g}): rows [original | from "
            f"{' | '.join(str(site) for site in self.sites)}]; PSNR per layer "
            + ", ".join(f"{name} {value:.1f} dB" for name, value in self.last_psnr.items())
        )
        self.history.add("inversion", self.history.caption(moment.epoch, moment.step), tiles[: rows.shape[1]],
                         moment.step)  # fmt: skip
        thumbnails, columns = self.history.stacked("inversion")
        shot.images["cnnviz/inversion_evolution"] = render_evolution(
            thumbnails, columns, list(range(rows.shape[1])), row_labels=["original", *names]
        )
        shot.captions["cnnviz/inversion_evolution"] = "the first probe image's reconstructions over training"
        return shot

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state.get("history", {}))
