"""Finding layers by name, hooking a model for a while, running it without disturbing it, and running it only as
far as a layer. Each of these is written here once."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.methods._calls import flat_tensors

__all__ = ["class_name", "evaluating", "hooked", "model_device", "resolve_modules", "run_to", "spread"]

T = TypeVar("T")


def spread(items: Sequence[T], count: int) -> list[T]:
    """Up to ``count`` of ``items`` spread evenly over them, first and last included, in order.

    Example:
        >>> spread(["a", "b", "c", "d", "e"], 3)
        ['a', 'c', 'e']
    """
    if len(items) <= count:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    return [items[i] for i in picks]


def format_names(names: Collection[str], limit: int = 40) -> str:
    """``'a', 'b', ... (N more)``: a readable list of valid names for error messages."""
    shown = [repr(name) for name in list(names)[:limit]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "")


def class_name(index: int, names: Sequence[str] | None) -> str:
    """The name of class ``index`` (its number when no names are given or it has none).

    Example:
        >>> class_name(1, ["cat", "dog"]), class_name(7, ["cat", "dog"])
        ('dog', '7')
    """
    return names[index] if names is not None and 0 <= index < len(names) else str(index)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives: the device of its first parameter, else of its first buffer, else the CPU (a model
    without parameters).

    Example:
        >>> model_device(nn.ReLU())
        device(type='cpu')
    """
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule by name, without the ``_orig_mod`` step that a ``torch.compile`` wrapper adds: a compiled
    network's layers keep their eager names (``net.conv1``), and the name of the wrapper is its network's."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        found.setdefault(".".join(part for part in name.split(".") if part != "_orig_mod"), module)
    return found


def module_names(model: nn.Module) -> dict[int, str]:
    """``id(module) -> name`` for every submodule ("" is the model itself)."""
    return {id(module): name for name, module in named_modules(model).items()}


def resolve_modules(
    model: nn.Module,
    names: Sequence[str],
    *,
    what: str = "layer",
    kinds: tuple[type[nn.Module], ...] | None = None,
    extra_valid: Collection[str] = (),
) -> dict[str, nn.Module]:
    """Modules by name; an unknown name, or a module not of one of ``kinds``, raises ``ValueError`` naming the
    argument (``what``) and listing the valid names (with ``extra_valid``, names valid elsewhere).

    Example:
        >>> resolve_modules(nn.Sequential(nn.Conv2d(1, 2, 3)), ["1"], what="my layers")
        Traceback (most recent call last):
        ValueError: my layers: no module named '1'. Valid names: '', '0'.
    """
    modules = named_modules(model)
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


@contextlib.contextmanager
def restore_training_flags(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag on exit, whatever happened inside."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def evaluating(model: nn.Module, *, grad: bool = False) -> Iterator[None]:
    """The model in eval mode (flags restored on exit), without gradients, or with them (``grad=True``, also
    inside ``torch.inference_mode``, for a visualization's own gradient pass on fresh tensors). A
    ``torch.compile``d model (or part) runs its original eager code here: the visualizations' hooks, modes and
    gradient rules see every op, and the compiled training graph is neither recompiled nor guarded on them.

    Example:
        >>> net = nn.Sequential(nn.Dropout()).train()
        >>> with evaluating(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.compiler.set_stance("force_eager"))
        stack.enter_context(restore_training_flags(model))
        if grad:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
        else:
            stack.enter_context(torch.no_grad())
        model.eval()
        yield


Hook = Callable[..., Any]


@contextlib.contextmanager
def hooked(
    forward: Iterable[tuple[nn.Module, Hook]] = (),
    pre: Iterable[tuple[nn.Module, Hook]] = (),
    *,
    always_call: bool = False,
) -> Iterator[None]:
    """Forward hooks (``(module, hook)`` pairs) and forward pre-hooks on modules for the duration of the block;
    every one is removed on exit, also when the block raised. The one way the package hooks a model for a while.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        >>> seen = []
        >>> with hooked([(net[0], lambda module, args, output: seen.append(output.shape))]):
        ...     _ = net(torch.zeros(1, 1, 5, 5))
        >>> seen, len(net[0]._forward_hooks)
        ([torch.Size([1, 2, 3, 3])], 0)
    """
    handles = []
    try:
        for module, hook in pre:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in forward:
            handles.append(module.register_forward_hook(hook, always_call=always_call))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by a hook once every layer of interest has run: the rest of the forward is not needed."""


def run_to(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[str],
    on_output: Callable[[str, Tensor], None],
    *,
    take_input: bool | Collection[str] = False,
) -> None:
    """One forward of ``inputs`` that calls ``on_output(name, tensor)`` with each named module's first output (its
    first input with ``take_input``: for every layer, or for the layers it names) and stops once every one has been
    seen. ValueError for an unknown layer (the
    valid names are listed) or one the forward never reaches.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
        >>> run_to(net, torch.zeros(1, 1, 5, 5), ["0"], lambda name, out: print(name, tuple(out.shape)))
        0 (1, 2, 3, 3)
    """
    modules = resolve_modules(model, list(layers), what="layer")
    seen: set[str] = set()

    def see(name: str, value: Any) -> None:
        tensor = next(flat_tensors(value), None)
        if name in seen or tensor is None:
            return
        seen.add(name)
        on_output(name, value if isinstance(value, Tensor) else tensor)
        if len(seen) == len(modules):
            raise StopForward

    inputs_of = set(modules) if take_input is True else set(take_input or ())
    pre = [(m, lambda m, args, name=name: see(name, args)) for name, m in modules.items() if name in inputs_of]
    post = [(m, lambda m, a, out, name=name: see(name, out)) for name, m in modules.items() if name not in inputs_of]
    with hooked(post, pre), contextlib.suppress(StopForward):
        model(inputs)
    missing = [name for name in layers if name not in seen]
    if missing:
        raise ValueError(f"layers {missing} are never called by {type(model).__name__}.forward")


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output: the output itself when it is a tensor, else the ``logits`` entry or the
    first tensor of a tuple, list, dict or dataclass (as a Hugging Face ``ModelOutput`` or an auxiliary-head
    tuple holds them)."""
    if isinstance(output, Tensor):
        return output
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        output = {field.name: getattr(output, field.name) for field in dataclasses.fields(output)}
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list, Mapping)):
        for value in output.values() if isinstance(output, Mapping) else output:
            if isinstance(value, Tensor):
                return value
    raise TypeError(
        f"the model's output holds no tensor of logits: got {type(output).__name__}. Return the logits, a tuple or "
        "dict whose first tensor (or 'logits' entry) they are, or pass `output_to_logits=`."
    )
