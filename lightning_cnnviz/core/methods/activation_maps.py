"""One image's activation maps (CS231n, "Visualizing what ConvNets learn"): the outputs of chosen activations for a
few images, one map per channel, on one scale per layer and image, with the channels a picture shows and their
health as these images see it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.methods.activation_sites import ActivationSite, tap_activations
from lightning_cnnviz.core.methods.stats import ChannelHealth

__all__ = ["choose_channels", "percentile", "probe_health", "site_outputs"]


def percentile(values: Tensor, q: float) -> Tensor:
    """Per row of ``values`` (N, L), the ``q``-th percentile (``q`` in [0, 100]) with linear interpolation between
    the two nearest ranks, as ``numpy.percentile`` computes it by default; by ``kthvalue``, so rows of any length.

    Example:
        >>> percentile(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 8.0]]), 50).tolist()
        [2.5, 0.0]
    """
    values = values.float()
    count = values.shape[1]
    position = q / 100 * (count - 1)
    low = math.floor(position)
    high, fraction = min(low + 1, count - 1), position - low
    lower = values.kthvalue(low + 1, dim=1).values
    if high == low or fraction == 0:
        return lower
    return lower + (values.kthvalue(high + 1, dim=1).values - lower) * fraction


def site_outputs(model: nn.Module, sites: Sequence[ActivationSite], images: Tensor) -> dict[str, Tensor]:
    """The output of each site of ``sites`` for ``images``, by site name: (N, C, *spatial) copies (channels first
    also where the site's output has them last), in one forward of ``model`` as it is called (the caller sets the
    mode and gradients). A site the forward did not reach is missing.

    Example:
        >>> from lightning_cnnviz.core.methods.activation_sites import find_activation_sites
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        >>> sites = find_activation_sites(net, torch.zeros(1, 1, 8, 8))
        >>> {name: tuple(value.shape) for name, value in site_outputs(net, sites, torch.zeros(2, 1, 8, 8)).items()}
        {'1': (2, 4, 6, 6)}
    """
    found: dict[str, Tensor] = {}
    last = {site.name: site.channel_dim < 0 for site in sites}

    def keep(name: str, output: Tensor) -> None:
        if name not in found:  # the first delivery of a site in this forward (a recomputed one is the same)
            found[name] = (output.movedim(-1, 1) if last[name] else output).detach().clone()

    with tap_activations(model, list(sites), keep):
        model(images)
    return found


def probe_health(values: Tensor, relu: bool, dormant_threshold: float = 0.1) -> ChannelHealth:
    """The dead and dormant channels of one activation's ``values`` (N, C, *spatial) as these inputs see them: dead
    (ReLU family) when no value of the channel is > 0; dormant when its mean |value| is at most
    ``dormant_threshold`` of the layer's mean (Sokar et al. 2023, as ActivationMonitor counts them over windows).

    Example:
        >>> values = torch.tensor([[[1.0], [0.0], [0.02]]])  # one input, three channels, one position
        >>> probe_health(values, relu=True)
        ChannelHealth(dead=(1,), dormant=(1, 2), seen='the probe images')
    """
    per_channel = values.transpose(0, 1).flatten(1).float()  # (C, N * positions)
    magnitude = per_channel.abs().mean(dim=1)
    score = magnitude / magnitude.mean().clamp_min(1e-30)
    dormant = torch.nonzero(score <= dormant_threshold).flatten()
    dead = torch.nonzero(per_channel.amax(dim=1) <= 0).flatten() if relu else dormant[:0]
    both = torch.cat([dead, dormant]).tolist()  # one host copy
    return ChannelHealth(tuple(both[: len(dead)]), tuple(both[len(dead) :]), "the probe images")


def choose_channels(
    activity: Tensor, marks: Sequence[int], cap: int, before: Sequence[int] | None = None
) -> tuple[list[int], str]:
    """Which of a layer's channels a picture of at most ``cap`` tiles shows, in channel order, and what to say of
    the choice (``""`` when every channel is shown).

    Every channel when they fit. Else every dead or dormant one (``marks`` > 0, up to half the tiles) and the most
    active of the others (``activity``: (C,) mean activation, on the host), so that what is healthy and what is not
    both show. With ``before`` (the channels shown last time), the choice is kept, except that channels newly dead
    or dormant replace its least active healthy ones: epochs compare tile for tile.

    Example:
        >>> choose_channels(torch.tensor([5.0, 0.0, 3.0, 9.0, 1.0]), [0, 2, 0, 0, 0], cap=3)
        ([0, 1, 3], 'the 2 most active of 4 healthy channels and 1 of 1 dead or dormant, of 5')
    """
    count = len(marks)
    if count <= cap:
        return list(range(count)), ""
    unwell = [c for c in range(count) if marks[c] > 0]
    shown_unwell = unwell[: max(cap // 2, cap - (count - len(unwell)))]
    healthy = sorted((c for c in range(count) if marks[c] == 0), key=lambda c: -float(activity[c]))
    if before is not None and len(before) == cap and all(0 <= c < count for c in before):
        kept = set(before)
        ranked = sorted((c for c in before if marks[c] == 0), key=lambda c: float(activity[c]))
        new = [c for c in shown_unwell if c not in kept][: len(ranked)]
        kept -= set(ranked[: len(new)])
        chosen = sorted(kept | set(new))
    else:
        chosen = sorted(shown_unwell + healthy[: cap - len(shown_unwell)])
    shown_healthy = sum(1 for c in chosen if marks[c] == 0)
    said = (f"the {shown_healthy} most active of {len(healthy)} healthy channels and "
            f"{len(chosen) - shown_healthy} of {len(unwell)} dead or dormant, of {count}")  # fmt: skip
    return chosen, said
