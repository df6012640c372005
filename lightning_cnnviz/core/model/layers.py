"""The layer map of a model (like timm's ``FeatureInfo``): its convolutions of every dimension with their channels,
the first and last 2-D conv, the code layer, the default layers to show, the activation site each conv feeds and,
when asked, the receptive fields. Described once per model and read by every picture."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.methods.activation_sites import find_activation_sites, tap_activations
from lightning_cnnviz.core.model.modules import evaluating, hooked, model_device, named_modules, run_to, spread
from lightning_cnnviz.core.model.receptive_field import ReceptiveField, receptive_fields
from lightning_cnnviz.core.protocol import DoesNotApply

__all__ = ["ConvInfo", "LayerMap"]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ConvInfo:
    """One convolution: its name, its dimensions (1, 2 or 3), its input and output channels and its kernel."""

    name: str
    dims: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    module: nn.Module = field(repr=False, compare=False)


_maps: weakref.WeakKeyDictionary[nn.Module, tuple[int, LayerMap]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class LayerMap:
    """Every layer a picture looks up, found once per model (:meth:`of` keeps it while the model's modules stay).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8, 2))
        >>> layers = LayerMap.of(net)
        >>> layers.first, layers.last, layers.code, list(layers.conv2d)
        ('0', '2', ('4', True), ['0', '2'])
    """

    model_name: str
    convs: dict[str, ConvInfo]
    linears: tuple[str, ...]
    modules: dict[str, nn.Module] = field(repr=False)
    _takes: dict[tuple[tuple[int, ...], str | None], bool] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, model: nn.Module) -> LayerMap:
        """The layer map of ``model`` (computed once while its modules stay the same)."""
        modules = named_modules(model)
        key = hash(tuple(id(m) for m in modules.values()))
        cached = _maps.get(model)
        if cached is not None and cached[0] == key:
            return cached[1]
        convs = {
            name: ConvInfo(name, len(m.kernel_size), m.in_channels, m.out_channels, tuple(m.kernel_size), m)
            for name, m in modules.items()
            if isinstance(m, CONVS)
        }
        linears = tuple(name for name, m in modules.items() if isinstance(m, nn.Linear))
        # the map keeps the submodules but never the model itself: a cached value holding its own weak key would keep
        # every model ever mapped alive, with its parameters and their memory
        found = cls(type(model).__name__, convs, linears, {n: m for n, m in modules.items() if m is not model})
        _maps[model] = (key, found)
        return found

    @property
    def conv2d(self) -> dict[str, nn.Conv2d]:
        """Every ``nn.Conv2d`` by name, in registration order."""
        return {name: c.module for name, c in self.convs.items() if c.dims == 2}  # type: ignore[misc]

    def kinds(self) -> str:
        """What convolutions the model has, for a sentence: ``"nn.Conv1d layers"``, ``"no convolution"``."""
        kinds = sorted({type(c.module).__name__ for c in self.convs.values()})
        return " and ".join(f"nn.{kind}" for kind in kinds) + " layers" if kinds else "no convolution"

    def need_images(self) -> None:
        """:class:`~lightning_cnnviz.core.DoesNotApply` unless the model has a ``nn.Conv2d`` (a picture of 2-D
        images)."""
        if not self.conv2d:
            raise DoesNotApply(f"it needs 2-D images (N, C, H, W) and nn.Conv2d layers, and {self.model_name} has "
                               f"{self.kinds()}.")  # fmt: skip

    @property
    def first(self) -> str:
        """The first ``nn.Conv2d`` (the layer that looks at pixels); ValueError without one."""
        if not self.conv2d:
            raise ValueError(f"{self.model_name} has no nn.Conv2d layer: lightning_cnnviz visualizes convolutional "
                             "networks, so the model needs at least one torch.nn.Conv2d module.")  # fmt: skip
        return next(iter(self.conv2d))

    @property
    def last(self) -> str:
        """The last ``nn.Conv2d`` in registration order (Grad-CAM's default layer); ValueError without one."""
        if not self.conv2d:
            raise ValueError(f"{self.model_name} has no nn.Conv2d layer for Grad-CAM")
        return list(self.conv2d)[-1]

    @property
    def code(self) -> tuple[str, bool]:
        """Where the penultimate-layer code is: ``(name, True)`` for the input of the last ``nn.Linear``; without
        one, the last ``nn.Conv2d``, by its input when it is a 1x1 classifier conv (SqueezeNet, All-CNN) and by its
        output otherwise, ``(name, is_input)``. ValueError with neither."""
        if self.linears:
            return self.linears[-1], True
        if not self.conv2d:
            raise ValueError(
                f"{self.model_name} has neither an nn.Linear nor an nn.Conv2d, so no code layer can be chosen; pass "
                "`layer=` with the name of the module whose output is the code."
            )
        name, conv = list(self.conv2d.items())[-1]
        return name, tuple(conv.kernel_size) == (1, 1)

    def default_layers(self, count: int = 3) -> list[str]:
        """``count`` 2-D conv layers spread over depth (first, middle, last), preferring kernels larger than 1x1
        (the 1x1 projections of residual shortcuts are skipped when there are enough others)."""
        convs = self.conv2d
        spatial = [name for name, conv in convs.items() if max(conv.kernel_size) > 1]
        return spread(spatial if len(spatial) >= min(count, len(convs)) else list(convs), count)

    def takes(self, model: nn.Module, shape: Sequence[int], layer: str | None = None) -> bool:
        """Whether ``model`` runs on one input of ``shape`` (channels, *spatial) as far as ``layer`` (its whole
        forward without one). Tried once per shape and layer, on zeros, in eval mode without gradients: a network
        may refuse sizes its receptive fields allow (one that checks its input's side, or adds up-sampled paths
        that only align at multiples of its stride)."""
        key = (tuple(int(s) for s in shape), layer)
        if key not in self._takes:
            floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
            zeros = torch.zeros((1, *key[0]), device=model_device(model), dtype=floating[0] if floating else None)
            try:
                with evaluating(model):
                    if layer is None:
                        model(zeros)
                    else:
                        run_to(model, zeros, [layer], lambda name, value: None)
                self._takes[key] = True
            except Exception:  # any refusal means "not this size"; the caller then uses a size the model takes
                self._takes[key] = False
        return self._takes[key]

    def size_near(self, model: nn.Module, shape: Sequence[int], layer: str | None = None) -> tuple[int, ...]:
        """``shape`` (channels, *spatial) when ``model`` takes it (:meth:`takes`), else the nearest one it takes
        whose sides are multiples of 2, 4, ..., 64 (the first found), else ``shape`` itself (the forward then says
        what is wrong)."""
        shape = tuple(int(s) for s in shape)
        if self.takes(model, shape, layer):
            return shape
        for step in (2, 4, 8, 16, 32, 64):
            near = (shape[0], *(max(step, round(side / step) * step) for side in shape[1:]))
            if self.takes(model, near, layer):
                return near
        return shape

    def feeds(self, model: nn.Module, example: Tensor) -> dict[str, str]:
        """The activation site each conv feeds: the first activation computed after it in a forward of
        ``example`` (convs followed by none are left out)."""
        order: list[tuple[str, str]] = []
        sites = find_activation_sites(model, example[:1])
        hooks = [(c.module, lambda *_, name=name: order.append(("conv", name))) for name, c in self.convs.items()]
        with evaluating(model), hooked(hooks), tap_activations(model, sites, lambda n, _: order.append(("site", n))):
            model(example[:1])
        fed: dict[str, str] = {}
        waiting: list[str] = []
        for kind, name in order:
            if kind == "conv":
                waiting.append(name)
            else:
                fed.update({conv: name for conv in waiting if conv not in fed})
                waiting = []
        return fed

    def receptive_fields(self, model: nn.Module, layers: Sequence[str], example: Tensor) -> dict[str, ReceptiveField]:
        """The receptive fields of ``layers`` for inputs like ``example``
        (:func:`~lightning_cnnviz.core.receptive_fields`): what a picture of patches crops."""
        return dict(receptive_fields(model, list(layers), example[:1]))
