"""Find every ReLU-family activation of a model, modules and functional calls alike, and tap them.

A :class:`~torch.overrides.TorchFunctionMode` sees the ``F.relu(x)``, ``torch.relu_(x)`` and ``x.relu()`` calls
that module hooks miss; a stack of running modules tells whose ``forward`` made each. Names: an ``nn.ReLU`` /
``nn.ReLU6`` module by its module name (``features.1``), a functional call as ``<module>.<function>``
(``block1.relu``; ``relu`` for the root model); ``#2``, ``#3``, ... mark later calls in one forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_cnnviz.core._calls import RELU_FUNCTIONS, relu_kind
from lightning_cnnviz.core._model import evaluating, module_names

__all__ = ["find_relu_sites", "tap_relus"]

RELU_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


@dataclass(frozen=True)
class ReluSite:
    """One ReLU-family activation of a model.

    Attributes:
        name: stable, readable name (see the module docstring); ``scope``: the module whose ``forward`` made it.
        kind: ``"module"`` or ``"function"``; ``function``: ``"relu"``/``"relu6"`` or the module class name.
        call_index, calls_per_forward: which of the same module's (or scope and function's) calls in one forward.
        shape: output shape of the example forward, batch dimension excluded.
    """

    name: str
    scope: str
    kind: Literal["module", "function"]
    function: str
    call_index: int
    calls_per_forward: int
    shape: tuple[int, ...]

    @property
    def num_channels(self) -> int:
        """Channels (dimension 1 of the activation)."""
        return self.shape[0]


class _ReluInterceptor(TorchFunctionMode):
    """Calls ``on_relu(func, result)`` after every ReLU-family function call; other calls pass through."""

    def __init__(self, on_relu: Callable[[Any, Tensor], None]) -> None:
        super().__init__()
        self._on_relu = on_relu

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        if relu_kind(func) is not None and isinstance(result, Tensor):
            self._on_relu(func, result)
        return result


def _numbered(base: str, index: int) -> str:
    return base if index == 0 else f"{base}#{index + 1}"


def site_scope(model: nn.Module, name: str) -> str | None:
    """The module that a site called ``name`` would belong to by the naming rules of :func:`find_relu_sites`
    (a ReLU module's own name, or the scope of ``<scope>.relu``/``relu6``), without running the model; None when
    no site of ``model`` can have that name. Whether a functional call really happens there needs a forward.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        >>> site_scope(net, "1"), site_scope(net, "relu#2"), site_scope(net, "0")
        ('1', '', None)
    """
    modules = dict(model.named_modules())
    base = name.split("#", 1)[0]
    if base in modules:
        return base if isinstance(modules[base], RELU_MODULE_TYPES) else None
    scope, _, function = base.removesuffix("()").rpartition(".")
    return scope if function in set(RELU_FUNCTIONS.values()) and scope in modules else None


def find_relu_sites(model: nn.Module, example_input: Any) -> list[ReluSite]:
    """Run one forward pass and list every ReLU-family activation in the order they are computed.

    One eval-mode, no-grad pass of ``example_input`` (a tensor or a tuple of arguments); flags are restored.
    Outputs without a channel dimension are skipped.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.ReLU(inplace=True))
        >>> [site.name for site in find_relu_sites(net, torch.zeros(1, 1, 8, 8))]
        ['1', '3']
    """
    names = module_names(model)
    stack: list[nn.Module] = []
    # (kind, scope, function) -> shapes of each call, in order
    calls: dict[tuple[str, str, str], list[tuple[int, ...]]] = {}
    order: list[tuple[str, str, str, int]] = []

    def record(kind: str, scope: str, function: str, output: Tensor) -> None:
        if output.dim() < 2:
            return
        key = (kind, scope, function)
        shapes = calls.setdefault(key, [])
        order.append((kind, scope, function, len(shapes)))
        shapes.append(tuple(output.shape[1:]))

    def pre_hook(module: nn.Module, args: Any) -> None:
        if id(module) in names:
            stack.append(module)

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        if id(module) not in names:
            return
        if stack and stack[-1] is module:
            stack.pop()
        if isinstance(module, RELU_MODULE_TYPES) and isinstance(output, Tensor):
            record("module", names[id(module)], type(module).__name__, output)

    def on_relu(func: Any, result: Tensor) -> None:
        if stack and isinstance(stack[-1], RELU_MODULE_TYPES):
            return  # the module hook records it under the module's name
        scope = names[id(stack[-1])] if stack else ""
        record("function", scope, RELU_FUNCTIONS[func], result)

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    handles = [
        nn.modules.module.register_module_forward_pre_hook(pre_hook),
        nn.modules.module.register_module_forward_hook(post_hook, always_call=True),
    ]
    try:
        with evaluating(model), _ReluInterceptor(on_relu):
            model(*args)
    finally:
        for handle in handles:
            handle.remove()

    taken = set(names.values())
    sites: list[ReluSite] = []
    for kind, scope, function, index in order:
        shapes = calls[(kind, scope, function)]
        if kind == "module":
            base = scope
        else:
            base = f"{scope}.{function}" if scope else function
            if base in taken:
                base = f"{base}()"
        spelled: Literal["module", "function"] = "module" if kind == "module" else "function"
        sites.append(ReluSite(_numbered(base, index), scope, spelled, function, index, len(shapes), shapes[index]))
    return sites


class _ReluTap:
    """Live tap on chosen sites: calls ``on_activation(site_name, output)`` during every forward."""

    def __init__(
        self, model: nn.Module, sites: Sequence[ReluSite], on_activation: Callable[[str, Tensor], None]
    ) -> None:
        self._model = model
        self._sites = list(sites)
        self._on_activation = on_activation
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._counters: dict[tuple[str, str], int] = {}
        self._stack: list[nn.Module] = []
        self._mode: _ReluInterceptor | None = None
        self._mode_depth = 0

    def reset(self) -> None:
        """Start counting calls afresh (call between forward passes, e.g. at each training step)."""
        self._counters.clear()

    def _next_index(self, key: tuple[str, str], calls_per_forward: int) -> int:
        count = self._counters.get(key, 0)
        self._counters[key] = count + 1
        return count % calls_per_forward

    def __enter__(self) -> _ReluTap:
        try:
            self._attach()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _attach(self) -> None:
        modules = dict(self._model.named_modules())
        chosen = {(site.kind, site.scope, site.function, site.call_index): site for site in self._sites}
        module_sites: dict[str, list[ReluSite]] = {}
        function_scopes: set[str] = set()
        for site in self._sites:
            if site.kind == "module":
                module_sites.setdefault(site.scope, []).append(site)
            else:
                function_scopes.add(site.scope)

        for scope, scope_sites in module_sites.items():
            module = modules[scope]
            calls = scope_sites[0].calls_per_forward
            by_index = {site.call_index: site.name for site in scope_sites}
            if calls == 1:
                name = by_index[0]

                def single(module: nn.Module, args: Any, output: Any, _name: str = name) -> None:
                    if isinstance(output, Tensor):
                        self._on_activation(_name, output)

                self._handles.append(module.register_forward_hook(single))
            else:

                def repeated(
                    module: nn.Module,
                    args: Any,
                    output: Any,
                    _key: tuple[str, str] = ("module", scope),
                    _calls: int = calls,
                    _by_index: dict[int, str] = by_index,
                ) -> None:
                    name = _by_index.get(self._next_index(_key, _calls))
                    if name is not None and isinstance(output, Tensor):
                        self._on_activation(name, output)

                self._handles.append(module.register_forward_hook(repeated))

        if not function_scopes:
            return
        calls_per_forward = {
            (site.scope, site.function): site.calls_per_forward for site in self._sites if site.kind == "function"
        }
        names = module_names(self._model)

        def on_relu(func: Any, result: Tensor) -> None:
            top = self._stack[-1] if self._stack else None
            if top is None or isinstance(top, RELU_MODULE_TYPES):
                return
            scope = names[id(top)]
            function = RELU_FUNCTIONS[func]
            calls = calls_per_forward.get((scope, function))
            if calls is None:
                return
            index = self._next_index((scope, function), calls)
            site = chosen.get(("function", scope, function, index))
            if site is not None:
                self._on_activation(site.name, result)

        self._mode = _ReluInterceptor(on_relu)
        # The mode is active only inside the forward of a module that makes functional calls; ReLU modules
        # are tracked too so that the F.relu inside nn.ReLU.forward is not taken for a functional call.
        tracked = [modules[scope] for scope in sorted(function_scopes)]
        tracked += [m for m in self._model.modules() if isinstance(m, RELU_MODULE_TYPES)]
        owners = {id(modules[scope]) for scope in function_scopes}
        for module in tracked:
            is_owner = id(module) in owners
            self._handles.append(module.register_forward_pre_hook(self._make_enter(is_owner)))
            self._handles.append(module.register_forward_hook(self._make_leave(is_owner), always_call=True))

    def _make_enter(self, is_owner: bool) -> Callable[[nn.Module, Any], None]:
        def enter(module: nn.Module, args: Any) -> None:
            self._stack.append(module)
            if is_owner:
                if self._mode_depth == 0 and self._mode is not None:
                    self._mode.__enter__()
                self._mode_depth += 1

        return enter

    def _make_leave(self, is_owner: bool) -> Callable[[nn.Module, Any, Any], None]:
        def leave(module: nn.Module, args: Any, output: Any) -> None:
            if self._stack and self._stack[-1] is module:
                self._stack.pop()
            if is_owner and self._mode_depth > 0:
                self._mode_depth -= 1
                if self._mode_depth == 0 and self._mode is not None:
                    self._mode.__exit__(None, None, None)

        return leave

    def close(self) -> None:
        """Remove every hook and leave the interception mode if a failed forward left it on."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._mode_depth > 0 and self._mode is not None:
            self._mode.__exit__(None, None, None)
        self._mode_depth = 0
        self._stack.clear()
        self._counters.clear()


def tap_relus(model: nn.Module, sites: Sequence[ReluSite], on_activation: Callable[[str, Tensor], None]) -> _ReluTap:
    """Context manager that calls ``on_activation(site.name, output)`` for the chosen sites in every forward.

    ``output`` is the live activation: read it at once, do not keep it. Call ``.reset()`` on the tap between
    forwards when a model makes a varying number of calls.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        >>> sites = find_relu_sites(net, torch.zeros(1, 1, 8, 8))
        >>> seen = []
        >>> with tap_relus(net, sites, lambda name, out: seen.append((name, tuple(out.shape)))):
        ...     _ = net(torch.zeros(2, 1, 8, 8))
        >>> seen
        [('1', (2, 4, 6, 6))]
    """
    return _ReluTap(model, sites, on_activation)
