"""The ``cnnviz`` command: train the demo with every monitor, report on a checkpoint, start TensorBoard.

    cnnviz demo [--data digits|fashion-mnist|cifar10] [--root PATH] [--download] [--epochs N] [--logdir runs]
                [--open] [...]
    cnnviz report CHECKPOINT [--config CONFIG] [--out DIR] [--batches N] [--trust-checkpoint]
    cnnviz report CHECKPOINT --model pkg.Module --data pkg.DataModule [--model-args JSON] [--data-args JSON] [...]
    cnnviz tensorboard DIR [--port 6006] [--host localhost]     (keeps up to 1,000 steps of every image tag)

``demo`` runs LightningCLI on the demo config of the chosen data (``lightning_cnnviz/demo/configs``; further
``--trainer.*``/``--model.*``/``--data.*`` arguments pass through), saves a checkpoint and the config beside the
event files, and prints the TensorBoard and report commands, which work as printed (the full path of this
environment's ``cnnviz``); ``--open`` starts TensorBoard. Digits need no file. Fashion-MNIST and CIFAR-10 are read
from ``--root`` (an IDX folder; an ImageFolder folder or zip), else found in ``$CNNVIZ_DATA`` or (Fashion-MNIST)
Debian's ``dataset-fashion-mnist`` package; ``--download`` lets torchvision download them. ``demo`` and ``report``
need the ``[demo]`` extra (scikit-learn, jsonargparse) and say so when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["demo_config", "lightning_cli", "main", "tensorboard_arguments", "tensorboard_command"]

_DATA = {"digits": "digits", "fashion-mnist": "fashion_mnist", "cifar10": "cifar10"}
#: Lightning's own deprecation noise, raised from Lightning's code while our commands run (not from our calls).
_LIGHTNING_NOISE = r".*isinstance\(treespec, LeafSpec\)` is deprecated"


def demo_config(data: str = "digits") -> Path:
    """The packaged LightningCLI config of the demo on ``data`` (``digits``, ``fashion-mnist`` or ``cifar10``)."""
    return Path(__file__).parent / "demo" / "configs" / f"{_DATA[data]}.yaml"


def _beside_python(program: str) -> str | None:
    """The full path of ``program`` when it is installed beside this Python (its folder need not be on the PATH)."""
    beside = Path(sys.executable).parent / program
    return str(beside) if beside.is_file() else None


def _program() -> list[str]:
    """This environment's ``cnnviz``, by full path when it is installed beside this Python."""
    beside = _beside_python("cnnviz")
    return [beside] if beside else [sys.executable, "-m", "lightning_cnnviz.cli"]


def tensorboard_command(logdir: Path) -> list[str]:
    """``cnnviz tensorboard DIR``, with the full paths, so that it works as pasted from any folder."""
    return [*_program(), "tensorboard", str(logdir.resolve())]


def lightning_cli(args: Sequence[str] | None = None) -> None:
    """LightningCLI for any model and data module given by ``class_path`` in the config (``fit``, ``validate``,
    ...); after ``fit`` it prints the commands that open TensorBoard on the run and report on its checkpoint."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    class CnnvizCLI(LightningCLI):
        def after_fit(self) -> None:
            trainer: pl.Trainer = self.trainer
            logger = trainer.logger
            if not trainer.is_global_zero or logger is None or not logger.log_dir:
                return
            lines = [shlex.join(tensorboard_command(Path(logger.save_dir or logger.log_dir)))]
            saver = trainer.checkpoint_callback
            last = getattr(saver, "last_model_path", "") or getattr(saver, "best_model_path", "")
            if last:
                lines.append(shlex.join([*_program(), "report", str(Path(last).resolve())]))
            commands = "\n\n    ".join(lines)
            print(
                f"\nTraining done. See what the network learned (TensorBoard; a one-file HTML report):\n\n"
                f"    {commands}\n"
            )

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LIGHTNING_NOISE)
        CnnvizCLI(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=None if args is None else list(args),
        )


#: What ``cnnviz demo`` and ``cnnviz report`` import beyond the package's own dependencies: the ``[demo]`` extra.
_DEMO_EXTRA = {"jsonargparse": "jsonargparse[signatures]", "sklearn": "scikit-learn"}
_TORCHVISION_NAMES = {"fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def missing_extra(command: str) -> str | None:
    """What to install when the ``[demo]`` extra that ``cnnviz <command>`` needs is missing, else None."""
    missing = [package for module, package in _DEMO_EXTRA.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    return (
        f"cnnviz {command} needs the [demo] extra, which is not installed here (missing: {', '.join(missing)}). "
        "Install it with: pip install 'lightning_cnnviz[demo]' (from a clone: pip install '.[demo]')."
    )


def _demo_root(data: str, root: str | None, download: bool) -> tuple[list[str], str | None]:
    """The LightningCLI arguments that point the demo's data module at its data, or what to tell the user."""
    if data == "digits":
        return [], None
    if download:  # torchvision's dataset class downloads into root where a network exists
        target = root or "data"
        return [
            "--data", "lightning_cnnviz.demo.data.TorchvisionDataModule",
            "--data.init_args.name", _TORCHVISION_NAMES[data], "--data.init_args.root", target,
        ], None  # fmt: skip
    if root is None:
        from lightning_cnnviz.demo.data import find_data, how_to_get

        found = find_data(data)
        if found is None:
            accepts = "an IDX folder" if data == "fashion-mnist" else "an ImageFolder folder or zip"
            return [], (
                f"cnnviz demo: {how_to_get(data)} Or pass --root ({accepts}), or --download to let torchvision "
                "download it where a network exists."
            )
        print(f"cnnviz demo: {data} from {found}", file=sys.stderr)
        root = str(found)
    return ["--data.init_args.root", root], None


