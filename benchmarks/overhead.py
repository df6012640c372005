"""Overhead of FilterMonitor + ActivationMonitor on real training: wall time and peak memory ratios.

The demo CNN trains on Fashion-MNIST (``../shared/data/fashion-mnist``) for a fixed number of steps, with and
without both monitors (activation statistics collected on every step), alternating in one process so both
see the same machine state. Prints per-run times, the median ratio and the peak-memory ratio.

    python benchmarks/overhead.py                       # CPU, 300 steps x 9 repeats
    python benchmarks/overhead.py --nonlinearity silu    # the demo CNN with SiLU (dormant, not dead, channels)
    python benchmarks/overhead.py --compile              # the network torch.compile'd, with and without
    python benchmarks/overhead.py --device cuda          # on a GPU

With ``--compile`` each configuration compiles its network once (a warm-up run) and every measured run trains
that same compiled network from the same initial weights, so compilation time is not in the figures.

Wall time: every repeat runs both configurations back to back (order alternating), and the figure is the median
of the per-repeat ratios, which cancels the slow drift of a shared machine's speed; the ratio of the median
times is printed too.

Peak memory: each measurement runs in a fresh process (a 10-step warm-up, then the measured run), so no run
inherits another's allocator state. On CUDA it is ``torch.cuda.max_memory_allocated``; on CPU, the kernel's
high-water mark of the resident set above the resident size at the start of the measured run, with glibc told
(``mallopt``) to return every large free block to the system at once, so that the resident size follows the
live tensors.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_cnnviz import ActivationMonitor, FilterMonitor
from lightning_cnnviz.demo.data import IDXDataModule
from lightning_cnnviz.demo.models import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory above the level at entry, in bytes.

    CUDA: ``max_memory_allocated``. CPU: the kernel's own high-water mark of the resident set (``VmHWM``),
    reset at entry through ``/proc/self/clear_refs``, so no short peak is missed.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # reset the peak resident set size to the current one
            self._base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self.peak = _status_kib("VmHWM") * 1024 - self._base


def release_freed_memory_at_once() -> None:
    """glibc: fixed mmap and trim thresholds (128 KiB), so freed large blocks leave the resident set at once."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 128 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024)
    libc.malloc_trim(0)


_COMPILED: dict[bool, tuple[ImageClassifier, dict[str, torch.Tensor]]] = {}


def make_model(monitors: bool, nonlinearity: str, compiled: bool) -> ImageClassifier:
    """A fresh demo CNN; with ``compiled``, the one compiled network of this configuration, reset to the initial
    weights."""
    pl.seed_everything(0, verbose=False)
    if compiled and monitors in _COMPILED:
        model, initial = _COMPILED[monitors]
        model.load_state_dict(initial)
        return model
    model = ImageClassifier(arch="small_cnn", in_channels=1, num_classes=10, lr=1e-3, nonlinearity=nonlinearity)  # type: ignore[arg-type]
    if compiled:
        model.net = torch.compile(model.net)  # type: ignore[assignment]
        _COMPILED[monitors] = (model, {k: v.clone() for k, v in model.state_dict().items()})
    return model


def run_once(
    data: IDXDataModule,
    steps: int,
    monitors: bool,
    device: str,
    logdir: str,
    nonlinearity: str = "relu",
    compiled: bool = False,
) -> tuple[float, int]:
    model = make_model(monitors, nonlinearity, compiled)
    callbacks: list[pl.Callback] = []
    if monitors:
        callbacks = [
            FilterMonitor(every_n_epochs=1),
            ActivationMonitor(every_n_steps=50, collect_every_n_steps=1),
        ]
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        callbacks=callbacks,
        logger=TensorBoardLogger(logdir, name="with" if monitors else "without"),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=50,
    )
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, memory.peak


