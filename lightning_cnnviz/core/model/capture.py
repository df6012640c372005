"""Tap named modules' outputs (and activation sites) during a forward pass; every hook is gone on exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_cnnviz.core.methods.activation_sites import ActivationSite, tap_activations
from lightning_cnnviz.core.model.modules import hooked, resolve_modules

__all__ = ["capture"]


@contextlib.contextmanager
def capture(
    model: nn.Module, layers: Sequence[str], *, sites: Sequence[ActivationSite] = (), detach: bool = True
) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of named modules (or activation sites) during forward passes inside the block.

    Outputs are cloned when recorded, so a later in-place operation (``nn.ReLU(inplace=True)`` after a
    conv, ``x += shortcut``) cannot change what was captured. A module called several times keeps its
    last output. Hooks are removed on exit, also when the forward raised.

    ``layers`` are module names or names of ``sites`` (from :func:`find_activation_sites`; functional calls such as
    ``F.relu`` can only be captured that way). With ``detach=False`` the outputs stay in the autograd graph. A
    name that is neither raises ValueError listing the valid names.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True))
        >>> with capture(net, ["0"]) as outputs:
        ...     _ = net(-torch.ones(1, 1, 4, 4))
        >>> outputs["0"].shape  # the conv output before the in-place ReLU overwrote it
        torch.Size([1, 2, 2, 2])
    """
    site_by_name = {site.name: site for site in sites}
    module_names = [name for name in layers if name not in site_by_name]
    modules = resolve_modules(model, module_names, what="capture layer", extra_valid=site_by_name)
    outputs: dict[str, Tensor] = {}

    def keep(name: str, output: Tensor) -> None:
        outputs[name] = output.detach().clone() if detach else output.clone()

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                keep(name, output)

        return hook

    chosen_sites = [site_by_name[name] for name in layers if name in site_by_name]
    with hooked([(module, hook_for(name)) for name, module in modules.items()]), contextlib.ExitStack() as stack:
        if chosen_sites:
            stack.enter_context(tap_activations(model, chosen_sites, keep))
        yield outputs
