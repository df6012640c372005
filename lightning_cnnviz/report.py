"""What the monitors see in a finished run, outside TensorBoard: ``cnnviz report``.

:func:`run_report` builds the model, data and monitors from the LightningCLI config of a run (or takes them, or
their class paths, for a run made with a plain Trainer), loads the checkpoint safely (``weights_only=True``) with
its weights and the monitors' saved states, runs a few batches through the network in a plain no-grad
loop, draws every monitor's snapshot (no Trainer runs), and writes TensorBoard event files and one
self-contained HTML file. :func:`render_report` turns any folder of event files into that HTML: every image
tag's latest picture embedded, every scalar as a small plot, the alerts, and the run's hyperparameters; no
script, no external file.
"""

from __future__ import annotations

import base64
import datetime
import functools
import glob
import html
import itertools
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_cnnviz.core import Moment, ProbeService, Ranks, StepPicture, inputs_from_batch

__all__ = ["RunEvents", "load_checkpoint", "monitors_of", "read_events", "render_report", "run_report"]

#: Sections of the report, in order: (title, tag prefixes).
_SECTIONS = (
    ("Filters", ("cnnviz/filters/",)),
    ("Activations: dead and dormant channels, distributions", ("cnnviz/activations/",)),
    ("Activation maps of single images", ("cnnviz/activation_maps/", "cnnviz/activation_maps_evolution/")),
    ("Saliency", ("cnnviz/saliency/",)),
    ("Top-9 patches and their projections (Zeiler & Fergus)", ("cnnviz/top_patches/", "cnnviz/evolution/")),
    ("Feature visualization", ("cnnviz/feature_vis", "cnnviz/feature_vis_patches/", "cnnviz/deep_dream")),
    ("Class models (Simonyan et al.)", ("cnnviz/class_models",)),
    ("Feature inversion (Mahendran and Vedaldi)", ("cnnviz/inversion",)),
    ("Embedding of the network's codes", ("cnnviz/embedding/",)),
    ("Activation atlas (Carter et al.)", ("cnnviz/activation_atlas/",)),
    ("Occlusion (Zeiler & Fergus)", ("cnnviz/occlusion/",)),
    ("Invariance to translation, scaling and rotation (Zeiler & Fergus)", ("cnnviz/invariance/",)),
)


@dataclass
class RunEvents:
    """Everything TensorBoard's own reader finds under a folder: per tag, the events of every run inside it.

    ``images``, ``scalars`` and ``histograms`` hold TensorBoard's event tuples (``.step``, ``.wall_time`` and
    ``.encoded_image_string``, ``.value``, ...), oldest step first; ``text`` the strings written with ``add_text``.
    """

    images: dict[str, list[Any]] = field(default_factory=dict)
    scalars: dict[str, list[Any]] = field(default_factory=dict)
    histograms: dict[str, list[Any]] = field(default_factory=dict)
    text: dict[str, list[str]] = field(default_factory=dict)
    event_files: list[str] = field(default_factory=list)


