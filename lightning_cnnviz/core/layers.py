"""Layer discovery and name resolution, with errors that list the valid names."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from torch import nn

__all__ = ["conv_layers", "first_conv", "format_names", "resolve_modules"]


def format_names(names: Collection[str], limit: int = 40) -> str:
    """``'a', 'b', ... (N more)``: a readable list of valid names for error messages."""
    shown = [repr(name) for name in list(names)[:limit]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "")


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every ``nn.Conv2d`` of ``model`` by name, in registration order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` in registration order (the layer that looks at pixels in a plain CNN).

    Raises:
        ValueError: the model has no ``nn.Conv2d``.
    """
    convs = conv_layers(model)
    if not convs:
        raise ValueError(
            f"{type(model).__name__} has no nn.Conv2d layer: lightning_cnnviz visualizes convolutional "
            "networks, so the model needs at least one torch.nn.Conv2d module."
        )
    name = next(iter(convs))
    return name, convs[name]


def resolve_modules(
    model: nn.Module,
    names: Sequence[str],
    *,
    what: str = "layer",
    kinds: tuple[type[nn.Module], ...] | None = None,
    extra_valid: Collection[str] = (),
) -> dict[str, nn.Module]:
    """Look up modules by name, failing with a message that lists the names one may use.

    Args:
        model: the network.
        names: names from ``model.named_modules()``.
        what: how the error message calls the argument (``"FilterMonitor layers"``).
        kinds: if given, the module types allowed; a module of another type is an error.
        extra_valid: further names that are valid elsewhere (listed in the message).
    """
    modules = dict(model.named_modules())
    allowed = {n: m for n, m in modules.items() if kinds is None or isinstance(m, kinds)}
    resolved: dict[str, nn.Module] = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what}: layer names must be strings, got {name!r} ({type(name).__name__}).")
        if name in allowed:
            resolved[name] = allowed[name]
            continue
        valid = [*allowed, *[n for n in extra_valid if n not in allowed]]
        kind_text = "" if kinds is None else " of type " + "/".join(k.__name__ for k in kinds)
        if name in modules and kinds is not None:
            problem = f"{name!r} is a {type(modules[name]).__name__}, not a module{kind_text}"
        else:
            problem = f"no module named {name!r}"
        raise ValueError(f"{what}: {problem}. Valid names{kind_text}: {format_names(valid)}.")
    return resolved
