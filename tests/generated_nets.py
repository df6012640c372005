"""Generated small CNNs that spell their activations every way the library supports, and record each
activation call themselves (the brute force the tap and the statistics are checked against).

A network is a *plan*: a list of :class:`Step`, each a conv (some channels forced dead by a bias of -1e4)
followed by an activation spelled as a module, a reused module, an in-place module, ``F.*``, ``torch.*``,
``torch.*_``, ``x.relu()``, inside a submodule, inside an ``nn.Sequential``, in a Python loop, or inside a
container or block called several times; optionally added to a residual and run under
``torch.utils.checkpoint`` (non-reentrant). The network knows, for every call it makes, the name the
library's rules give its site (``<module>`` or ``<scope>.<kind>``, ``#k`` for the k-th use in one forward).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

CHANNELS = 4
MODULES: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": functools.partial(nn.LeakyReLU, 0.1),
    "elu": nn.ELU,
    "selu": nn.SELU,
    "celu": nn.CELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
    "mish": nn.Mish,
    "hardsigmoid": nn.Hardsigmoid,
    "prelu": nn.PReLU,
}
NO_INPLACE = {"gelu", "prelu"}
FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": functools.partial(F.leaky_relu, negative_slope=0.1),
    "elu": F.elu,
    "selu": F.selu,
    "celu": F.celu,
    "gelu": F.gelu,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "mish": F.mish,
    "hardsigmoid": F.hardsigmoid,
}
TORCH: dict[str, Callable[[Tensor], Tensor]] = {"relu": torch.relu, "selu": torch.selu}
TORCH_INPLACE: dict[str, Callable[[Tensor], Tensor]] = {"relu": torch.relu_, "selu": torch.selu_}
METHODS: dict[str, Callable[[Tensor], Tensor]] = {"relu": Tensor.relu, "relu_": Tensor.relu_}

SPELLINGS = ("module", "reused", "inplace", "functional", "torch", "torch_", "method", "submodule", "sequential")
SPELLINGS += ("loop", "reused_container")


@dataclass(frozen=True)
class Step:
    """One conv and its activation. ``inner``: how a submodule, loop or container spells it (module or
    functional); ``repeats``: calls of a loop or reused container; ``dead``: channels forced dead."""

    spelling: str
    kind: str
    dead: tuple[int, ...] = ()
    inner: str = "module"
    repeats: int = 1
    residual: bool = False
    checkpointed: bool = False
    inplace: bool = False


def kinds_for(spelling: str, inner: str = "module") -> list[str]:
    if spelling == "torch" or spelling == "torch_":
        return sorted(TORCH)
    if spelling == "method":
        return sorted(METHODS)
    if spelling == "inplace":
        return sorted(set(MODULES) - NO_INPLACE)
    if spelling == "functional" or (spelling in ("submodule", "loop", "reused_container") and inner == "functional"):
        return sorted(FUNCTIONS)
    return sorted(MODULES)


@st.composite
def steps(draw: st.DrawFn) -> Step:
    spelling = draw(st.sampled_from(SPELLINGS))
    inner = draw(st.sampled_from(["module", "functional"]))
    kind = draw(st.sampled_from(kinds_for(spelling, inner)))
    dead = tuple(sorted(draw(st.sets(st.integers(0, CHANNELS - 1), max_size=CHANNELS - 1))))
    repeats = draw(st.integers(2, 3)) if spelling in ("loop", "reused_container") else 1
    inplace = spelling == "reused" and kind not in NO_INPLACE and draw(st.booleans())
    return Step(spelling, kind, dead, inner, repeats, draw(st.booleans()), draw(st.booleans()), inplace)


def plans(min_size: int = 2, max_size: int = 6) -> st.SearchStrategy[list[Step]]:
    return st.lists(steps(), min_size=min_size, max_size=max_size)


def activation_kind(step: Step) -> str:
    """The library's kind of the step's activation (``x.relu_()`` is a ``relu``)."""
    return "relu" if step.spelling == "method" else step.kind


class Recorder:
    """The calls a forward made, in order: (site name by the naming rules, a copy of the output)."""

    def __init__(self) -> None:
        self.on = False
        self.guided = False  # reference for guided backprop: every ReLU call uses GuidedRelu
        self.calls: list[tuple[str, Tensor]] = []
        self.kinds: dict[str, str] = {}
        self._uses: dict[str, int] = {}

    def start(self) -> None:
        self.on, self.calls, self._uses = True, [], {}

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def stop(self) -> list[tuple[str, Tensor]]:
        self.on = False
        return self.calls

    @torch.compiler.disable
    def __call__(self, base: str, output: Tensor, kind: str) -> Tensor:
        if self.on and output.dim() >= 2:
            use = self._uses.get(base, 0)
            self._uses[base] = use + 1
            name = base if use == 0 else f"{base}#{use + 1}"
            self.calls.append((name, output.detach().clone()))
            self.kinds[name] = kind
        return output


class GuidedRelu(torch.autograd.Function):
    """Springenberg et al.'s guided ReLU, written independently of the library."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp_min(0) * (out > 0)


def _module(kind: str, inplace: bool = False) -> nn.Module:
    return MODULES[kind](inplace=True) if inplace else MODULES[kind]()


