"""The dead-filter alert policy, Trainer-free: feed it each window's statistics, it says which layers alert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lightning_cnnviz.core.stats import ActivationSummary

__all__ = ["DeadFilterAlerts"]


@dataclass(frozen=True)
class DeadFilterEvent:
    """What an alert knows about filters dying in one layer.

    Attributes:
        layer: activation name (see :func:`lightning_cnnviz.core.find_relu_sites`).
        reason: ``"threshold"`` (the dead fraction reached ``dead_fraction_threshold``) or ``"growth"``
            (channels died since the previous window).
        dead_channels: every channel dead in this window.
        new_dead_channels: channels dead now that were alive in the previous window.
        num_channels: channels of the layer.
        dead_fraction: ``len(dead_channels) / num_channels``.
        threshold: the configured ``dead_fraction_threshold``.
        global_step: training step at the end of the window.
        epoch: training epoch.
        window_steps: training steps in the window.
        learning_rate: the learning rate, if known.
        message: the alert text.
    """

    layer: str
    reason: Literal["threshold", "growth"]
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


class DeadFilterAlerts:
    """When filters dying in a layer is news.

    A layer alerts when its dead fraction reaches ``threshold`` (once per crossing), and, with ``on_growth``,
    again whenever more of its channels die while it is at or above the threshold (channels dead now that were
    alive in the previous window). A lone channel flickering in and out of a window in a healthy layer is not
    news; more filters dying in a layer that is already losing them is.

    Example:
        >>> import torch
        >>> from lightning_cnnviz.core import ActivationStats
        >>> stats = ActivationStats({"relu": 4})
        >>> stats.update("relu", torch.tensor([[[1.0], [0.0], [2.0], [3.0]]]))
        >>> [event.dead_channels for event in DeadFilterAlerts(threshold=0.2).check(stats.summary(), global_step=9)]
        [[1]]
    """

    def __init__(self, threshold: float = 0.1, on_growth: bool = True) -> None:
        self.threshold = threshold
        self.on_growth = on_growth
        self.last_dead: dict[str, list[int]] = {}
        self.over_threshold: dict[str, bool] = {}

    def check(
        self, summary: ActivationSummary, *, global_step: int, epoch: int = 0, learning_rate: float | None = None
    ) -> list[DeadFilterEvent]:
        """The alerts of one window (and the policy's memory moves on to it)."""
        events = []
        for name, layer in summary.layers.items():
            dead, fraction = layer.dead_channels, layer.dead_fraction
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
            why = (
                f"the dead fraction reached the threshold {self.threshold:.0%}"
                if crossed
                else f"{len(new_dead)} channel(s) died since the previous window: {new_dead[:32]}"
            )
            rate = f"{learning_rate:g}" if learning_rate is not None else "unknown"
            message = (
                f"ActivationMonitor: {len(dead)} of {layer.num_channels} filters ({fraction:.1%}) of layer '{name}' "
                f"are dead at step {global_step}: they never fired (> 0) on any input of the last {summary.steps} "
                f"training step(s) ({why}). Dead channels: [{shown}]. Current learning rate: {rate}. A too-high "
                "learning rate is a common cause of dying ReLUs: consider lowering it or adding warm-up."
            )
            events.append(
                DeadFilterEvent(
                    *(name, reason, dead, new_dead, layer.num_channels, fraction, self.threshold, global_step),
                    *(epoch, summary.steps, learning_rate, message),
                )
            )
        return events

    def state_dict(self) -> dict[str, Any]:
        last_dead = {k: list(v) for k, v in self.last_dead.items()}
        return {"last_dead": last_dead, "over_threshold": dict(self.over_threshold)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_dead = {k: list(v) for k, v in state.get("last_dead", {}).items()}
        self.over_threshold = dict(state.get("over_threshold", {}))
