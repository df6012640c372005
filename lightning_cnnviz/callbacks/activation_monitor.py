"""ActivationMonitor: sparsity, dead and dormant channels, value distributions and divergence, with alerts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_cnnviz.callbacks._base import Monitor, check_positive_int
from lightning_cnnviz.core._images import images_from_batch
from lightning_cnnviz.core._model import format_names, named_modules
from lightning_cnnviz.core.activation_sites import (
    ACTIVATION_MODULE_TYPES,
    ActivationSite,
    find_activation_sites,
    site_scope,
    tap_activations,
)
from lightning_cnnviz.core.alerts import DeadFilterAlerts, DeadFilterEvent
from lightning_cnnviz.core.render import dead_filter_map, distribution_map
from lightning_cnnviz.core.stats import ActivationStats, ActivationSummary

__all__ = ["ActivationMonitor"]

DeadPolicy = Literal["warn", "stop"] | Callable[["DeadFilterEvent"], Any]


class ActivationMonitor(Monitor):
    """Watches every elementwise activation of the live network on training batches; alerts when channels die or
    go dormant and when the network diverges.

    Statistics come from the real training forwards only (no extra pass; the forwards other monitors run in eval
    mode are not counted), accumulate on the model's device with no host sync, and are summed over DDP ranks and
    written once per window of ``every_n_steps`` batches (step: the global step):

    * every activation: ``cnnviz/activations/dormant|dormant_fraction/<layer>`` (a channel is *dormant* when its
      mean |activation| over the window is at most ``dormant_threshold`` of the layer's mean: Sokar et al. 2023),
      ``cnnviz/activations/nonfinite/<layer>`` (channels whose values held NaN or inf), and the image
      ``cnnviz/activations/distribution/<layer>``: windows x value bins, the values of one batch per window
      (fastai's "colorful dimension");
    * the ReLU family also: ``cnnviz/activations/sparsity|dead|dead_fraction/<layer>`` (a channel is *dead* when it
      never fired, > 0, at any position of any input of the window), firing-rate histograms;
    * the channels x windows ``dead_map`` (ReLU family) or ``dormant_map`` image (red = dead or dormant), at epoch
      ends, alerts and the end of training, and ``cnnviz/alerts``.

    Layers are found on the first training batch (or at ``setup`` from ``example_input_array``): activation
    modules (``nn.ReLU``, ``nn.GELU``, ``nn.SiLU``, ``nn.Hardswish``, ...) by module name and functional calls
    (``F.relu``, ``F.gelu``, ``torch.relu_``, ``x.relu()``, ...) as ``<module>.<kind>`` after the module whose
    ``forward`` makes them; k uses in one forward are k layers (``#2``, ``#3``: a module used twice, or any
    activation inside a container or block called twice or in a loop). An activation computed after the model's
    last conv or linear layer (a ReLU on the logits) is not a hidden layer and is left out unless named in
    ``layers``. Activations of fully connected layers are watched as *units*, and the alert says so. A layer
    that receives nothing in a window in which others did (a branch only eval-mode forwards take) is said once.
    Backward passes are not counted (``torch.utils.checkpoint`` runs checkpointed forwards again there).

    Alerts (:class:`~lightning_cnnviz.core.DeadFilterAlerts`): when a layer's dead fraction (ReLU family) or
    dormant fraction (other kinds) reaches ``dead_fraction_threshold``, and, with ``alert_on_growth``, whenever
    more of its channels join above it; once when activations turn non-finite (the first layer where they
    appear, the step and the learning rate). Each is a rank-zero warning and a ``cnnviz/alerts`` entry; then
    ``on_dead``: ``"warn"``, ``"stop"`` (``trainer.should_stop`` on every rank) or a callable taking the
    :class:`DeadFilterEvent` (on rank zero).

    Args:
        every_n_steps: window length in training batches; statistics are summarised and logged at each
            window end, and a last, shorter window is summarised at the end of training.
        layers: activation names to watch; ``None`` watches every hidden activation.
        collect_every_n_steps: collect statistics on every this-many-th training batch only (1 = all).
        dead_fraction_threshold: dead (or dormant) fraction in [0, 1] at which a layer alerts.
        dormant_threshold: a channel whose mean |activation| is at most this fraction of its layer's mean is
            dormant (ReDo's tau).
        alert_on_growth: alert again when the set of dead channels of a layer at or above the threshold
            grows.
        on_dead: ``"warn"``, ``"stop"`` or a callable taking a :class:`DeadFilterEvent`.
        log_histograms: log per-channel firing-rate histograms.
        max_map_windows: the dead map shows at most this many most recent windows.
        batch_to_images: function from a training batch to its image tensor (N, C, H, W); by default the
            batch itself, its first element, or its ``"image"`` key.
        on_error: ``"warn"`` (report once, switch the failing piece off, keep training) or ``"raise"``.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> monitor = ActivationMonitor(every_n_steps=50, on_dead="warn")
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False)
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        layers: Sequence[str] | None = None,
        collect_every_n_steps: int = 1,
        dead_fraction_threshold: float = 0.1,
        dormant_threshold: float = 0.1,
        alert_on_growth: bool = True,
        on_dead: DeadPolicy = "warn",
        log_histograms: bool = True,
        max_map_windows: int = 100,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        on_error: Literal["warn", "raise"] = "warn",
    ) -> None:
        super().__init__(on_error=on_error)
        who = self._who
        self.every_n_steps = check_positive_int(who, "every_n_steps", every_n_steps)
        self.collect_every_n_steps = check_positive_int(who, "collect_every_n_steps", collect_every_n_steps)
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
            raise TypeError(f"{who}: `layers` must be a list of activation names or None, got {layers!r}.")
        self.layers = list(layers) if layers is not None else None
        threshold = dead_fraction_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"{who}: `dead_fraction_threshold` must be a number in [0, 1], got {threshold!r}.")
        self.dead_fraction_threshold = float(dead_fraction_threshold)
        dormant = dormant_threshold
        if isinstance(dormant, bool) or not isinstance(dormant, (int, float)) or dormant < 0:
            raise ValueError(f"{who}: `dormant_threshold` must be a number >= 0, got {dormant_threshold!r}.")
        self.dormant_threshold = float(dormant_threshold)
        self.alert_on_growth = bool(alert_on_growth)
        self.policy = DeadFilterAlerts(self.dead_fraction_threshold, self.alert_on_growth, self.dormant_threshold)
        if not (on_dead in ("warn", "stop") or callable(on_dead)):
            raise ValueError(
                f"{who}: `on_dead` can be 'warn', 'stop' or a callable taking a DeadFilterEvent, got {on_dead!r}."
            )
        self.on_dead = on_dead
        self.log_histograms = bool(log_histograms)
        self.max_map_windows = check_positive_int(who, "max_map_windows", max_map_windows)
        if batch_to_images is not None and not callable(batch_to_images):
            raise TypeError(f"{who}: `batch_to_images` must be a callable or None, got {batch_to_images!r}.")
        self.batch_to_images = batch_to_images

        self.sites: list[ActivationSite] | None = None
        self._module: torch.nn.Module | None = None
        self._stats: ActivationStats | None = None
        self._tap: Any = None
        self._collecting = False
        self._batches_in_window = 0
        self._batch_counter = 0
        # history, kept in state_dict
        self._windows = 0
        self._rate_history: dict[str, list[list[float]]] = {}
        self._distribution_history: dict[str, list[list[float]]] = {}
        self._maps_drawn: tuple[int, int] | None = None  # (global step, windows) of the last maps written
        self._alerts: list[dict[str, Any]] = []
        self._silent: set[str] = set()  # sites already said to have received nothing in a window

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, every_n_steps=self.every_n_steps)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "windows": self._windows,
            "rate_history": {k: [list(r) for r in v] for k, v in self._rate_history.items()},
            "distribution_history": {k: [list(r) for r in v] for k, v in self._distribution_history.items()},
            **self.policy.state_dict(),
            "alerts": list(self._alerts),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._windows = int(state_dict.get("windows", 0))
        self._rate_history = {k: [list(r) for r in v] for k, v in state_dict.get("rate_history", {}).items()}
        self._distribution_history = {
            k: [list(r) for r in v] for k, v in state_dict.get("distribution_history", {}).items()
        }
        self.policy.load_state_dict(state_dict)
        self._alerts = list(state_dict.get("alerts", []))

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Every alert so far (as dicts of :class:`DeadFilterEvent` fields), oldest first."""
        return list(self._alerts)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._check_model(pl_module)
        # a monitor reused for another fit finds the (possibly different) model's activations afresh
        self.sites, self._stats, self._silent = None, None, set()
        if self.layers is not None:
            self._check_names_without_forward(pl_module)
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor) and self.sites is None:
            self._discover(pl_module, example.to(pl_module.device))

    def _check_names_without_forward(self, pl_module: pl.LightningModule) -> None:
        modules = named_modules(pl_module)
        found = [n for n, m in modules.items() if isinstance(m, ACTIVATION_MODULE_TYPES)]
        activation_modules = format_names(found) or "none"
        for name in self.layers or []:
            module = modules.get(name.split("#", 1)[0])
            if module is not None and not isinstance(module, ACTIVATION_MODULE_TYPES):
                raise ValueError(
                    f"ActivationMonitor `layers`: {name!r} is a {type(module).__name__}, not an elementwise "
                    f"activation. Activation modules of this model: {activation_modules}; functional calls are "
                    "named '<module>.<kind>' (e.g. 'block1.relu', 'stem.gelu') after the module whose forward "
                    "makes them."
                )
            if site_scope(pl_module, name) is None:  # a functional site's calls are checked on the first batch
                raise ValueError(
                    f"ActivationMonitor `layers`: no activation named {name!r}. Activation modules of this model: "
                    f"{activation_modules}; functional calls (F.relu, F.gelu, torch.relu, x.relu(), ...) are named "
                    "'<module>.<kind>' after the module whose forward makes them ('relu' for the model's own "
                    "forward), '#2', '#3' marking further places in one forward."
                )

    def _discover(self, pl_module: pl.LightningModule, images: Tensor) -> None:
        try:
            sites = find_activation_sites(pl_module, images[:2])
        except Exception as error:
            raise RuntimeError(
                f"ActivationMonitor: calling {type(pl_module).__name__} on a batch of images of shape "
                f"{tuple(images.shape)} failed ({type(error).__name__}: {error}). The monitor finds the "
                "activations by running the LightningModule's forward(images) once; define forward, or pass "
                "`batch_to_images=` if the images are not where the monitor looked."
            ) from error
        if not sites:
            raise ValueError(
                f"ActivationMonitor: {type(pl_module).__name__} computes no elementwise activation (ReLU, ReLU6, "
                "LeakyReLU, PReLU, ELU, SELU, CELU, GELU, SiLU, Hardswish, Mish, Hardsigmoid; modules or "
                "functional calls) in its forward; there is nothing to monitor."
            )
        if self.layers is not None:
            by_name = {site.name: site for site in sites}
            unknown = [name for name in self.layers if name not in by_name]
            if unknown:
                raise ValueError(
                    f"ActivationMonitor `layers`: no activation named {unknown[0]!r}. Activations found in "
                    f"the forward pass: {format_names(list(by_name))}."
                )
            sites = [by_name[name] for name in self.layers]
        elif any(not site.on_logits for site in sites):
            sites = [site for site in sites if not site.on_logits]
        self.sites = sites

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sink_for(trainer)
        self._batches_in_window = 0
        self._batch_counter = 0

    def _start(self, pl_module: pl.LightningModule, batch: Any) -> None:
        images = images_from_batch(batch, who=self._who, batch_to_images=self.batch_to_images)
        if self.sites is None:
            self._discover(pl_module, images)
        assert self.sites is not None
        self._stats = ActivationStats({site.name: site.spec for site in self.sites}, device=images.device)
        self._module = pl_module
        self._tap = tap_activations(pl_module, self.sites, self._on_activation)
        self._tap.__enter__()

    def _on_activation(self, name: str, output: Tensor) -> None:
        # Runs inside the user's forward: an error here must not reach their training step.
        if not self._collecting or self._module is None or not self._module.training:
            return  # only training forwards count: other monitors' probe forwards run in eval mode
        try:
            self._stats.update(name, output, distribution=True)  # type: ignore[union-attr]
        except Exception:
            self._collecting = False
            self._run("statistics", _reraise)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._tap is None:
            self._start(pl_module, batch)
        self._collecting = "statistics" not in self._disabled and (
            self._batch_counter % self.collect_every_n_steps == 0
        )

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self._tap is not None:  # a checkpointed block recomputes its activations in backward: not a forward
            self._tap.enabled = False

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._tap is not None:
            self._tap.enabled = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._collecting and self._stats is not None:
            self._stats.step()
        self._collecting = False
        self._batch_counter += 1
        self._batches_in_window += 1
        if self._batches_in_window >= self.every_n_steps:
            self._end_window(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batches_in_window > 0 and _last_epoch(trainer):
            return  # the fit ends here: on_train_end closes the short window and draws the maps once, at this step
        self._run("dead map", self._log_dead_maps, trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batches_in_window > 0:
            self._end_window(trainer)
            self._run("dead map", self._log_dead_maps, trainer)
        self._cleanup()

    @override
    def _cleanup(self) -> None:
        if self._tap is not None:
            self._tap.close()
        self._tap = None
        self._collecting = False

    def _end_window(self, trainer: pl.Trainer) -> None:
        self._batches_in_window = 0
        stats = self._stats
        if stats is None:
            return
        # Every rank reaches this collective, also one whose statistics were switched off after an error
        # (it contributes what it has): windows are counted in training batches on every rank alike.
        summary = stats.summary()
        stats.reset()
        if summary.steps == 0 or "statistics" in self._disabled:
            return
        if all(layer.positions == 0 for layer in summary.layers.values()):
            return  # no training forward ran these layers in the window (a training_step that skipped it)
        silent = [name for name, layer in summary.layers.items() if layer.positions == 0]
        summary = ActivationSummary({n: layer for n, layer in summary.layers.items() if n not in silent}, summary.steps)
        self._say_silent(silent, trainer)
        self._windows += 1
        for name, layer in summary.layers.items():
            if layer.relu:
                rates = layer.firing_rate
            else:  # the map's red cells are the dormant channels
                score = layer.dormant_score()
                rates = torch.where(score <= self.dormant_threshold, 0.0, score / score.max().clamp_min(1e-30))
            history = self._rate_history.setdefault(name, [])
            history.append(rates.tolist())
            del history[: -self.max_map_windows]
            if layer.distribution is not None:
                distributions = self._distribution_history.setdefault(name, [])
                distributions.append(layer.distribution.tolist())
                del distributions[: -self.max_map_windows]
        self._run("activation scalars", self._log_window, trainer, summary)
        events = (
            self._run(
                "dead-filter alerts",
                lambda: self.policy.check(
                    summary,
                    global_step=trainer.global_step,
                    epoch=trainer.current_epoch,
                    learning_rate=_learning_rate(trainer),
                ),
            )
            or []
        )
        if events:
            self._run("dead map", self._log_dead_maps, trainer)
            self._act_on(trainer, events)

    def _say_silent(self, silent: list[str], trainer: pl.Trainer) -> None:
        """Once per site: it received nothing in a window in which other sites did (no statistics, no alert)."""
        unsaid = [name for name in silent if name not in self._silent]
        if not unsaid:
            return
        self._silent.update(unsaid)
        rank_zero_warn(
            f"ActivationMonitor: {format_names(unsaid)} received no activation in a window of {self.every_n_steps} "
            f"training batches (ending at step {trainer.global_step}) in which the other activations did: nothing "
            "is counted there, so its dead or dormant channels cannot be seen or alerted on. The training forward "
            "skips it (a branch taken only in eval mode, or a forward other than the one the activations were "
            "found in: the monitor runs forward(images) once); pass `layers=` to watch only the ones that run."
        )

    def _log_window(self, trainer: pl.Trainer, summary: ActivationSummary) -> None:
        sink = self._sink_for(trainer)
        if not sink.active:
            return
        step = trainer.global_step
        scalars: dict[str, float] = {}
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
                sink.histogram(f"cnnviz/activations/firing_rate/{name}", layer.firing_rate, step)
        sink.scalars(scalars, step)

    def _log_dead_maps(self, trainer: pl.Trainer) -> None:
        sink = self._sink_for(trainer)
        drawn = (trainer.global_step, self._windows)
        if not sink.active or drawn == self._maps_drawn:
            return  # one write per tag and step: an alert at an epoch's last window already drew these maps
        self._maps_drawn = drawn
        relu = {site.name: site.relu for site in self.sites or []}
        for name, history in self._rate_history.items():
            if history:
                rates = torch.tensor(history, dtype=torch.float32).T  # (channels, windows)
                kind = "dead_map" if relu.get(name, True) else "dormant_map"
                sink.image(f"cnnviz/activations/{kind}/{name}", dead_filter_map(rates), trainer.global_step)
        for name, distributions in self._distribution_history.items():
            if distributions:
                picture = distribution_map(torch.tensor(distributions))
                sink.image(f"cnnviz/activations/distribution/{name}", picture, trainer.global_step)

    def _act_on(self, trainer: pl.Trainer, events: list[DeadFilterEvent]) -> None:
        sink = self._sink_for(trainer)
        for event in events:
            self._alerts.append(asdict(event))
            rank_zero_warn(event.message)
            sink.text("cnnviz/alerts", event.message, trainer.global_step)
            if callable(self.on_dead) and trainer.is_global_zero:
                self.on_dead(event)
        sink.flush()
        if self.on_dead == "stop":
            trainer.should_stop = True


def _reraise() -> None:
    """Re-raise the exception being handled, inside ``_run`` so the ``on_error`` policy applies to it."""
    raise


def _learning_rate(trainer: pl.Trainer) -> float | None:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError, TypeError):
        return None


def _last_epoch(trainer: pl.Trainer) -> bool:
    """Whether the fit stops after the epoch now ending (max_epochs, max_steps or a stop request)."""
    steps_done = trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step
    epochs_done = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
    return bool(trainer.should_stop or steps_done or epochs_done)