def demo(
    data: str, root: str | None, epochs: int | None, logdir: str | None, extra: list[str], download: bool = False
) -> int:
    args, problem = _demo_root(data, root, download)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    args = ["fit", "--config", str(demo_config(data)), *args]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    if logdir is not None:
        args += ["--trainer.logger.init_args.save_dir", logdir]
    lightning_cli([*args, *extra])
    return 0


def report(args: argparse.Namespace) -> int:
    import json

    from lightning_cnnviz.report import run_report

    try:
        if (args.model is None) != (args.data is None):
            raise ValueError("cnnviz report: --model and --data go together (the run's classes, as pkg.Module).")
        extra: dict[str, Any] = {}
        for name in ("model_args", "data_args"):
            text = getattr(args, name)
            extra[name] = None if text is None else json.loads(text)
            if extra[name] is not None and not isinstance(extra[name], dict):
                raise ValueError(f"cnnviz report: --{name.replace('_', '-')} is a JSON object, got {text!r}.")
        path = run_report(
            args.checkpoint, args.config, args.out, batches=args.batches, model=args.model, datamodule=args.data,
            trust_checkpoint=args.trust_checkpoint, **extra,
        )  # fmt: skip
    except json.JSONDecodeError as error:
        print(f"cnnviz report: --model-args and --data-args are JSON objects ({error}).", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError) as error:  # what was wrong with the input, said
        print(error, file=sys.stderr)
        return 2
    size = path.stat().st_size / 2**20
    print(
        f"\nReport written: {path.resolve()} ({size:.1f} MB, self-contained). TensorBoard event files beside "
        f"it:\n\n    {shlex.join(tensorboard_command(path.parent))}\n"
    )
    return 0


#: TensorBoard keeps this many steps of every image (and text) tag instead of 10 sampled ones: every logged epoch
#: of a long run stays on the slider.
SAMPLES_PER_PLUGIN = "images=1000,text=1000"


def tensorboard_arguments(logdir: str, port: int, host: str) -> list[str]:
    """What ``cnnviz tensorboard`` passes to TensorBoard."""
    return ["--logdir", logdir, "--port", str(port), "--host", host, "--samples_per_plugin", SAMPLES_PER_PLUGIN]


def tensorboard(logdir: str, port: int, host: str) -> int:
    """Become the TensorBoard installed beside this Python (found even when its folder is not on the PATH), keeping
    up to 1,000 steps of every image tag."""
    program = _beside_python("tensorboard") or shutil.which("tensorboard")
    command = [program] if program else [sys.executable, "-m", "tensorboard.main"]
    print(
        f"cnnviz: the health chart (dead and dormant fractions of every layer) is on the first page of "
        f"http://{host}:{port}/#custom_scalars ; the pictures on http://{host}:{port}/#images",
        flush=True,
    )
    os.execv(command[0], [*command, *tensorboard_arguments(logdir, port, host)])
    return 0  # not reached: TensorBoard replaced this process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnviz", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "demo", help="train the demo CNN with every monitor", epilog="Other arguments go to LightningCLI fit."
    )
    run.add_argument("--data", choices=list(_DATA), default="digits")
    run.add_argument(
        "--root",
        help="the data's folder or zip: an IDX folder (Fashion-MNIST, MNIST), an ImageFolder folder or zip with "
        "train/<class>/ and test/<class>/ (CIFAR-10); default: found in $CNNVIZ_DATA or, for Fashion-MNIST, "
        "Debian's dataset-fashion-mnist package",
    )
    run.add_argument(
        "--download", action="store_true", help="download the data with torchvision into --root (default: data)"
    )
    run.add_argument("--epochs", type=int, help="training epochs (default: the config's)")
    run.add_argument("--logdir", help="where the runs go (default: runs)")
    run.add_argument("--open", action="store_true", help="start TensorBoard when training is done")
    made = commands.add_parser("report", help="run every monitor once on a checkpoint: event files and one HTML file")
    made.add_argument("checkpoint", help="a Lightning .ckpt of the run")
    made.add_argument("--config", help="the run's LightningCLI config (default: config.yaml beside checkpoints/)")
    made.add_argument("--model", help="for a run without a config: the LightningModule's class path (pkg.Module)")
    made.add_argument("--data", help="for a run without a config: the LightningDataModule's class path")
    made.add_argument("--model-args", help="JSON object of model arguments over the checkpoint's hyper_parameters")
    made.add_argument("--data-args", help="JSON object of data module arguments over the checkpoint's")
    made.add_argument(
        "--trust-checkpoint", action="store_true",
        help="load a checkpoint that needs pickle (it can run code): only for checkpoints you made yourself",
    )  # fmt: skip
    made.add_argument("--out", default="cnnviz_report", help="output folder (default: cnnviz_report)")
    made.add_argument("--batches", type=int, help="batches for the activation statistics (default: one window)")
    board = commands.add_parser("tensorboard", help="start the TensorBoard that came with the package")
    board.add_argument("logdir")
    board.add_argument("--port", type=int, default=6006)
    board.add_argument("--host", default="localhost")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("demo", "report"):
        problem = missing_extra(args.command)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
    if args.command == "demo":
        status = demo(args.data, args.root, args.epochs, args.logdir, extra, args.download)
        if status == 0 and args.open:
            return tensorboard(args.logdir or "runs", 6006, "localhost")
        return status
    if args.command == "report":
        return report(args)
    return tensorboard(args.logdir, args.port, args.host)


if __name__ == "__main__":
    sys.exit(main())