def quiet() -> None:
    """No warnings, and only Lightning's errors, in the benchmark's output."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def memory_in_fresh_process(args: argparse.Namespace, monitors: bool) -> int:
    """Peak memory of one run in a new process, so no allocator state is inherited from earlier runs."""
    command = [
        sys.executable, __file__, "--memory-child", "1" if monitors else "0", "--data", args.data,
        "--steps", str(min(args.steps, 100)), "--batch-size", str(args.batch_size), "--device", args.device,
        "--nonlinearity", args.nonlinearity, *(["--compile"] if args.compile else []),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1].removeprefix("peak_bytes="))


def memory_child(args: argparse.Namespace) -> None:
    quiet()
    if args.device != "cuda":
        release_freed_memory_at_once()
    data = IDXDataModule(args.data, batch_size=args.batch_size)
    data.setup()
    monitors = args.memory_child == 1
    with tempfile.TemporaryDirectory() as logdir:
        options = (args.nonlinearity, args.compile)
        run_once(data, 10, monitors, args.device, logdir, *options)  # warm-up: first-use initialisation of both
        _, peak = run_once(data, args.steps, monitors, args.device, logdir, *options)
    print(f"peak_bytes={peak}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fashion-mnist"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-repeats", type=int, default=3)
    parser.add_argument("--nonlinearity", choices=("relu", "silu", "gelu"), default="relu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network in both configurations")
    parser.add_argument("--memory-child", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args)
        return

    quiet()

    data = IDXDataModule(args.data, batch_size=args.batch_size)
    data.setup()
    print(
        f"device={args.device} torch_threads={torch.get_num_threads()} steps={args.steps} "
        f"batch={args.batch_size} repeats={args.repeats} nonlinearity={args.nonlinearity} compile={args.compile}"
    )
    times: dict[bool, list[float]] = {False: [], True: []}
    peaks: dict[bool, list[int]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as logdir:
        options = (args.nonlinearity, args.compile)
        run_once(data, 20, True, args.device, logdir, *options)  # warm-up: imports, allocator, kernels, compiling
        run_once(data, 20, False, args.device, logdir, *options)
        for repeat in range(args.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for monitors in order:
                seconds, _ = run_once(data, args.steps, monitors, args.device, logdir, *options)
                times[monitors].append(seconds)
                print(f"repeat {repeat} {'with   ' if monitors else 'without'} monitors: {seconds:7.3f} s")
        for repeat in range(args.memory_repeats):
            for monitors in (False, True) if repeat % 2 == 0 else (True, False):
                peak = memory_in_fresh_process(args, monitors)
                peaks[monitors].append(peak)
                print(
                    f"memory run {repeat} {'with   ' if monitors else 'without'} monitors: peak +{peak / 2**20:.1f} MiB"
                )
    if args.repeats:
        ratios = sorted(w / b for w, b in zip(times[True], times[False], strict=True))
        base, with_monitors = statistics.median(times[False]), statistics.median(times[True])
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        print(
            f"median wall time: without {base:.3f} s, with {with_monitors:.3f} s (ratio of medians "
            f"{with_monitors / base:.3f})"
        )
        print(
            f"best wall time: without {min(times[False]):.3f} s, with {min(times[True]):.3f} s (ratio of the "
            f"fastest runs {min(times[True]) / min(times[False]):.3f}: interference only ever adds time)"
        )
        print(
            f"wall-time ratio, median of per-repeat ratios: {statistics.median(ratios):.3f} "
            f"(quartiles {quartiles[0]:.3f} .. {quartiles[2]:.3f}; target <= 1.05)"
        )
    if not args.memory_repeats:
        return
    mem_base, mem_with = statistics.median(peaks[False]), statistics.median(peaks[True])
    print(
        f"peak-memory ratio: {mem_with / max(mem_base, 1):.3f} (median peak {mem_with / 2**20:.1f} MiB with vs "
        f"{mem_base / 2**20:.1f} MiB without, above the start of each run)"
    )


if __name__ == "__main__":
    main()
