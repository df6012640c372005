"""The ``cnnviz`` command: train the demo with every monitor, and start the TensorBoard that came with the package.

    cnnviz demo [--data digits|fashion-mnist|cifar10] [--root PATH] [--epochs N] [--logdir runs] [--open]
    cnnviz tensorboard DIR [--port 6006] [--host localhost]

``demo`` prints a TensorBoard command that works as printed (the full path of this environment's ``cnnviz``), or
starts it with ``--open``. Fashion-MNIST and CIFAR-10 are read from ``--root`` (an IDX folder, or the CIFAR-10
ImageFolder zip or folder); digits need no file. The demo needs the ``[demo]`` extra.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "tensorboard_command"]

_DATA = ("digits", "fashion-mnist", "cifar10")


def tensorboard_command(logdir: Path) -> list[str]:
    """``cnnviz tensorboard DIR`` with the full path of the ``cnnviz`` next to this Python, when it is there."""
    beside = Path(sys.executable).parent / "cnnviz"
    program = [str(beside)] if beside.is_file() else [sys.executable, "-m", "lightning_cnnviz.cli"]
    return [*program, "tensorboard", str(logdir.resolve())]


def demo(data: str, root: str | None, epochs: int, logdir: Path, open_board: bool) -> int:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_cnnviz import (
        ActivationMonitor,
        EmbeddingMonitor,
        FeatureVisMonitor,
        FilterMonitor,
        SaliencyMonitor,
        TopPatchMonitor,
    )  # fmt: skip
    from lightning_cnnviz.demo.data import DigitsDataModule, IDXDataModule, ImageFolderDataModule
    from lightning_cnnviz.demo.models import ImageClassifier

    if data != "digits" and root is None:
        print(f"cnnviz demo: --data {data} needs --root (an IDX folder or the CIFAR-10 zip).", file=sys.stderr)
        return 2
    module: pl.LightningDataModule
    if data == "digits":
        module, channels = DigitsDataModule(), 1
    elif data == "fashion-mnist":
        module, channels = IDXDataModule(str(root), limit_train=128 * 200, limit_val=1000), 1
    else:
        module, channels = ImageFolderDataModule(str(root), limit_per_class=1000, limit_val=1000), 3
    pl.seed_everything(0, verbose=False)
    monitors: list[pl.Callback] = [
        FilterMonitor(),
        ActivationMonitor(every_n_steps=10),
        SaliencyMonitor(num_images=10, every_n_epochs=2),
        TopPatchMonitor(probe_size=256, method="both", every_n_epochs=2),
        EmbeddingMonitor(probe_size=300, every_n_epochs=2),
        FeatureVisMonitor(steps=128, every_n_epochs=max(2, epochs // 2)),
    ]
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=monitors, logger=TensorBoardLogger(str(logdir), name=data), log_every_n_steps=5
    )
    trainer.fit(ImageClassifier(in_channels=channels, num_classes=10, first_kernel=5), datamodule=module)
    command = tensorboard_command(logdir)
    print(f"\nTraining done. See what the network learned:\n\n    {' '.join(command)}\n")
    if open_board:
        return subprocess.call(command)
    return 0


def tensorboard(logdir: str, port: int, host: str) -> int:
    """The TensorBoard installed beside this Python (found even when its folder is not on the PATH)."""
    beside = Path(sys.executable).parent / "tensorboard"
    program = str(beside) if beside.is_file() else shutil.which("tensorboard")
    command = [program] if program else [sys.executable, "-m", "tensorboard.main"]
    return subprocess.call([*command, "--logdir", logdir, "--port", str(port), "--host", host], env=os.environ.copy())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnviz", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("demo", help="train the demo CNN with every monitor")
    run.add_argument("--data", choices=_DATA, default="digits")
    run.add_argument("--root", help="the data's folder or zip (Fashion-MNIST, CIFAR-10)")
    run.add_argument("--epochs", type=int, default=8)
    run.add_argument("--logdir", default="runs")
    run.add_argument("--open", action="store_true", help="start TensorBoard when training is done")
    board = commands.add_parser("tensorboard", help="start the TensorBoard that came with the package")
    board.add_argument("logdir")
    board.add_argument("--port", type=int, default=6006)
    board.add_argument("--host", default="localhost")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.data, args.root, args.epochs, Path(args.logdir), args.open)
    return tensorboard(args.logdir, args.port, args.host)


if __name__ == "__main__":
    sys.exit(main())
