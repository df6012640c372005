"""The dead/dormant-channel and divergence alert policy, Trainer-free: feed it each window's statistics, it says
which layers alert."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from lightning_cnnviz.core.methods.stats import ActivationSummary

__all__ = ["DeadFilterAlerts", "DeadFilterEvent"]


@dataclass(frozen=True)
class DeadFilterEvent:
    """What an alert knows about channels of one layer dying, going dormant, or the network diverging.

    Example:
        >>> import torch
        >>> from lightning_cnnviz.core import ActivationStats
        >>> stats = ActivationStats({"relu": 2})
        >>> stats.update("relu", torch.tensor([[[1.0], [0.0]]]))
        >>> event = DeadFilterAlerts(threshold=0.5).check(stats.summary(), global_step=3)[0]
        >>> event.layer, event.dead_channels, event.reason
        ('relu', [1], 'threshold')

    Attributes:
        layer: activation name (see :func:`lightning_cnnviz.core.find_activation_sites`).
        reason: ``"threshold"`` (the fraction reached ``threshold``), ``"growth"`` (channels joined since the
            previous window) or ``"diverged"`` (non-finite values, first seen in ``layer``).
        dead_channels: every channel flagged in this window (dead, or dormant); for ``"diverged"``, none.
        new_dead_channels: channels flagged now that were not in the previous window.
        num_channels: channels of the layer.
        dead_fraction: ``len(dead_channels) / num_channels``.
        threshold: the configured fraction threshold.
        global_step: training step at the end of the window.
        epoch: training epoch.
        window_steps: training steps in the window.
        learning_rate: the learning rate, if known.
        message: the alert text.
        measure: ``"dead"`` (ReLU family: never > 0), ``"dormant"`` (mean |activation| at or below
            ``dormant_threshold`` of the layer's mean) or ``"nonfinite"``.
        units: True when the channels are units of a fully connected layer rather than conv filters.
    """

    layer: str
    reason: Literal["threshold", "growth", "diverged"]
    dead_channels: list[int]
    new_dead_channels: list[int]
    num_channels: int
    dead_fraction: float
    threshold: float
    global_step: int
    epoch: int
    window_steps: int
    learning_rate: float | None
    message: str
    measure: Literal["dead", "dormant", "nonfinite"] = "dead"
    units: bool = False


class DeadFilterAlerts:
    """When channels dying (ReLU family) or going dormant (other activations) in a layer is news, and when the
    network diverged.

    A layer alerts when the fraction of its channels that are dead (ReLU family: never > 0 in the window) or
    dormant (other kinds: mean |activation| at or below ``dormant_threshold`` times the layer's mean, Sokar et al.
    2023) reaches ``threshold`` (once per crossing), and, with ``on_growth``, again whenever more of its channels
    join while it is at or above the threshold. A lone channel flickering in and out of a window in a healthy
    layer is not news; more filters dying in a layer that is already losing them is.

    A window in which any layer saw a NaN or an infinity raises one ``"diverged"`` alert naming the first such
    layer (in forward order) instead: dead or dormant counts of a diverged network would blame the wrong cause.
    It alerts again only after a finite window. Each alert's message starts with ``who`` (default: this class's
    name; ActivationMonitor's when it watches).

    Example:
        >>> import torch
        >>> from lightning_cnnviz.core import ActivationStats
        >>> stats = ActivationStats({"relu": 4})
        >>> stats.update("relu", torch.tensor([[[1.0], [0.0], [2.0], [3.0]]]))
        >>> [event.dead_channels for event in DeadFilterAlerts(threshold=0.2).check(stats.summary(), global_step=9)]
        [[1]]
    """

    def __init__(
        self, threshold: float = 0.1, on_growth: bool = True, dormant_threshold: float = 0.1, who: str | None = None
    ) -> None:
        self.who = who or type(self).__name__  # the name each alert's message starts with
        self.threshold = threshold
        self.on_growth = on_growth
        self.dormant_threshold = dormant_threshold
        self.last_dead: dict[str, list[int]] = {}
        self.over_threshold: dict[str, bool] = {}
        self.diverged = False

    def check(
        self, summary: ActivationSummary, *, global_step: int, epoch: int = 0, learning_rate: float | None = None
    ) -> list[DeadFilterEvent]:
        """The alerts of one window (and the policy's memory moves on to it)."""
        rate = f"{learning_rate:g}" if learning_rate is not None else "unknown"
        event = functools.partial(
            DeadFilterEvent, threshold=self.threshold, global_step=global_step, epoch=epoch,
            window_steps=summary.steps, learning_rate=learning_rate,
        )  # fmt: skip  # what every event of this window shares
        diverged = [name for name, layer in summary.layers.items() if layer.nonfinite > 0]
        if diverged:
            first, self.diverged, was = diverged[0], True, self.diverged
            if was:
                return []
            layer = summary.layers[first]
            message = (
                f"{self.who}: the network diverged by step {global_step}: {layer.nonfinite} of "
                f"{layer.num_channels} channels of layer '{first}' held NaN or infinite values in the last "
                f"{summary.steps} training step(s), the first layer (in forward order) where they appear"
                + (f"; also in {len(diverged) - 1} later layer(s)" if len(diverged) > 1 else "")
                + f". Current learning rate: {rate}. Lower the learning rate, clip gradients, or check the data "
                "and the loss for NaN; dead and dormant alerts are paused until the values are finite again."
            )
            return [
                event(
                    layer=first, reason="diverged", dead_channels=[], new_dead_channels=[],
                    num_channels=layer.num_channels, dead_fraction=0.0, message=message, measure="nonfinite",
                    units=layer.units,
                )
            ]  # fmt: skip
        self.diverged = False
        events = []
        for name, layer in summary.layers.items():
            measure: Literal["dead", "dormant"] = "dead" if layer.relu else "dormant"
            dead = layer.dead_channels if layer.relu else layer.dormant_channels(self.dormant_threshold)
            fraction = len(dead) / max(layer.num_channels, 1)
            previous = self.last_dead.get(name)
            over = fraction > 0 and fraction >= self.threshold
            crossed = over and not self.over_threshold.get(name, False)
            new_dead = sorted(set(dead) - set(previous)) if previous is not None else []
            grew = self.on_growth and over and bool(new_dead)
            self.over_threshold[name], self.last_dead[name] = over, dead
            if not (crossed or grew):
                continue
            reason: Literal["threshold", "growth"] = "threshold" if crossed else "growth"
            shown = ", ".join(map(str, dead[:64])) + (f", ... ({len(dead) - 64} more)" if len(dead) > 64 else "")
            what = "units of the fully connected layer" if layer.units else "filters"
            joined = "died" if layer.relu else "went dormant"
            why = (
                f"the {measure} fraction reached the threshold {self.threshold:.0%}"
                if crossed
                else f"{len(new_dead)} channel(s) {joined} since the previous window: {new_dead[:32]}"
            )
            if layer.relu:
                state = f"dead at step {global_step}: they never fired (> 0) on any input"
                advice = (
                    "A too-high learning rate is a common cause of dying ReLUs: consider lowering it or adding warm-up."
                )
            else:
                state = (
                    f"dormant at step {global_step}: their mean |activation| was at most {self.dormant_threshold:g} "
                    "of the layer's mean over every input"
                )
                advice = (
                    "Dormant channels no longer contribute (Sokar et al. 2023); a too-high learning rate or a "
                    "collapsing normalisation are common causes: consider lowering the learning rate or warm-up."
                )
            message = (
                f"{self.who}: {len(dead)} of {layer.num_channels} {what} ({fraction:.1%}) of layer '{name}' "
                f"are {state} of the last {summary.steps} training step(s) ({why}). {measure.capitalize()} "
                f"channels: [{shown}]. Current learning rate: {rate}. {advice}"
            )
            events.append(
                event(
                    layer=name, reason=reason, dead_channels=dead, new_dead_channels=new_dead,
                    num_channels=layer.num_channels, dead_fraction=fraction, message=message, measure=measure,
                    units=layer.units,
                )
            )  # fmt: skip
        return events

    def state_dict(self) -> dict[str, Any]:
        last_dead = {k: list(v) for k, v in self.last_dead.items()}
        return {"last_dead": last_dead, "over_threshold": dict(self.over_threshold), "diverged": self.diverged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_dead = {k: list(v) for k, v in state.get("last_dead", {}).items()}
        self.over_threshold = dict(state.get("over_threshold", {}))
        self.diverged = bool(state.get("diverged", False))
