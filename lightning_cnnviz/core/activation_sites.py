"""Find every elementwise activation of a model, modules and functional calls alike, and tap them.

Kinds: the ReLU family (``relu``, ``relu6``) and ``leaky_relu``, ``prelu``, ``elu``, ``selu``, ``celu``, ``gelu``,
``silu``, ``hardswish``, ``mish``, ``hardsigmoid``, as ``nn`` modules (in place or not) or as functional calls
(``F.gelu(x)``, ``torch.relu_(x)``, ``x.relu()``), which a :class:`~torch.overrides.TorchFunctionMode` sees.

A site is named by where it is, never by how many calls came before it in the process: an activation module by
its module name (``features.1``), a functional call as ``<module>.<kind>`` after the module whose ``forward``
makes it (``block1.relu``; ``relu`` for the root model). When the same module, or the same kind of call in one
``forward``, is used at several places of one forward, ``#2``, ``#3``, ... mark the second, third place in the
order the code runs them, counted afresh in every run of the enclosing ``forward``: a forward run by someone else
(another monitor's probe, a forward stopped half-way) cannot shift a name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_cnnviz.core._calls import ACTIVATION_FUNCTIONS, RELU_FAMILY
from lightning_cnnviz.core._model import evaluating, module_names, named_modules
from lightning_cnnviz.core.stats import LayerSpec

__all__ = ["find_activation_sites", "tap_activations"]

ACTIVATION_MODULES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu"}
ACTIVATION_MODULES.update({nn.PReLU: "prelu", nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu", nn.GELU: "gelu"})
ACTIVATION_MODULES.update({nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Mish: "mish", nn.Hardsigmoid: "hardsigmoid"})
ACTIVATION_MODULE_TYPES = tuple(ACTIVATION_MODULES)
_PARAMETRIC = frozenset({F.conv1d, F.conv2d, F.conv3d, F.linear, F.conv_transpose2d})


def module_kind(module: nn.Module) -> str | None:
    """The activation kind of an activation module (``"relu"`` for ``nn.ReLU``), else None."""
    return ACTIVATION_MODULES.get(type(module))


@dataclass(frozen=True)
class ActivationSite:
    """One elementwise activation of a model.

    Attributes:
        name: stable, readable name (see the module docstring).
        scope: the module whose ``forward`` makes the call (for an activation module: the module calling it).
        kind: ``"module"`` or ``"function"``; ``function``: the activation kind (``"relu"``, ``"gelu"``, ...).
        module: the activation module's name (``""`` for a functional call).
        place: which place (0, 1, ...) of that module or that kind of call in one run of ``scope``'s forward.
        places: at how many places of its scope's forward the same module (or kind of call) is used.
        shape: output shape of the example forward, batch dimension excluded.
        channel_dim: 1, or -1 for the channels-last output of an ``nn.Linear`` applied per position (ConvNeXt).
        on_logits: computed after the model's last conv or linear layer: applied to the output, not a hidden layer.
    """

    name: str
    scope: str
    kind: Literal["module", "function"]
    function: str
    module: str
    place: int
    places: int
    shape: tuple[int, ...]
    channel_dim: int = 1
    on_logits: bool = False

    @property
    def num_channels(self) -> int:
        """Channels (or units) of the activation."""
        return self.shape[self.channel_dim if self.channel_dim < 0 else self.channel_dim - 1]

    @property
    def units(self) -> bool:
        """True for the activation of a fully connected layer (one value per unit, no spatial map)."""
        return len(self.shape) == 1

    @property
    def relu(self) -> bool:
        """True for the ReLU family, whose channels can be dead (never > 0)."""
        return self.function in RELU_FAMILY

    @property
    def spec(self) -> LayerSpec:
        """What :class:`~lightning_cnnviz.core.ActivationStats` needs to know about this site."""
        return LayerSpec(self.num_channels, relu=self.relu, channel_dim=self.channel_dim, units=self.units)


@dataclass
class _Run:
    """One running forward of a tracked module, with the places of activations used in it so far."""

    module: nn.Module
    name: str
    used: dict[tuple[str, str], int] = field(default_factory=dict)

    def next_place(self, key: tuple[str, str]) -> int:
        place = self.used.get(key, 0)
        self.used[key] = place + 1
        return place


class _Interceptor(TorchFunctionMode):
    """Calls ``on_call(func, args, result)`` after every call of ``watched`` functions."""

    def __init__(self, watched: frozenset[Any], on_call: Callable[[Any, Sequence[Any], Any], None]) -> None:
        super().__init__()
        self._watched = watched
        self._on_call = on_call

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        try:
            watched = func in self._watched
        except TypeError:  # unhashable callables are never watched
            watched = False
        if watched:
            self._on_call(func, args, result)
        return result


def _eager(hook: Callable[..., None]) -> Callable[..., None]:
    """The hook, run eagerly inside a ``torch.compile``d forward (a graph break): what it reads and counts is
    Python state that the compiled graph must not guard on, or it would recompile at every step."""
    return torch.compiler.disable(hook)


def _numbered(base: str, index: int) -> str:
    return base if index == 0 else f"{base}#{index + 1}"


def _function_base(scope: str, function: str, taken: set[str]) -> str:
    base = f"{scope}.{function}" if scope else function
    return f"{base}()" if base in taken else base


def site_scope(model: nn.Module, name: str) -> str | None:
    """The module that a site called ``name`` would belong to by the naming rules of
    :func:`find_activation_sites` (an activation module's own name, or the scope of ``<scope>.<kind>``), without
    running the model; None when no site of ``model`` can have that name. Whether a functional call really
    happens there needs a forward.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU())
        >>> site_scope(net, "1"), site_scope(net, "relu#2"), site_scope(net, "0")
        ('1', '', None)
    """
    modules = named_modules(model)
    base = name.split("#", 1)[0]
    if base in modules:
        return base if module_kind(modules[base]) is not None else None
    scope, _, function = base.removesuffix("()").rpartition(".")
    return scope if function in set(ACTIVATION_FUNCTIONS.values()) and scope in modules else None


def find_activation_sites(model: nn.Module, example_input: Any) -> list[ActivationSite]:
    """Run one forward pass and list every elementwise activation in the order they are computed.

    One eval-mode, no-grad pass of ``example_input`` (a tensor or a tuple of arguments); flags are restored.
    Outputs without a channel dimension are skipped. Sites computed after the last conv or linear call have
    ``on_logits`` set (a ReLU on a classifier's output is not a hidden layer).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.SiLU(inplace=True))
        >>> [(site.name, site.function, site.on_logits) for site in find_activation_sites(net, torch.zeros(1, 1, 8, 8))]
        [('1', 'relu', False), ('3', 'silu', True)]
    """
    names = module_names(model)
    runs: list[_Run] = []
    linear_outputs: dict[int, Tensor] = {}  # kept alive so that ids stay unique during the forward
    parametric_calls = [0]
    # (kind, identity, scope, place) -> (function, shape, channel_dim, parametric calls before it), first-seen order
    found: dict[tuple[str, str, str, int], tuple[str, tuple[int, ...], int, int]] = {}

    def record(kind: str, identity: str, function: str, source: Any, output: Any) -> None:
        if not isinstance(output, Tensor) or output.dim() < 2 or not runs:
            return
        run = runs[-1]
        key = (kind, identity, run.name, run.next_place((kind, identity)))
        if key not in found:
            channels_last = output.dim() >= 3 and isinstance(source, Tensor) and id(source) in linear_outputs
            found[key] = (function, tuple(output.shape[1:]), -1 if channels_last else 1, parametric_calls[0])

    def pre_hook(module: nn.Module, args: Any) -> None:
        if id(module) in names:
            runs.append(_Run(module, names[id(module)]))

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        if id(module) not in names:
            return
        if runs and runs[-1].module is module:
            runs.pop()
        function = module_kind(module)
        if function is not None:
            record("module", names[id(module)], function, args[0] if args else None, output)

    def on_call(func: Any, args: Sequence[Any], result: Any) -> None:
        if func in _PARAMETRIC:
            parametric_calls[0] += 1
            if func is F.linear and isinstance(result, Tensor):
                linear_outputs[id(result)] = result
            return
        if runs and module_kind(runs[-1].module) is not None:
            return  # the module hook records it under the module's name
        function = ACTIVATION_FUNCTIONS[func]
        record("function", function, function, args[0] if args else None, result)

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    handles = []
    for module in model.modules():  # per-module hooks: global ones would also fire for a compiled wrapper
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook, always_call=True))
    try:
        with evaluating(model), _Interceptor(frozenset(ACTIVATION_FUNCTIONS) | _PARAMETRIC, on_call):
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()

    places: dict[tuple[str, str, str], list[tuple[str, str, str, int]]] = {}
    for key in found:
        kind, identity, scope, _ = key
        places.setdefault((kind, identity, "" if kind == "module" else scope), []).append(key)
    taken = set(names.values())
    sites: list[ActivationSite] = []
    for key, (function, shape, channel_dim, before) in found.items():
        kind, identity, scope, place = key
        same = places[(kind, identity, "" if kind == "module" else scope)]
        index = same.index(key)
        base = identity if kind == "module" else _function_base(scope, function, taken)
        spelled: Literal["module", "function"] = "module" if kind == "module" else "function"
        sites.append(
            ActivationSite(
                *(_numbered(base, index), scope, spelled, function, identity if kind == "module" else ""),
                *(place, len(same), shape, channel_dim, before == parametric_calls[0]),
            )
        )
    return sites


class _ActivationTap:
    """Live tap on chosen sites: calls ``on_activation(site_name, output)`` during every forward."""

    def __init__(
        self, model: nn.Module, sites: Sequence[ActivationSite], on_activation: Callable[[str, Tensor], None]
    ) -> None:
        self._model = model
        self._sites = list(sites)
        self._on_activation = on_activation
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._runs: list[_Run] = []
        self._mode: _Interceptor | None = None
        self._mode_depth = 0

    def __enter__(self) -> _ActivationTap:
        try:
            self._attach()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _attach(self) -> None:
        modules = named_modules(self._model)
        # (kind, identity, scope, place) -> site name
        by_place = {
            ("module" if s.kind == "module" else "function", s.module or s.function, s.scope, s.place): s.name
            for s in self._sites
        }
        tracked: dict[str, bool] = {}  # module name -> whether functional calls in its forward are watched
        for index, site in enumerate(self._sites):
            if site.kind == "module" and site.places == 1:
                self._hook_single(modules[site.module], site.name)
            elif site.kind == "module":
                if not any(s.kind == "module" and s.module == site.module for s in self._sites[:index]):
                    self._hook_placed(modules[site.module], site.module, by_place)
                tracked.setdefault(site.scope, False)
            else:
                tracked[site.scope] = True
        if not tracked:
            return
        if any(tracked.values()):
            self._mode = _Interceptor(frozenset(ACTIVATION_FUNCTIONS), _eager(self._functional_call(by_place)))
            # Every module goes on the stack, so that a call is counted in the forward that makes it (the F.gelu
            # inside nn.GELU.forward, or a call in a module whose sites were not chosen, is not the scope's).
            for name in modules:
                tracked.setdefault(name, False)
        for name, watches in tracked.items():
            module = modules[name]
            enter, leave = self._make_enter(module, name, watches), self._make_leave(module, watches)
            self._handles.append(module.register_forward_pre_hook(_eager(enter)))
            self._handles.append(module.register_forward_hook(_eager(leave), always_call=True))

    def _hook_single(self, module: nn.Module, name: str) -> None:
        def single(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                self._on_activation(name, output)

        self._handles.append(module.register_forward_hook(_eager(single)))

    def _hook_placed(self, module: nn.Module, identity: str, by_place: dict[tuple[str, str, str, int], str]) -> None:
        def placed(module: nn.Module, args: Any, output: Any) -> None:
            if not self._runs or not isinstance(output, Tensor):
                return
            run = self._runs[-1]
            name = by_place.get(("module", identity, run.name, run.next_place(("module", identity))))
            if name is not None:
                self._on_activation(name, output)

        self._handles.append(module.register_forward_hook(_eager(placed)))

    def _functional_call(
        self, by_place: dict[tuple[str, str, str, int], str]
    ) -> Callable[[Any, Sequence[Any], Any], None]:
        def on_call(func: Any, args: Sequence[Any], result: Any) -> None:
            run = self._runs[-1] if self._runs else None
            if run is None or module_kind(run.module) is not None or not isinstance(result, Tensor):
                return
            function = ACTIVATION_FUNCTIONS[func]
            name = by_place.get(("function", function, run.name, run.next_place(("function", function))))
            if name is not None:
                self._on_activation(name, result)

        return on_call

    def _make_enter(self, module: nn.Module, name: str, watches: bool) -> Callable[[nn.Module, Any], None]:
        def enter(module: nn.Module, args: Any) -> None:
            self._runs.append(_Run(module, name))
            if watches:
                if self._mode_depth == 0 and self._mode is not None:
                    self._mode.__enter__()
                self._mode_depth += 1

        return enter

    def _make_leave(self, module: nn.Module, watches: bool) -> Callable[[nn.Module, Any, Any], None]:
        def leave(module: nn.Module, args: Any, output: Any) -> None:
            if self._runs and self._runs[-1].module is module:
                self._runs.pop()
            if watches and self._mode_depth > 0:
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
        self._runs.clear()


def tap_activations(
    model: nn.Module, sites: Sequence[ActivationSite], on_activation: Callable[[str, Tensor], None]
) -> _ActivationTap:
    """Context manager that calls ``on_activation(site.name, output)`` for the chosen sites in every forward.

    ``output`` is the live activation: read it at once, do not keep it.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU())
        >>> sites = find_activation_sites(net, torch.zeros(1, 1, 8, 8))
        >>> seen = []
        >>> with tap_activations(net, sites, lambda name, out: seen.append((name, tuple(out.shape)))):
        ...     _ = net(torch.zeros(2, 1, 8, 8))
        >>> seen
        [('1', (2, 4, 6, 6))]
    """
    return _ActivationTap(model, sites, on_activation)
