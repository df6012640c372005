"""Where the image monitors feed probe images: the model itself, or, when the model transforms its input before its
first convolution (a detector's resize and batching, a forward that resizes), the part of it that takes images
directly: its backbone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import evaluating, named_modules, resolve_modules, run_to
from lightning_cnnviz.core.protocol import DoesNotApply, Guard

__all__ = ["ImageEntry", "Trunk"]

MAX_TRIES = 8  # candidate parts fed the example before giving up


class Trunk(nn.Module):
    """The part ``name`` of ``root``, called alone, whose modules keep their names in ``root`` (``net.backbone.body
    .0``): what the image monitors hook, scan and differentiate when ``root`` transforms its input. Its modules,
    parameters and ``train``/``eval`` are the part's; nothing is registered twice.

    Example:
        >>> net = nn.Sequential(nn.Upsample(scale_factor=2), nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
        >>> part = Trunk(net, "1")
        >>> [name for name, _ in part.named_modules()]
        ['1', '1.0', '1.1']
    """

    root: nn.Module
    body: nn.Module

    def __init__(self, root: nn.Module, name: str) -> None:
        super().__init__()
        object.__setattr__(self, "root", root)  # not registered: its modules keep their own names
        object.__setattr__(self, "body", named_modules(root)[name])
        self.name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.body(*args, **kwargs)

    def named_modules(
        self, memo: set[nn.Module] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Module]]:
        full = f"{prefix}.{self.name}" if prefix else self.name
        yield from self.body.named_modules(memo, full, remove_duplicate)

    def train(self, mode: bool = True) -> Trunk:
        self.training = mode
        self.body.train(mode)
        return self


def _size(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape[2:])


class ImageEntry:
    """Decides once per model where probe images go in (:class:`Trunk`): the model itself when its first
    ``nn.Conv2d`` sees the images at their size; otherwise the part named ``module``, else its ``backbone`` (an
    attribute of that name holding the first conv), else the part holding the most ``nn.Conv2d`` layers that,
    fed the images directly, gives its first conv their size. Which part was chosen is told once.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Upsample(scale_factor=2), nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
        >>> ImageEntry("Doc").of(net, torch.zeros(1, 1, 8, 8)).name
        '1'
    """

    def __init__(self, who: str, module: str | None = None) -> None:
        if module is not None and not isinstance(module, str):
            raise TypeError(f"{who}: `module` must be a module name or None, got {module!r}.")
        self.who, self.module = who, module
        self._decided: tuple[int, nn.Module, str | None] | None = None

    def check(self, model: nn.Module) -> None:
        """ValueError, at once, for a ``module`` that ``model`` does not have."""
        if self.module is not None and not isinstance(model, Trunk):
            resolve_modules(model, [self.module], what=f"{self.who} `module`")

    def of(self, model: nn.Module, example: Tensor, guard: Guard | None = None) -> nn.Module:
        """Where ``model`` takes ``example``-like images (the model, or a :class:`Trunk` of it); ``guard`` is told
        the part chosen. :class:`DoesNotApply` when no part of the model takes them."""
        if isinstance(model, Trunk):
            return model
        if self._decided is None or self._decided[0] != id(model):
            self._decided = (id(model), *self._decide(model, example))
        _, chosen, said = self._decided
        if said and guard is not None:  # told once by the guard, also when decided before it was given
            guard.inform(said)
        return chosen

    def _decide(self, model: nn.Module, example: Tensor) -> tuple[nn.Module, str | None]:
        if self.module is not None:
            self.check(model)
            return (model if self.module == "" else Trunk(model, self.module)), None
        convs = LayerMap.of(model).conv2d
        if not convs:
            return model, None
        first = next(iter(convs))
        seen = _first_input(model, first, example)
        if seen is not None and _size(seen) == _size(example):
            return model, None
        found = "its forward does not reach it" if seen is None else f"{_size(example)} -> {_size(seen)}"
        for name in self._candidates(model, first):
            part = Trunk(model, name)
            fed = _first_input(part, first, example)
            if fed is not None and _size(fed) == _size(example):
                why = "its `backbone`" if name.rsplit(".", 1)[-1] == "backbone" else "the part with the most convs"
                return part, (
                    f"{type(model).__name__} transforms its input before its first conv {first!r} ({found}), so the "
                    f"probe images go directly into {name!r} ({why}). Pass `module=` to choose another part."
                )
        raise DoesNotApply(
            f"{type(model).__name__} transforms its input before its first conv {first!r} ({found}), and no part of "
            "it takes the probe images directly: pass `module=` with the name of the part that does (its backbone)."
        )

    @staticmethod
    def _candidates(model: nn.Module, first: str) -> list[str]:
        """Parts holding the first conv: those named ``backbone`` (shallowest first), then by conv count."""
        holding = [name for name in named_modules(model) if name and (first == name or first.startswith(name + "."))]
        counts = {name: len(LayerMap.of(named_modules(model)[name]).conv2d) for name in holding}
        backbones = [name for name in holding if name.rsplit(".", 1)[-1] == "backbone"]
        others = sorted((n for n in holding if n not in backbones), key=lambda n: (-counts[n], n.count(".")))
        return [*backbones, *others][:MAX_TRIES]


def _first_input(model: nn.Module, first: str, example: Tensor) -> Tensor | None:
    """What ``first`` receives when ``model`` is called on ``example[:1]`` (None when that fails or never gets
    there)."""
    seen: list[Tensor] = []
    try:
        with evaluating(model):
            run_to(model, example[:1], [first], lambda name, value: seen.append(value), take_input=True)
    except Exception:
        return None
    return seen[0] if seen else None