def read_events(logdir: str | os.PathLike[str], pictures: bool = True) -> RunEvents:
    """Read every event file under ``logdir`` (recursively), as TensorBoard would, nothing sampled away; with
    ``pictures=False`` the images and histograms are skipped (not held in memory) and left empty."""
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS,
        IMAGES,
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    found = RunEvents()
    found.event_files = sorted(glob.glob(os.path.join(str(logdir), "**", "events.out.tfevents.*"), recursive=True))
    for directory in sorted({os.path.dirname(f) for f in found.event_files}):
        kept = 0 if pictures else 1  # 0: every event; 1: a reservoir of one, dropped below
        acc = EventAccumulator(directory, size_guidance={IMAGES: kept, SCALARS: 0, HISTOGRAMS: kept, TENSORS: 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in tags.get("images", []) if pictures else ():
            found.images.setdefault(tag, []).extend(acc.Images(tag))
        for tag in tags.get("scalars", []):
            found.scalars.setdefault(tag, []).extend(acc.Scalars(tag))
        for tag in tags.get("histograms", []) if pictures else ():
            found.histograms.setdefault(tag, []).extend(acc.Histograms(tag))
        for tag in tags.get("tensors", []):
            if tag.endswith("text_summary"):
                texts = [
                    t.tensor_proto.string_val[0].decode() if t.tensor_proto.string_val else "" for t in acc.Tensors(tag)
                ]
                found.text.setdefault(tag.rsplit("/text_summary", 1)[0], []).extend(texts)
    for events in [*found.images.values(), *found.scalars.values(), *found.histograms.values()]:
        events.sort(key=lambda e: (e.step, e.wall_time))
    return found


def run_report(
    checkpoint: str | os.PathLike[str],
    config: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "cnnviz_report",
    batches: int | None = None,
    accelerator: str = "auto",
    *,
    model: pl.LightningModule | str | None = None,
    datamodule: pl.LightningDataModule | str | None = None,
    monitors: Sequence[Any] | None = None,
    model_args: dict[str, Any] | None = None,
    data_args: dict[str, Any] | None = None,
    trust_checkpoint: bool = False,
) -> Path:
    """Run every monitor of a run once on its checkpoint, without training, and write the report.

    The model, data and monitors come from the run's LightningCLI ``config``, or, for a run made with a plain
    Trainer, from ``model`` and ``datamodule`` (the objects, or their class paths: a class is built from the
    checkpoint's ``hyper_parameters`` / ``datamodule_hyper_parameters``, overridden by ``model_args`` /
    ``data_args``) and ``monitors`` (default: those whose state the checkpoint holds, with the settings their state
    keys name, else all nine). The checkpoint gives the weights and the monitors' saved states (histories, probe
    sets, alerts). ``batches`` training batches then run through the network in a plain ``torch.no_grad()`` loop in
    eval mode (the activation statistics: one more window), and every monitor's core object draws its
    :class:`~lightning_cnnviz.core.Snapshot` at the checkpoint's epoch and step. No Trainer runs.

    The checkpoint is loaded with ``torch.load(..., weights_only=True)``: tensors and plain values only, so a file
    from someone else cannot run code here. One that needs pickle is refused, saying why; ``trust_checkpoint=True``
    loads it anyway, for checkpoints you made yourself.

    Args:
        checkpoint: a Lightning checkpoint (``.ckpt``) of the run.
        config: the run's LightningCLI config (``model``, ``data`` and the monitors in ``trainer.callbacks``); by
            default the ``config.yaml`` LightningCLI saved beside the run's ``checkpoints/`` folder. Not read when
            ``model`` is given.
        out: folder for the event files and ``report.html``.
        batches: training batches run through the network for the activation statistics (default: one
            ActivationMonitor window).
        accelerator: ``"auto"`` (a GPU when there is one), ``"cpu"``, ``"gpu"`` or ``"cuda"``.

    Returns:
        The path of ``report.html``. The checkpoint file is only read; the user's training step never runs.
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from lightning_cnnviz.callbacks import ActivationMonitor
    from lightning_cnnviz.sinks import Sinks, TensorBoardSink

    path = _checked_checkpoint(checkpoint)
    config_path = None if model is not None else _config_beside(path, config)
    net: Any
    data: Any
    chosen: list[Any] = []
    if config_path is not None:
        net, data, chosen, _ = _from_config(config_path)
        if not chosen:
            raise ValueError(
                f"cnnviz report: {str(config_path)!r} configures no lightning_cnnviz monitor in `trainer.callbacks`; "
                "the report runs the monitors of the run's config. Add them there (see the demo configs)."
            )
    state = load_checkpoint(path, trust=trust_checkpoint)
    if config_path is None:
        net = _built(model, state.get("hyper_parameters", {}), model_args, "model")
        if datamodule is None:
            raise ValueError(
                "cnnviz report: a model without data: pass the run's data module (datamodule=, or --data "
                "pkg.DataModule); the probe images and the activation statistics come from its batches."
            )
        data = _built(datamodule, state.get("datamodule_hyper_parameters", {}), data_args, "data")
        chosen = list(monitors) if monitors is not None else monitors_of(state)
    out = _emptied(Path(out))
    use_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    net.load_state_dict(state["state_dict"])
    net.to(device).eval()
    moment = Moment(int(state.get("epoch", 0)), int(state.get("global_step", 0)))
    saved = state.get("callbacks", {})
    for monitor in chosen:
        monitor.load_state_dict(saved.get(monitor.state_key, {}))
    data.setup("fit")
    watching = [m for m in chosen if isinstance(m, ActivationMonitor)]
    batches = batches or (watching[0].every_n_steps if watching else 10)
    writer = SummaryWriter(str(out))
    sink = Sinks([TensorBoardSink(writer)])
    _activation_window(net, data, watching, batches, moment, sink, device)
    costs = _draw_every_monitor(net, data, chosen, moment, sink, device)
    writer.close()
    alerts = [str(a.get("message", a)) for m in watching for a in m.alerts]
    run_dir = path.parent.parent
    # the training run's scalars and alert texts only: its pictures are not needed and may be many
    history = read_events(run_dir, pictures=False) if glob.glob(str(run_dir / "events.out.tfevents.*")) else None
    hyperparameters = {**state.get("hyper_parameters", {}), **state.get("datamodule_hyper_parameters", {})}
    source = (
        {"config": str(config_path.resolve())}
        if config_path is not None
        else {"model": _class_path(net), "data": _class_path(data)}
    )
    page = render_report(
        read_events(out),
        title=f"cnnviz report: {run_dir.parent.name}/{run_dir.name}" if history else f"cnnviz report: {path.stem}",
        about={
            "checkpoint": str(path.resolve()),
            **source,
            "epoch": str(state.get("epoch", "?")),
            "global step": str(state.get("global_step", "?")),
            "monitors": ", ".join(type(m).__name__ for m in chosen),
            "written": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        hyperparameters=hyperparameters,
        alerts=alerts,
        history=history,
        config_text=config_path.read_text() if config_path is not None else None,
        costs=costs,
    )
    page_path = out / "report.html"
    page_path.write_text(page, encoding="utf-8")
    return page_path


def load_checkpoint(path: str | os.PathLike[str], trust: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint, loaded with ``weights_only=True`` (tensors and plain values: nothing in the file can
    run code); one that needs pickle is refused with a ``ValueError`` saying why, unless ``trust`` (checkpoints
    you made yourself)."""
    import pickle

    import torch

    try:
        return dict(torch.load(path, map_location="cpu", weights_only=not trust))
    except (EOFError, RuntimeError) as error:
        raise ValueError(f"cnnviz report: {str(path)!r} is not a readable checkpoint ({error or 'empty'}).") from None
    except pickle.UnpicklingError as error:
        found = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "global" in line]
        raise ValueError(
            f"cnnviz report: {str(path)!r} holds Python objects that only pickle can rebuild "
            f"({found[0] if found else 'not tensors or plain values'}), and unpickling can run any code, so it was "
            "not loaded. If you made this checkpoint yourself, pass --trust-checkpoint (run_report(..., "
            "trust_checkpoint=True)) to load it with pickle."
        ) from None


#: The monitors a report rebuilds from a checkpoint's state keys (``Name{'field': value, ...}``).
_MONITORS = ("FilterMonitor", "ActivationMonitor", "ActivationMapMonitor", "SaliencyMonitor", "TopPatchMonitor",
             "EmbeddingMonitor", "FeatureVisMonitor", "ClassModelMonitor", "InversionMonitor",
             "ActivationAtlasMonitor", "OcclusionMonitor", "InvarianceMonitor")  # fmt: skip


def monitors_of(state: dict[str, Any]) -> list[Any]:
    """The monitors whose state ``state`` (a checkpoint) holds, built with the settings their state keys name (the
    others at their defaults); all twelve at their defaults when it holds none."""
    import ast
    import inspect

    import lightning_cnnviz

    made = []
    for key in state.get("callbacks", {}):
        name, _, fields = key.partition("{")
        if name not in _MONITORS:
            continue
        kind = getattr(lightning_cnnviz, name)
        try:
            options = ast.literal_eval("{" + fields)
        except (ValueError, SyntaxError):
            options = {}
        accepted = inspect.signature(kind).parameters
        made.append(kind(**{k: v for k, v in dict(options).items() if k in accepted}))
    return made or [getattr(lightning_cnnviz, name)() for name in _MONITORS]


def _built(thing: Any, saved: dict[str, Any], overrides: dict[str, Any] | None, what: str) -> Any:
    """``thing``, or the class at the class path ``thing`` built from the checkpoint's ``saved`` arguments (those
    its ``__init__`` takes; LightningCLI's own ``_`` keys dropped) overridden by ``overrides``."""
    import importlib
    import inspect

    if not isinstance(thing, str):
        if overrides:
            raise ValueError(f"cnnviz report: {what}_args are for a class path; {what} is already built.")
        return thing
    module_name, _, class_name = thing.rpartition(".")
    try:
        kind = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"cnnviz report: --{what} {thing!r} is not an importable class ({error}); pass its class path, such as "
            f"mypackage.models.MyModule, importable from here."
        ) from None
    parameters = inspect.signature(kind).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    arguments = {k: v for k, v in saved.items() if not k.startswith("_") and (takes_any or k in parameters)}
    return kind(**{**arguments, **(overrides or {})})


