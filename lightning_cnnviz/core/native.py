"""An optional compiled CPU kernel for the activation statistics: per-channel firing counts in one read.

The torch path of :class:`~lightning_cnnviz.core.stats.ActivationStats` on CPU takes three passes over every
activation (write the firing indicator, read it, sum), which on a small CNN is about 5% of a training step.
``firing.c`` (shipped beside this module) counts in one read, about 2.5x faster. It is compiled on first
use with the system C compiler (``$CC``, else ``cc``/``gcc``) into a per-user cache
(``$LIGHTNING_CNNVIZ_CACHE``, else ``~/.cache/lightning_cnnviz``; about 0.2 s, once per machine) and loaded
with :mod:`ctypes`. It runs on torch's own OpenMP runtime (same ``libgomp.so.1``) with torch's thread count.

Nothing depends on it: with no compiler, a failed build, ``LIGHTNING_CNNVIZ_NATIVE=0``, or a self-check that
disagrees with torch, :func:`firing_kernel` returns ``None`` and the statistics use torch, with identical
counts (the tests compare both paths).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["FiringKernel", "firing_kernel"]

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("firing.c")
_FLAG_SETS = (("-O3", "-fopenmp", "-shared", "-fPIC"), ("-O3", "-shared", "-fPIC"))
_UNSET = object()
_lock = threading.Lock()
_kernel: object = _UNSET


class FiringKernel:
    """The loaded library: ``kernel(values, counts)`` adds ``values``' per-channel firing counts to ``counts``."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._first = library.firing_channels_first
        self._first.restype = ctypes.c_int
        self._first.argtypes = [ctypes.c_void_p, *(ctypes.c_int64,) * 3, ctypes.c_void_p, ctypes.c_int]
        self._last = library.firing_channels_last
        self._last.restype = ctypes.c_int
        self._last.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]

    @staticmethod
    def accepts(values: Tensor, counts: Tensor) -> bool:
        """Whether the kernel can read ``values`` (CPU float32, (N, C, ...) contiguous or 4-D channels-last)."""
        return (
            values.device.type == "cpu"
            and values.dtype == torch.float32
            and values.dim() >= 2
            and values.numel() > 0
            and (values.is_contiguous() or _channels_last(values))
            and counts.device.type == "cpu"
            and counts.dtype == torch.float64
            and counts.is_contiguous()
            and counts.numel() == values.shape[1]
        )

    def __call__(self, values: Tensor, counts: Tensor) -> None:
        if not self.accepts(values, counts):
            raise ValueError(
                "the firing kernel reads CPU float32 activations of shape (N, C, ...), contiguous or 4-D "
                f"channels-last, into float64 counts of length C; got {values.dtype} {tuple(values.shape)} "
                f"on {values.device} and counts {counts.dtype} {tuple(counts.shape)}"
            )
        self.count(values, counts)

    def count(self, values: Tensor, counts: Tensor) -> None:
        """``__call__`` without the checks, for a caller that has just asked :meth:`accepts`."""
        threads = max(1, torch.get_num_threads())
        batch, channels = values.shape[0], values.shape[1]
        numel = values.numel()
        if values.is_contiguous():
            status = self._first(
                values.data_ptr(), batch, channels, numel // (batch * channels), counts.data_ptr(), threads
            )
        else:
            status = self._last(values.data_ptr(), numel // channels, channels, counts.data_ptr(), threads)
        if status != 0:
            raise MemoryError("the firing kernel could not allocate its per-thread counts")


def firing_kernel() -> FiringKernel | None:
    """The compiled kernel, built and self-checked on the first call; ``None`` where it is not available."""
    global _kernel
    if _kernel is _UNSET:
        with _lock:
            if _kernel is _UNSET:
                _kernel = _load()
    return _kernel if isinstance(_kernel, FiringKernel) else None


def _channels_last(values: Tensor) -> bool:
    return values.dim() == 4 and values.is_contiguous(memory_format=torch.channels_last)


def _load() -> FiringKernel | None:
    if os.environ.get("LIGHTNING_CNNVIZ_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not sys.platform.startswith(("linux", "darwin")):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None
    try:
        library = _build(compiler)
        kernel = FiringKernel(ctypes.CDLL(str(library)))
        if not _self_check(kernel):
            _log.warning("lightning_cnnviz: the compiled firing kernel disagrees with torch; using torch")
            return None
        return kernel
    except Exception as error:  # any build or load problem: the torch path is always there
        _log.debug("lightning_cnnviz: no compiled firing kernel (%s); using torch", error)
        return None


def _cache_dir() -> Path:
    root = os.environ.get("LIGHTNING_CNNVIZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lightning_cnnviz"
    )
    return Path(root) / "native"


def _build(compiler: str) -> Path:
    source = _SOURCE.read_bytes()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            b"\0".join([source, compiler.encode(), " ".join(flags).encode(), platform.machine().encode()])
        ).hexdigest()[:16]
        for directory in (_cache_dir(), Path(tempfile.gettempdir()) / f"lightning_cnnviz-{os.getuid()}"):
            target = directory / f"libcnnviz_firing-{key}.so"
            if target.exists():
                return target
            try:
                directory.mkdir(parents=True, exist_ok=True)
                handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
                os.close(handle)
            except OSError as error:
                errors.append(f"{directory}: {error}")
                continue
            try:
                result = subprocess.run(
                    [compiler, *flags, str(_SOURCE), "-o", partial], capture_output=True, text=True, timeout=120
                )
                if result.returncode != 0:
                    errors.append(f"{compiler} {' '.join(flags)}: {result.stderr.strip()[:300]}")
                    break  # the next directory would fail the same way; try the next flags
                os.replace(partial, target)  # atomic: concurrent builders (DDP ranks) never see half a file
                return target
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)
    raise RuntimeError("; ".join(errors) or "no writable cache directory")


def _self_check(kernel: FiringKernel) -> bool:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 5, 7, 9, generator=generator).clamp_min(0)
    values[0, 1, 2, 3] = float("nan")
    expected = (values > 0).sum(dim=(0, 2, 3)).double()
    for layout in (values, values.contiguous(memory_format=torch.channels_last)):
        counts = torch.zeros(5, dtype=torch.float64)
        kernel(layout, counts)
        if not torch.equal(counts, expected):
            return False
    return True