def _call_module(module: nn.Module, kind: str, y: Tensor, recorder: Recorder) -> Tensor:
    if recorder.guided and kind == "relu":
        return GuidedRelu.apply(y)
    return module(y)


def _call_function(function: Callable[[Tensor], Tensor], kind: str, y: Tensor, recorder: Recorder) -> Tensor:
    if recorder.guided and kind == "relu":
        return GuidedRelu.apply(y)
    return function(y)


class Block(nn.Module):
    """A conv and its activation, as a module (``act``) or a functional call in this block's forward."""

    def __init__(self, kind: str, inner: str, name: str, recorder: Recorder) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.kind, self.inner, self.recorder = kind, inner, recorder
        self.base = f"{name}.act" if inner == "module" else f"{name}.{kind}"
        if inner == "module":
            self.act = _module(kind)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.inner == "module":
            y = _call_module(self.act, self.kind, y, self.recorder)
        else:
            y = _call_function(FUNCTIONS[self.kind], self.kind, y, self.recorder)
        return self.recorder(self.base, y, self.kind)


class GeneratedNet(nn.Module):
    """The network of a plan (see the module docstring); ``recorder`` sees every activation call."""

    def __init__(self, plan: list[Step], recorder: Recorder | None = None, num_classes: int = 3) -> None:
        super().__init__()
        self.plan = list(plan)
        self.recorder = recorder or Recorder()
        self.stem = nn.Conv2d(1, CHANNELS, 3, padding=1)
        self.convs = nn.ModuleDict()
        self.acts = nn.ModuleDict()
        self.shared = nn.ModuleDict()
        self.parts = nn.ModuleDict()
        for index, step in enumerate(self.plan):
            key = str(index)
            if step.spelling in ("submodule", "sequential", "reused_container"):
                if step.spelling == "sequential" or (step.spelling == "reused_container" and step.inner == "module"):
                    conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
                    self.parts[key] = nn.Sequential(conv, _module(step.kind))
                else:
                    self.parts[key] = Block(step.kind, step.inner, f"parts.{key}", self.recorder)
                self._kill(self.parts[key][0] if isinstance(self.parts[key], nn.Sequential) else self.parts[key].conv,
                           step.dead)
                continue
            self.convs[key] = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
            self._kill(self.convs[key], step.dead)
            if step.spelling in ("module", "inplace") or (step.spelling == "loop" and step.inner == "module"):
                self.acts[key] = _module(step.kind, inplace=step.spelling == "inplace")
            elif step.spelling == "reused" and step.kind not in self.shared:
                self.shared[step.kind] = _module(step.kind, inplace=step.inplace)
        self.head = nn.Linear(CHANNELS, num_classes)
        self.gain = nn.Parameter(torch.ones(()))

    @staticmethod
    def _kill(conv: nn.Conv2d, dead: tuple[int, ...]) -> None:
        with torch.no_grad():
            for channel in dead:
                assert conv.bias is not None
                conv.bias[channel] = -1e4

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for index, step in enumerate(self.plan):
            run = functools.partial(self._step, index, step)
            if step.checkpointed and torch.is_grad_enabled():
                # times a gain of 1 that saves the activation for its backward: the recomputation in backward
                # must then run the whole step again (checkpoint stops recomputing once it has what it needs)
                y = checkpoint(lambda x, run=run: run(x) * self.gain, x, use_reentrant=False)
            else:
                y = run(x)
            x = x + y if step.residual else y
        return self.head(x.mean((2, 3)))

    def _step(self, index: int, step: Step, x: Tensor) -> Tensor:
        key, record, kind = str(index), self.recorder, step.kind
        if step.spelling in ("submodule", "sequential", "reused_container"):
            part = self.parts[key]
            y = x
            for _ in range(step.repeats):
                if not isinstance(part, nn.Sequential):
                    y = part(y)
                elif record.guided:  # the reference: the container's ReLU spelled as GuidedRelu
                    y = _call_module(part[1], kind, part[0](y), record)
                else:
                    y = record(f"parts.{key}.1", part(y), kind)
            return y
        conv = self.convs[key]
        if step.spelling == "loop":
            y = x
            for _ in range(step.repeats):
                if step.inner == "module":
                    y = record(f"acts.{key}", _call_module(self.acts[key], kind, conv(y), record), kind)
                else:
                    y = record(kind, _call_function(FUNCTIONS[kind], kind, conv(y), record), kind)
            return y
        y = conv(x)
        if step.spelling in ("module", "inplace"):
            return record(f"acts.{key}", _call_module(self.acts[key], kind, y, record), kind)
        if step.spelling == "reused":
            return record(f"shared.{kind}", _call_module(self.shared[kind], kind, y, record), kind)
        function = {"functional": FUNCTIONS, "torch": TORCH, "torch_": TORCH_INPLACE, "method": METHODS}[
            step.spelling
        ][kind]
        library_kind = activation_kind(step)
        return record(library_kind, _call_function(function, library_kind, y, record), library_kind)


def guided_reference(net: GeneratedNet, images: Tensor, target: int) -> Tensor:
    """d logit[target] / d images with every ReLU call's backward replaced by the guided rule (the network
    spells each call as ``GuidedRelu``), written without the library."""
    net.recorder.guided = True
    try:
        inputs = images.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(inputs)[:, target].sum(), inputs)
    finally:
        net.recorder.guided = False
    return grad