def _class_path(thing: Any) -> str:
    return f"{type(thing).__module__}.{type(thing).__qualname__}"


def _activation_window(
    model: Any, datamodule: Any, watching: list[Any], batches: int, moment: Moment, sink: Any, device: Any
) -> None:
    """ActivationMonitor's statistics over ``batches`` training batches of the frozen network: one window on the
    restored histories, closed and written by the monitor's own :meth:`write_window` (its alerts said and written).
    """
    import torch

    for monitor in watching:
        health = monitor.health
        unpack = functools.partial(inputs_from_batch, who="cnnviz report", batch_to_inputs=monitor.batch_to_images)
        health.attach(model, getattr(model, "example_input_array", None))
        loader = iter(datamodule.train_dataloader())
        first = next(loader)
        if health.sites is None:
            health.discover(model, unpack(first).to(device))
        count = 0
        with health.watch(model, device), torch.no_grad():
            for batch in itertools.islice(itertools.chain([first], loader), batches):
                model(unpack(batch).to(device))
                health.step()
                count += 1
        monitor.write_window(moment, count, sink)


def _draw_every_monitor(
    model: Any, datamodule: Any, monitors: list[Any], moment: Moment, sink: Any, device: Any
) -> dict[str, float]:
    """Every monitor's picture at the checkpoint's moment, in one loop: each epoch monitor on its probe (restored
    from the checkpoint, else chosen from the validation batches in one pass for all, as in training), a picture
    that watches training steps (the activation maps) at the step, the others at the epoch. Returns each one's
    seconds."""
    import torch

    from lightning_cnnviz.callbacks._epoch import EpochMonitor

    service, ranks = ProbeService(), Ranks.single(device)
    for monitor in monitors:
        if isinstance(monitor, EpochMonitor):
            monitor.service = service
            if monitor.probe is not None:
                service.join(monitor.probe)
            monitor.fit_to(model, datamodule)
    if service.wants():
        for batch in datamodule.val_dataloader():
            service.offer(batch)
            if not service.wants():
                break
        service.finish()
    costs = {}
    for monitor in monitors:
        began = time.perf_counter()
        shot = monitor.draw(model, moment, ranks)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        costs[type(monitor).__name__] = time.perf_counter() - began
        if shot is not None:
            sink.write(shot, moment, per_step=isinstance(monitor.core, StepPicture))
    return costs


