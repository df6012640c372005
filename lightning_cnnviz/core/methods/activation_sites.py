"""Find every elementwise activation of a model, modules and functional calls alike, and tap them.

Kinds: the ReLU family (``relu``, ``relu6``) and ``leaky_relu``, ``prelu``, ``elu``, ``selu``, ``celu``, ``gelu``,
``silu``, ``hardswish``, ``mish``, ``hardsigmoid``, as ``nn`` modules (in place or not) or as functional calls
(``F.gelu(x)``, ``torch.relu_(x)``, ``x.relu()``), which a :class:`~torch.overrides.TorchFunctionMode` sees.

A site is named by where it is, never by how many calls came before it in the process: an activation module by
its module name (``features.1``), a functional call as ``<module>.<kind>`` after the module whose ``forward``
makes it (``block1.relu``; ``relu`` for the root model). When the same module, or the same kind of call in one
``forward``, is used at several places of one forward, ``#2``, ``#3``, ... mark the second, third place in the
order the code runs them: k uses are k sites. This holds through containers too: an ``nn.Sequential`` or a block
called twice (or in a Python loop) gives every activation inside it a site per call (``seq.1``, ``seq.1#2``).
Places are counted afresh in every run of the enclosing ``forward``: a forward run by someone else (another
monitor's probe, a forward stopped half-way) cannot shift a name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_cnnviz.core.methods._calls import ACTIVATION_FUNCTIONS, RELU_FAMILY
from lightning_cnnviz.core.methods.stats import LayerSpec
from lightning_cnnviz.core.model.modules import evaluating, hooked, module_names, named_modules

__all__ = ["ActivationSite", "ActivationTap", "find_activation_sites", "tap_activations"]

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
        places: how many sites share this site's name before ``#`` (the uses of one module, or of one kind of
            call in one scope, in one forward).
        shape: output shape of the example forward, batch dimension excluded.
        channel_dim: 1, or -1 for the channels-last output of an ``nn.Linear`` applied per position (ConvNeXt).
        on_logits: computed after the model's last conv or linear layer: applied to the output, not a hidden layer.
        within: the repeated runs the site lies in: ``(module name, run)`` for ``scope`` and each module that
            called it whose run was not the first of that module in its caller's forward (a container or block
            called twice, a module called in a loop); ``()`` for most sites.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = nn.Conv2d(1, 2, 3)
        ...     def forward(self, x):
        ...         return torch.relu(self.conv(x))
        >>> [(site.name, site.kind, site.shape) for site in find_activation_sites(Net(), torch.zeros(1, 1, 5, 5))]
        [('relu', 'function', (2, 3, 3))]
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
    within: tuple[tuple[str, int], ...] = ()

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

    @property
    def key(self) -> _SiteKey:
        """Where the site is, as :class:`_Places` counts it."""
        return _SiteKey(self.kind, self.module or self.function, self.scope, self.within, self.place)


@dataclass(frozen=True)
class _SiteKey:
    """Where an activation call is: its kind (``"module"``/``"function"``), the module or activation kind, the
    module whose forward makes it, the repeated runs it lies in, and its place in that run."""

    kind: str
    identity: str
    scope: str
    within: tuple[tuple[str, int], ...]
    place: int


@dataclass
class _Run:
    """One running forward of a module, with what it has called so far."""

    module: nn.Module
    name: str
    within: tuple[tuple[str, int], ...]
    used: dict[tuple[str, str], int] = field(default_factory=dict)

    def next_place(self, key: tuple[str, str]) -> int:
        place = self.used.get(key, 0)
        self.used[key] = place + 1
        return place


class _Places:
    """The one place where activation calls are counted, for :func:`find_activation_sites` and the tap alike.

    A stack of running module forwards: ``enter``/``leave`` at every module's forward, ``module_output`` after an
    activation module's forward has left, ``function_output`` after a functional activation call. Each returns
    the :class:`_SiteKey` of the call, or None for one that is not a site (no enclosing forward, not a tensor of
    at least two dimensions, the functional call that an activation module's own forward makes).
    """

    def __init__(self, names: dict[int, str]) -> None:
        self.names = names
        self.runs: list[_Run] = []

    def enter(self, module: nn.Module) -> None:
        name = self.names[id(module)]
        caller = self.runs[-1] if self.runs else None
        run = caller.next_place(("run", name)) if caller is not None else 0
        within = caller.within if caller is not None else ()
        self.runs.append(_Run(module, name, (*within, (name, run)) if run else within))

    def leave(self, module: nn.Module) -> None:
        if self.runs and self.runs[-1].module is module:
            self.runs.pop()

    def module_output(self, module: nn.Module, output: Any) -> _SiteKey | None:
        return self._place("module", self.names[id(module)], output)

    def function_output(self, function: str, output: Any) -> _SiteKey | None:
        if self.runs and module_kind(self.runs[-1].module) is not None:
            return None  # the F.gelu inside nn.GELU.forward: the module's output is the site
        return self._place("function", function, output)

    def _place(self, kind: str, identity: str, output: Any) -> _SiteKey | None:
        if not isinstance(output, Tensor) or output.dim() < 2 or not self.runs:
            return None
        run = self.runs[-1]
        return _SiteKey(kind, identity, run.name, run.within, run.next_place((kind, identity)))

    def clear(self) -> None:
        self.runs.clear()


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
    places = _Places(names)
    linear_outputs: dict[int, Tensor] = {}  # kept alive so that ids stay unique during the forward
    parametric_calls = [0]
    # key -> (function, shape, channel_dim, parametric calls before it), in first-seen order
    found: dict[_SiteKey, tuple[str, tuple[int, ...], int, int]] = {}

    def record(key: _SiteKey | None, function: str, source: Any, output: Any) -> None:
        if key is not None and key not in found:
            channels_last = output.dim() >= 3 and isinstance(source, Tensor) and id(source) in linear_outputs
            found[key] = (function, tuple(output.shape[1:]), -1 if channels_last else 1, parametric_calls[0])

    def pre_hook(module: nn.Module, args: Any) -> None:
        if id(module) in names:
            places.enter(module)

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        if id(module) not in names:
            return
        places.leave(module)
        function = module_kind(module)
        if function is not None:
            record(places.module_output(module, output), function, args[0] if args else None, output)

    def on_call(func: Any, args: Sequence[Any], result: Any) -> None:
        if func in _PARAMETRIC:
            parametric_calls[0] += 1
            if func is F.linear and isinstance(result, Tensor):
                linear_outputs[id(result)] = result
            return
        function = ACTIVATION_FUNCTIONS[func]
        record(places.function_output(function, result), function, args[0] if args else None, result)

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    # per-module hooks: global ones would also fire for a compiled wrapper
    modules = list(model.modules())
    with (
        hooked([(m, post_hook) for m in modules], [(m, pre_hook) for m in modules], always_call=True),
        evaluating(model),
        _Interceptor(frozenset(ACTIVATION_FUNCTIONS) | _PARAMETRIC, on_call),
    ):
        model(*inputs)

    # One name per module (wherever it is called) and per kind of call in one scope; #2, #3 for further uses.
    groups: dict[tuple[str, str, str], list[_SiteKey]] = {}
    for key in found:
        groups.setdefault((key.kind, key.identity, "" if key.kind == "module" else key.scope), []).append(key)
    taken = set(names.values())
    sites: list[ActivationSite] = []
    for key, (function, shape, channel_dim, before) in found.items():
        same = groups[(key.kind, key.identity, "" if key.kind == "module" else key.scope)]
        base = key.identity if key.kind == "module" else _function_base(key.scope, function, taken)
        sites.append(
            ActivationSite(
                name=_numbered(base, same.index(key)),
                scope=key.scope,
                kind="module" if key.kind == "module" else "function",
                function=function,
                module=key.identity if key.kind == "module" else "",
                place=key.place,
                places=len(same),
                shape=shape,
                channel_dim=channel_dim,
                on_logits=before == parametric_calls[0],
                within=key.within,
            )
        )
    return sites


class ActivationTap:
    """Live tap on chosen sites: calls ``on_activation(site_name, output)`` during every forward.

    Sites of activation modules used at one place only are read by a hook on the module. Any other site (a
    module used at several places, a module inside a container or block called several times, a functional
    call) needs to know where the forward is: then every module's forward is followed by :class:`_Places`, as
    :func:`find_activation_sites` followed it, and functional calls are watched while a forward that makes a
    chosen one runs.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        >>> sites, seen = find_activation_sites(net, torch.zeros(1, 1, 5, 5)), []
        >>> with tap_activations(net, sites, lambda name, out: seen.append(name)) as tap:
        ...     _ = net(torch.zeros(1, 1, 5, 5))
        ...     with tap.paused():
        ...         _ = net(torch.zeros(1, 1, 5, 5))
        >>> seen
        ['1']
    """

    def __init__(
        self, model: nn.Module, sites: Sequence[ActivationSite], on_activation: Callable[[str, Tensor], None]
    ) -> None:
        self._model = model
        self._sites = list(sites)
        self._on_activation = on_activation
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._places = _Places(module_names(model))
        self._mode: _Interceptor | None = None
        self._mode_depth = 0
        self.enabled = True

    def __enter__(self) -> ActivationTap:
        try:
            self._attach()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Deliver nothing inside the block: wrap a backward pass, whose recomputation of checkpointed
        activations (``torch.utils.checkpoint``) runs their forwards a second time."""
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled

    def _deliver(self, key: _SiteKey | None, output: Tensor, chosen: dict[_SiteKey, str]) -> None:
        name = chosen.get(key) if key is not None else None
        if name is not None and self.enabled:
            self._on_activation(name, output)

    def _attach(self) -> None:
        modules = named_modules(self._model)
        if all(site.kind == "module" and site.places == 1 for site in self._sites):
            for site in self._sites:
                self._hook_single(modules[site.module], site.name)
            return
        chosen = {site.key: site.name for site in self._sites}
        watching = {site.scope for site in self._sites if site.kind == "function"}
        if watching:
            self._mode = _Interceptor(frozenset(ACTIVATION_FUNCTIONS), _eager(self._functional_call(chosen)))
        for name, module in modules.items():
            enter, leave = self._make_enter(name in watching), self._make_leave(name in watching, chosen)
            self._handles.append(module.register_forward_pre_hook(_eager(enter)))
            self._handles.append(module.register_forward_hook(_eager(leave), always_call=True))

    def _hook_single(self, module: nn.Module, name: str) -> None:
        def single(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and self.enabled:
                self._on_activation(name, output)

        self._handles.append(module.register_forward_hook(_eager(single)))

    def _functional_call(self, chosen: dict[_SiteKey, str]) -> Callable[[Any, Sequence[Any], Any], None]:
        def on_call(func: Any, args: Sequence[Any], result: Any) -> None:
            self._deliver(self._places.function_output(ACTIVATION_FUNCTIONS[func], result), result, chosen)

        return on_call

    def _make_enter(self, watches: bool) -> Callable[[nn.Module, Any], None]:
        def enter(module: nn.Module, args: Any) -> None:
            self._places.enter(module)
            if watches:
                if self._mode_depth == 0 and self._mode is not None:
                    self._mode.__enter__()
                self._mode_depth += 1

        return enter

    def _make_leave(self, watches: bool, chosen: dict[_SiteKey, str]) -> Callable[[nn.Module, Any, Any], None]:
        def leave(module: nn.Module, args: Any, output: Any) -> None:
            self._places.leave(module)
            if module_kind(module) is not None:
                self._deliver(self._places.module_output(module, output), output, chosen)
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
        self._places.clear()


def tap_activations(
    model: nn.Module, sites: Sequence[ActivationSite], on_activation: Callable[[str, Tensor], None]
) -> ActivationTap:
    """Context manager that calls ``on_activation(site.name, output)`` for the chosen sites in every forward.

    ``output`` is the live activation: read it at once, do not keep it. Forwards run again inside a backward pass
    (``torch.utils.checkpoint`` recomputing a checkpointed block) are delivered too, as forwards: run the backward
    inside the tap's ``paused()`` block (ActivationMonitor does) to count training forwards only.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU())
        >>> sites = find_activation_sites(net, torch.zeros(1, 1, 8, 8))
        >>> seen = []
        >>> with tap_activations(net, sites, lambda name, out: seen.append((name, tuple(out.shape)))):
        ...     _ = net(torch.zeros(2, 1, 8, 8))
        >>> seen
        [('1', (2, 4, 6, 6))]
    """
    return ActivationTap(model, sites, on_activation)
