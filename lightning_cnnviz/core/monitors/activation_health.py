"""ActivationMonitor's state and logic, Trainer-free: which activations to watch, their statistics over windows of
training forwards, the windows' histories, the alerts, and the pictures of them.

A plain loop, Fabric and the Lightning callback use it alike::

    health = ActivationHealth()
    health.discover(model, images)                   # the activations of one forward
    with health.watch(model) as tap:                 # every training forward is counted
        for step, (images, labels) in enumerate(loader):
            loss = criterion(model(images), labels)
            with tap.paused():                       # a backward may run checkpointed forwards again
                loss.backward()
            health.step()
            if (step + 1) % 50 == 0:
                summary = health.close_window()      # summed over processes under torch.distributed
                if summary is not None:
                    scalars, histograms = health.scalars(summary)
                    events = health.check_alerts(summary, global_step=step + 1)
    pictures = health.maps()                         # {tag: image} of the dead, dormant and value maps
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_names, check_number, check_positive_int
from lightning_cnnviz.core.context import Context
from lightning_cnnviz.core.drawing.render import dead_filter_map, distribution_map
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.methods.activation_sites import (
    ACTIVATION_MODULE_TYPES,
    ActivationSite,
    ActivationTap,
    find_activation_sites,
    site_scope,
    tap_activations,
)
from lightning_cnnviz.core.methods.stats import ActivationStats, ActivationSummary, ChannelHealth
from lightning_cnnviz.core.model.modules import format_names, model_device, named_modules
from lightning_cnnviz.core.monitors.alerts import DeadFilterAlerts, DeadFilterEvent
from lightning_cnnviz.core.protocol import Guard, Moment, Snapshot

__all__ = ["ActivationHealth"]



class ActivationHealth:
    """The activations of a model's training forwards, window by window: dead (ReLU family) and dormant channels,
    value distributions, non-finite values, alerts, and their pictures.

    What a window gives (tags as ActivationMonitor writes them):

    * every activation: ``cnnviz/activations/dormant|dormant_fraction/<layer>`` (a channel is *dormant* when its
      mean |activation| over the window is at most ``dormant_threshold`` of the layer's mean: Sokar et al. 2023),
      ``cnnviz/activations/nonfinite/<layer>`` (channels whose values held NaN or inf), and the image
      ``cnnviz/activations/distribution/<layer>``: windows x value bins, the values of one batch per window
      (fastai's "colorful dimension");
    * the ReLU family also: ``cnnviz/activations/sparsity|dead|dead_fraction/<layer>`` (a channel is *dead* when it
      never fired, > 0, at any position of any input of the window), firing-rate histograms;
    * the channels x windows ``dead_map`` (ReLU family) or ``dormant_map`` image (red = dead or dormant).

    Layers: activation modules (``nn.ReLU``, ``nn.GELU``, ``nn.SiLU``, ``nn.Hardswish``, ...) by module name and
    functional calls (``F.relu``, ``F.gelu``, ``torch.relu_``, ``x.relu()``, ...) as ``<module>.<kind>`` after the
    module whose ``forward`` makes them; k uses in one forward are k layers (``#2``, ``#3``: a module used twice,
    or any activation inside a container or block called twice or in a loop). An activation computed after the
    model's last conv or linear layer (a ReLU on the logits) is not a hidden layer and is left out unless named in
    ``layers``. Activations of fully connected layers are watched as *units*, and the alert says so. A layer that
    receives nothing in a window in which others did (a branch only eval-mode forwards take) is named once in
    :attr:`silent_now`.

    Alerts (:class:`~lightning_cnnviz.core.DeadFilterAlerts`): when a layer's dead fraction (ReLU family) or
    dormant fraction (other kinds) reaches ``dead_fraction_threshold``, and, with ``alert_on_growth``, whenever
    more of its channels join above it; once when activations turn non-finite (the first layer where they
    appear, the step and the learning rate).

    Args:
        layers: activation names to watch; ``None`` watches every hidden activation.
        dead_fraction_threshold: dead (or dormant) fraction in [0, 1] at which a layer alerts.
        dormant_threshold: a channel whose mean |activation| is at most this fraction of its layer's mean is
            dormant (ReDo's tau).
        alert_on_growth: alert again when the set of dead channels of a layer at or above the threshold grows.
        log_histograms: give each ReLU-family layer's per-channel firing rates as a histogram.
        max_map_windows: the maps show at most this many most recent windows.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.GELU(), nn.Flatten())
        >>> health = ActivationHealth()
        >>> health.discover(net, torch.randn(2, 1, 8, 8))
        >>> with health.watch(net):
        ...     _ = net(torch.randn(4, 1, 8, 8))
        >>> health.step()
        >>> summary = health.close_window()
        >>> sorted(summary.layers), sorted(health.maps().images)
        (['1'], ['cnnviz/activations/dead_map/1', 'cnnviz/activations/distribution/1'])
    """

    def __init__(
        self,
        *,
        layers: Sequence[str] | None = None,
        dead_fraction_threshold: float = 0.1,
        dormant_threshold: float = 0.1,
        alert_on_growth: bool = True,
        log_histograms: bool = True,
        max_map_windows: int = 100,
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        check_names(who, "layers", layers, "activation names")
        fraction = dead_fraction_threshold
        check_number(who, "dead_fraction_threshold", fraction, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
        check_number(who, "dormant_threshold", dormant_threshold, lambda v: v >= 0, "a number >= 0")
        check_positive_int(who, "max_map_windows", max_map_windows)
        self.layers = list(layers) if layers is not None else None
        self.dormant_threshold = float(dormant_threshold)
        self.log_histograms = bool(log_histograms)
        self.max_map_windows = max_map_windows
        self.policy = DeadFilterAlerts(
            float(dead_fraction_threshold), bool(alert_on_growth), self.dormant_threshold, who=who
        )
        self.sites: list[ActivationSite] | None = None
        self.stats: ActivationStats | None = None
        self.tap: ActivationTap | None = None  # the tap follow() opened, until close()
        self.silent: set[str] = set()  # sites found to receive nothing in a window
        self.silent_now: list[str] = []  # those of them found in the last window closed
        self.marks: dict[str, ChannelHealth] = {}  # each layer's dead and dormant channels in the last window
        # history, in state_dict
        self.windows = 0
        self.rate_history: dict[str, list[list[float]]] = {}
        self.distribution_history: dict[str, list[list[float]]] = {}
        self.alerts: list[dict[str, Any]] = []

    def attach(self, model: nn.Module, example: Any = None) -> None:
        """Start afresh on ``model`` (another fit's model): check the ``layers`` names, and find the sites at once
        when an ``example`` input tensor is given (else :meth:`discover` on the first batch)."""
        self.reset_sites()
        if self.layers is not None:
            self.check_names(model)
        if isinstance(example, Tensor):
            self.discover(model, example.to(model_device(model)))

    def reset_sites(self) -> None:
        """Forget the sites (a new model): the next :meth:`discover` finds them afresh."""
        self.sites, self.stats, self.silent = None, None, set()
        self.marks.clear()

    def check_names(self, model: nn.Module) -> None:
        """ValueError, at once and without a forward, for a name in ``layers`` that no activation of ``model``
        can have (a functional site's calls are checked by :meth:`discover`)."""
        modules = named_modules(model)
        found = [n for n, m in modules.items() if isinstance(m, ACTIVATION_MODULE_TYPES)]
        activation_modules = format_names(found) or "none"
        for name in self.layers or []:
            module = modules.get(name.split("#", 1)[0])
            if module is not None and not isinstance(module, ACTIVATION_MODULE_TYPES):
                raise ValueError(
                    f"{self.who} `layers`: {name!r} is a {type(module).__name__}, not an elementwise activation. "
                    f"Activation modules of this model: {activation_modules}; functional calls are named "
                    "'<module>.<kind>' (e.g. 'block1.relu', 'stem.gelu') after the module whose forward makes them."
                )
            if site_scope(model, name) is None:
                raise ValueError(
                    f"{self.who} `layers`: no activation named {name!r}. Activation modules of this model: "
                    f"{activation_modules}; functional calls (F.relu, F.gelu, torch.relu, x.relu(), ...) are named "
                    "'<module>.<kind>' after the module whose forward makes them ('relu' for the model's own "
                    "forward), '#2', '#3' marking further places in one forward."
                )

    def discover(self, model: nn.Module, images: Tensor) -> None:
        """Find the activations of ``model(images[:2])`` and choose the ones to watch."""
        try:
            sites = find_activation_sites(model, images[:2])
        except Exception as error:
            raise RuntimeError(
                f"{self.who}: calling {type(model).__name__} on a batch of images of shape {tuple(images.shape)} "
                f"failed ({type(error).__name__}: {error}). The monitor finds the activations by running the "
                "LightningModule's forward(images) once; define forward, or pass `batch_to_images=` if the images "
                "are not where the monitor looked."
            ) from error
        if not sites:
            raise ValueError(
                f"{self.who}: {type(model).__name__} computes no elementwise activation (ReLU, ReLU6, LeakyReLU, "
                "PReLU, ELU, SELU, CELU, GELU, SiLU, Hardswish, Mish, Hardsigmoid; modules or functional calls) in "
                "its forward; there is nothing to monitor."
            )
        if self.layers is not None:
            by_name = {site.name: site for site in sites}
            unknown = [name for name in self.layers if name not in by_name]
            if unknown:
                raise ValueError(
                    f"{self.who} `layers`: no activation named {unknown[0]!r}. Activations found in the forward pass: "
                    f"{format_names(list(by_name))}."
                )
            sites = [by_name[name] for name in self.layers]
        elif any(not site.on_logits for site in sites):
            sites = [site for site in sites if not site.on_logits]
        self.sites = sites

    def watch(
        self,
        model: nn.Module,
        device: torch.device | str | None = None,
        observe: Callable[[str, Tensor], None] | None = None,
    ) -> ActivationTap:
        """A context manager that counts every forward of ``model`` into this window's statistics (kept on
        ``device``, by default that of the model's parameters); its ``paused()`` block counts nothing. ``observe``
        replaces :meth:`observe` as what the tap calls (a caller that decides which forwards count)."""
        if self.sites is None:
            raise RuntimeError(f"{self.who}: call discover(model, images) before watch(model).")
        if device is None:
            device = model_device(model)
        self.stats = ActivationStats({site.name: site.spec for site in self.sites}, device=device)
        return tap_activations(model, self.sites, observe or self.observe)

    def follow(
        self, model: nn.Module, images: Tensor, *, gate: Callable[[], bool], guard: Guard | None = None
    ) -> ActivationTap:
        """:meth:`watch` for a training loop that also runs other forwards: the sites found on ``images`` when not
        yet found, and a tap, open until :meth:`close` (:attr:`tap`), counting only the forwards in training mode
        for which ``gate()`` holds (not other monitors' eval-mode forwards). An error while counting goes to
        ``guard`` (it switches ``"statistics"`` off, or raises), never silently into the user's forward."""
        guard = guard or Guard(self.who)
        if self.sites is None:
            self.discover(model, images)

        def observe(name: str, output: Tensor) -> None:
            if gate() and model.training:
                guard.run("statistics", self.observe, name, output)

        self.close()
        self.tap = self.watch(model, images.device, observe).__enter__()
        return self.tap

    def count_forwards(self, on: bool) -> None:
        """Count the forwards of the tap :meth:`follow` opened, or not (a backward's recomputed forwards)."""
        if self.tap is not None:
            self.tap.enabled = on

    def close(self) -> None:
        """Remove the hooks of the tap :meth:`follow` opened (safe to call again)."""
        if self.tap is not None:
            self.tap.close()
        self.tap = None

    def observe(self, name: str, output: Tensor) -> None:
        """Add one activation of site ``name`` (the tap calls this)."""
        assert self.stats is not None
        self.stats.update(name, output, distribution=True)

    def step(self) -> None:
        """Count one training step in the window."""
        if self.stats is not None:
            self.stats.step()

    def close_window(self) -> ActivationSummary | None:
        """Summarise the window (every process of a ``torch.distributed`` group must call this at the same point),
        start the next, and add the window to the histories. None when no step or no forward ran in it. Sites that
        received nothing while others did are left out of it; :attr:`silent_now` names those not named before."""
        self.silent_now = []
        if self.stats is None:
            return None
        summary = self.stats.summary()
        self.stats.reset()
        if summary.steps == 0 or all(layer.positions == 0 for layer in summary.layers.values()):
            return None  # no training forward ran these layers in the window (a training_step that skipped it)
        silent = [name for name, layer in summary.layers.items() if layer.positions == 0]
        self.silent_now = [name for name in silent if name not in self.silent]
        self.silent.update(silent)
        layers = {name: layer for name, layer in summary.layers.items() if name not in silent}
        summary = ActivationSummary(layers=layers, steps=summary.steps)
        self.windows += 1
        seen = f"the latest training window ({summary.steps} steps counted)"
        self.marks.clear()  # the same dict, shared with the pictures that frame single channels
        for name, layer in summary.layers.items():
            dead = tuple(layer.dead_channels) if layer.relu else ()
            self.marks[name] = ChannelHealth(dead, tuple(layer.dormant_channels(self.dormant_threshold)), seen)
            if layer.relu:
                rates = layer.firing_rate
            else:  # the map's red cells are the dormant channels
                score = layer.dormant_score()
                rates = torch.where(score <= self.dormant_threshold, 0.0, score / score.max().clamp_min(1e-30))
            self._remember(self.rate_history, name, rates.tolist())
            if layer.distribution is not None:
                self._remember(self.distribution_history, name, layer.distribution.tolist())
        return summary

    def _remember(self, history: dict[str, list[list[float]]], name: str, column: list[float]) -> None:
        columns = history.setdefault(name, [])
        columns.append(column)
        del columns[: -self.max_map_windows]

    def silent_message(self, window: int, global_step: int) -> str:
        """What to say of :attr:`silent_now`: sites that received nothing in a window of ``window`` training
        batches ending at ``global_step`` while the others did."""
        return (
            f"{format_names(self.silent_now)} received no activation in a window of {window} training "
            f"batches (ending at step {global_step}) in which the other activations did: nothing is counted there, "
            "so its dead or dormant channels cannot be seen or alerted on. The training forward skips it (a branch "
            "taken only in eval mode, or a forward other than the one the activations were found in: the monitor "
            "runs forward(images) once); pass `layers=` to watch only the ones that run."
        )

    def scalars(self, summary: ActivationSummary) -> tuple[dict[str, float], dict[str, Tensor]]:
        """The window's scalars and firing-rate histograms, by tag."""
        scalars: dict[str, float] = {}
        histograms: dict[str, Tensor] = {}
        for name, layer in summary.layers.items():
            dormant = len(layer.dormant_channels(self.dormant_threshold))
            scalars[f"cnnviz/activations/dormant/{name}"] = float(dormant)
            scalars[f"cnnviz/activations/dormant_fraction/{name}"] = dormant / max(layer.num_channels, 1)
            scalars[f"cnnviz/activations/nonfinite/{name}"] = float(layer.nonfinite)
            if not layer.relu:
                continue
            scalars[f"cnnviz/activations/sparsity/{name}"] = layer.sparsity
            scalars[f"cnnviz/activations/dead/{name}"] = float(len(layer.dead_channels))
            scalars[f"cnnviz/activations/dead_fraction/{name}"] = layer.dead_fraction
            if self.log_histograms:
                histograms[f"cnnviz/activations/firing_rate/{name}"] = layer.firing_rate
        return scalars, histograms

    def check_alerts(
        self, summary: ActivationSummary, *, global_step: int, epoch: int = 0, learning_rate: float | None = None
    ) -> list[DeadFilterEvent]:
        """The window's alerts (:class:`~lightning_cnnviz.core.DeadFilterAlerts`), also kept in :attr:`alerts`."""
        events = self.policy.check(summary, global_step=global_step, epoch=epoch, learning_rate=learning_rate)
        self.alerts.extend(asdict(event) for event in events)
        return events

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """:meth:`maps` (the protocol's verb: no forward, so ``model`` and ``probe`` are not needed)."""
        return self.maps()

    def maps(self) -> Snapshot:
        """The maps of the windows so far (no forward: ``model`` and ``probe`` are not needed), by tag: channels x
        windows ``dead_map`` (ReLU family) or ``dormant_map`` per layer (red: dead or dormant), and windows x
        value bins ``distribution`` per layer."""
        relu = {site.name: site.relu for site in self.sites or []}
        pictures: dict[str, Tensor] = {}
        for name, history in self.rate_history.items():
            if history:
                rates = torch.tensor(history, dtype=torch.float32).T  # (channels, windows)
                kind = "dead_map" if relu.get(name, True) else "dormant_map"
                marked = "never fired" if kind == "dead_map" else "dormant"
                pictures[f"cnnviz/activations/{kind}/{name}"] = dead_filter_map(rates, marked=marked)
        for name, distributions in self.distribution_history.items():
            if distributions:
                pictures[f"cnnviz/activations/distribution/{name}"] = distribution_map(torch.tensor(distributions))
        return Snapshot(images=pictures)

    def end_window(
        self, moment: Moment, window: int, *, learning_rate: float | None = None, guard: Guard | None = None
    ) -> tuple[Snapshot, list[DeadFilterEvent]]:
        """Close the window of ``window`` training batches ending at ``moment`` (a collective under
        ``torch.distributed``: every process calls it at the same point): its scalars and histograms, and its alerts
        (said through ``guard`` and given as ``cnnviz/alerts`` texts; draw the maps, :meth:`snapshot`, when there
        are any). Sites newly silent are said once."""
        guard = guard or Guard(self.who)
        summary = self.close_window()
        if summary is None or "statistics" in guard.disabled:
            return Snapshot(), []
        if self.silent_now:
            guard.warn(self.silent_message(window, moment.step))
        shot = guard.run("activation scalars", self.window, summary) or Snapshot()
        check = functools.partial(
            self.check_alerts, summary, global_step=moment.step, epoch=moment.epoch, learning_rate=learning_rate
        )
        events = guard.run("dead-filter alerts", check) or []
        for event in events:
            guard.warn(event.message.removeprefix(f"{guard.who}: "))  # the alert names who says it
        if events:
            shot.texts["cnnviz/alerts"] = [event.message for event in events]
        return shot, events

    def window(self, summary: ActivationSummary) -> Snapshot:
        """A closed window's scalars and histograms (:meth:`scalars`)."""
        scalars, histograms = self.scalars(summary)
        return Snapshot(scalars=scalars, histograms=histograms)

    def state_dict(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "rate_history": {k: [list(r) for r in v] for k, v in self.rate_history.items()},
            "distribution_history": {k: [list(r) for r in v] for k, v in self.distribution_history.items()},
            **self.policy.state_dict(),
            "alerts": list(self.alerts),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.windows = int(state_dict.get("windows", 0))
        self.rate_history = {k: [list(r) for r in v] for k, v in state_dict.get("rate_history", {}).items()}
        self.distribution_history = {
            k: [list(r) for r in v] for k, v in state_dict.get("distribution_history", {}).items()
        }
        self.policy.load_state_dict(state_dict)
        self.alerts = list(state_dict.get("alerts", []))