def render_report(
    events: RunEvents,
    title: str = "cnnviz report",
    about: dict[str, str] | None = None,
    hyperparameters: dict[str, Any] | None = None,
    alerts: list[str] | None = None,
    history: RunEvents | None = None,
    config_text: str | None = None,
    costs: dict[str, float] | None = None,
) -> str:
    """One self-contained HTML page: the latest picture of every image tag in ``events`` (PNG data embedded),
    every scalar as a small SVG plot: the training run's values (``history``, when given) as a line and the
    report's own values as blue dots (without ``history``, the events' values as the line); the alerts (those
    given, else the ``cnnviz/alerts`` text of both), what each monitor cost (``costs``: seconds of the report's
    pictures; the run's ``cnnviz/cost/<monitor>/fraction`` of its training time), the hyperparameters and the
    config."""
    line_of, dots_of = (history, events) if history else (events, RunEvents())
    scalars: dict[str, tuple[list[tuple[int, float]], list[tuple[int, float]]]] = {
        tag: (
            [(e.step, e.value) for e in line_of.scalars.get(tag, [])],
            [(e.step, e.value) for e in dots_of.scalars.get(tag, [])],
        )
        for tag in {*line_of.scalars, *dots_of.scalars}
    }
    if alerts is None:
        alerts = [*(history.text.get("cnnviz/alerts", []) if history else []), *events.text.get("cnnviz/alerts", [])]
    parts = [f"<h1>{_e(title)}</h1>"]
    if about:
        parts.append(_table(about))
    parts.append("<h2>Health</h2>")
    parts.append(
        "<ul class='alerts'>" + "".join(f"<li>{_e(a)}</li>" for a in alerts) + "</ul>"
        if alerts
        else "<p class='ok'>No alert: no layer's dead or dormant fraction reached its threshold, no non-finite "
        "values.</p>"
    )
    health = [t for t in scalars if t.startswith(("cnnviz/activations/dead_fraction/", "cnnviz/activations/dormant"))]
    parts.append(_plots(scalars, sorted(t for t in health if "fraction" in t)))
    if history:
        parts.append("<p class='legend'>Orange: the training run. Blue: the report's batches on the checkpoint.</p>")
    shown: set[str] = set()
    for heading, prefixes in _SECTIONS:
        tags = sorted(t for t in events.images if t.startswith(prefixes))
        shown.update(tags)
        if tags:
            parts.append(f"<h2>{_e(heading)}</h2>")
            parts.extend(_figure(tag, events.images[tag][-1]) for tag in tags)
    others = sorted(set(events.images) - shown)
    if others:
        parts.append("<h2>Other images</h2>")
        parts.extend(_figure(tag, events.images[tag][-1]) for tag in others)
    if scalars:
        parts.append("<h2>Scalars</h2>")
        parts.append(_plots(scalars, sorted(scalars)))
    if costs:
        parts.append("<h2>What the monitors cost</h2>")
        run = history.scalars if history else {}

        def spent(who: str) -> str:
            fraction = run.get(f"cnnviz/cost/{who}/fraction")
            return f"; {100 * fraction[-1].value:.3g}% of the training time in the run" if fraction else ""

        parts.append(_table({who: f"{seconds:.2f} s for these pictures{spent(who)}" for who, seconds in costs.items()}))
    if hyperparameters:
        parts.append("<h2>Hyperparameters</h2>")
        parts.append(_table({k: repr(v) for k, v in hyperparameters.items()}))
    if config_text:
        parts.append(f"<h2>Config</h2><pre>{_e(config_text)}</pre>")
    return _PAGE.format(title=_e(title), body="\n".join(parts))


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table(rows: dict[str, str]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items()) + "</table>"


def _figure(tag: str, event: Any) -> str:
    data = base64.b64encode(event.encoded_image_string).decode("ascii")
    kind = "jpeg" if event.encoded_image_string[:2] == b"\xff\xd8" else "png"
    return (
        f"<figure><img alt='{_e(tag)}' src='data:image/{kind};base64,{data}' width='{event.width}' "
        f"height='{event.height}'><figcaption>{_e(tag)} &middot; step {event.step}</figcaption></figure>"
    )


def _plots(scalars: dict[str, tuple[list[tuple[int, float]], list[tuple[int, float]]]], tags: list[str]) -> str:
    return "<div class='plots'>" + "".join(_plot(tag, *scalars[tag]) for tag in tags) + "</div>"


def _plot(
    tag: str, points: list[tuple[int, float]], marks: list[tuple[int, float]], width: int = 260, height: int = 120
) -> str:
    """A small SVG plot: ``points`` as a line, ``marks`` as blue dots, the value and step ranges written on it."""
    steps = [float(s) for s, _ in points + marks]
    values = [v for _, v in points + marks if v == v and abs(v) != float("inf")]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span, first, last = (high - low) or 1.0, min(steps), max(steps)
    pad = 8

    def x(step: float) -> float:
        return pad + (step - first) / ((last - first) or 1.0) * (width - 2 * pad)

    def y(value: float) -> float:
        return height - 18 - (value - low) / span * (height - 36)

    drawn = [(x(s), y(v)) for s, v in points if v == v and abs(v) != float("inf")]
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in drawn)
    dots = "".join(f"<circle cx='{a:.1f}' cy='{b:.1f}' r='2'/>" for a, b in drawn) if len(drawn) < 40 else ""
    dots += "".join(
        f"<circle class='now' cx='{x(s):.1f}' cy='{y(v):.1f}' r='3.5'/>"
        for s, v in marks
        if v == v and abs(v) != float("inf")
    )
    return (
        f"<figure class='plot'><svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}'><rect width='{width}' height='{height}' class='frame'/>"
        f"<polyline points='{line}'/>{dots}"
        f"<text x='{pad}' y='12'>max {high:.4g}</text><text x='{pad}' y='{height - 4}'>min {low:.4g}</text>"
        f"<text x='{width - pad}' y='{height - 4}' text-anchor='end'>steps {int(first)}&#8211;{int(last)}</text>"
        f"</svg><figcaption>{_e(tag)}</figcaption></figure>"
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1800px; }}
h2 {{ border-bottom: 2px solid #f57c00; padding-bottom: .2em; margin-top: 2em; }}
figure {{ display: inline-block; vertical-align: top; margin: .5em; }}
figure img {{ max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #ddd; }}
figcaption {{ font-size: .8em; color: #555; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: .15em .8em; border-bottom: 1px solid #eee; }}
.alerts li {{ color: #b71c1c; margin: .3em 0; }} .ok {{ color: #1b5e20; }}
.plot svg {{ font-size: 10px; }} .plot .frame {{ fill: #fafafa; stroke: #ddd; }}
.plot polyline {{ fill: none; stroke: #f57c00; stroke-width: 1.5; }} .plot circle {{ fill: #f57c00; }}
.plot circle.now {{ fill: #1565c0; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""


def _emptied(out: Path) -> Path:
    """``out``, without the files of an earlier report there (so the event files hold this report only); a folder
    with event files but no ``report.html`` is someone else's, and is refused."""
    events = list(out.glob("events.out.tfevents.*"))
    if events and not (out / "report.html").is_file():
        raise FileExistsError(
            f"cnnviz report: {str(out)!r} holds TensorBoard event files that are not an earlier report's (no "
            "report.html); pass another --out (the report writes its own event files there)."
        )
    if (out / "report.html").is_file():
        for path in [*events, out / "report.html", out / "projector_config.pbtxt", out / "hparams.yaml"]:
            path.unlink(missing_ok=True)
        for folder in out.glob("[0-9][0-9][0-9][0-9][0-9]"):  # the Projector's files, one folder per epoch
            shutil.rmtree(folder)
    return out


def _checked_checkpoint(checkpoint: str | os.PathLike[str]) -> Path:
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"cnnviz report: no checkpoint file {str(path)!r}; pass a Lightning .ckpt file.")
    return path


def _config_beside(path: Path, config: str | os.PathLike[str] | None) -> Path:
    if config is None:
        beside = path.parent.parent / "config.yaml"
        if not beside.is_file():
            raise FileNotFoundError(
                f"cnnviz report: no --config given and no {str(beside)!r} beside the checkpoint's folder. Pass the "
                "run's LightningCLI config (the YAML with model, data and the monitors in trainer.callbacks), or, "
                "for a run made with a plain Trainer, --model pkg.Module --data pkg.DataModule."
            )
        return beside
    if not Path(config).is_file():
        raise FileNotFoundError(f"cnnviz report: no config file {str(config)!r}.")
    return Path(config)


def _from_config(config: Path) -> tuple[Any, Any, list[Any], dict[str, Any]]:
    """The model, data module, monitors and trainer settings a LightningCLI config describes."""
    import yaml
    from lightning.pytorch.cli import LightningCLI

    from lightning_cnnviz.callbacks._base import Monitor

    settings = yaml.safe_load(config.read_text()) or {}
    # what LightningCLI saved for one subcommand (fit's ckpt_path, ...) is not an argument without one
    settings = {k: v for k, v in settings.items() if k in ("seed_everything", "trainer", "model", "data")}
    settings["trainer"] = {**(settings.get("trainer") or {}), "logger": False}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended to run")
        cli = LightningCLI(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            run=False,
            save_config_callback=None,
            seed_everything_default=0,
            args=settings,
        )
    monitors = [c for c in getattr(cli.trainer, "callbacks", []) if isinstance(c, Monitor)]
    return cli.model, cli.datamodule, monitors, dict(cli.config.get("trainer", {}))
