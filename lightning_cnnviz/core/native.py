"""Optional compiled CPU kernels, each doing in one pass what takes torch several.

* ``firing.c``: per-channel firing counts for :class:`~lightning_cnnviz.core.stats.ActivationStats`. The
  torch path takes three passes over every activation (write the firing indicator, read it, sum), about 5% of
  a small CNN's training step; the kernel counts in one read, about 2.5x faster.
* ``windows.c``: the windows of clean activation maps with occluded crops pasted in that the incremental
  occlusion evaluator (:mod:`lightning_cnnviz.core.incremental`) feeds to every convolution and pooling; torch
  needs an index computation, a gather and a scatter for each.

Each source (shipped beside this module) is compiled on first use with the system C compiler (``$CC``, else
``cc``/``gcc``) into a per-user cache (``$LIGHTNING_CNNVIZ_CACHE``, else ``~/.cache/lightning_cnnviz``; about
0.2 s, once per machine) and loaded with :mod:`ctypes`. The kernels run on torch's own OpenMP runtime (same
``libgomp.so.1``) with torch's thread count.

Nothing depends on them: with no compiler, a failed build, ``LIGHTNING_CNNVIZ_NATIVE=0``, or a self-check
that disagrees with torch, :func:`firing_kernel` and :func:`window_kernel` return ``None`` and the callers
use torch, with identical results (the tests compare both paths).
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
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["FiringKernel", "WindowKernel", "firing_kernel", "window_kernel"]

_log = logging.getLogger(__name__)
_FLAG_SETS = (("-O3", "-fopenmp", "-shared", "-fPIC"), ("-O3", "-shared", "-fPIC"))
Kernel = TypeVar("Kernel")
_lock = threading.Lock()
_kernels: dict[str, object] = {}  # source file -> its loaded kernel, or None where it is not available


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


class WindowKernel:
    """The loaded library: :meth:`window` builds occluded windows of clean maps (see ``windows.c``)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._window = library.window_nhwc
        self._window.restype = ctypes.c_int
        self._window.argtypes = [
            ctypes.c_void_p, *(ctypes.c_int64,) * 4, ctypes.c_void_p, *(ctypes.c_int64,) * 2,
            *(ctypes.c_void_p,) * 5, *(ctypes.c_int64,) * 3, ctypes.c_void_p, ctypes.c_int,
        ]  # fmt: skip
        self._max_pool = {}
        for dtype, name in ((torch.float32, "max_pool_nhwc_float"), (torch.float64, "max_pool_nhwc_double")):
            function = getattr(library, name)
            function.restype = ctypes.c_int
            function.argtypes = [
                ctypes.c_void_p, *(ctypes.c_int64,) * 4, ctypes.c_void_p, *(ctypes.c_int64,) * 2,
                *(ctypes.c_void_p,) * 5, *(ctypes.c_int64,) * 9, ctypes.c_void_p, ctypes.c_int,
            ]  # fmt: skip
            self._max_pool[dtype] = function

    @staticmethod
    def accepts(padded: Tensor, crop: Tensor) -> bool:
        """Whether the kernel can read ``padded`` (N, H, W, C) and ``crop`` (V, h, w, C): on the CPU, contiguous,
        of one dtype, with the same channels."""
        return (
            padded.device.type == "cpu"
            and crop.device.type == "cpu"
            and padded.dtype == crop.dtype
            and padded.dim() == crop.dim() == 4
            and padded.shape[3] == crop.shape[3]
            and padded.is_contiguous()
            and crop.is_contiguous()
        )

    def window(
        self,
        padded: Tensor,
        crop: Tensor,
        image: Tensor,
        top: Tensor,
        left: Tensor,
        shift_r: Tensor,
        shift_c: Tensor,
        height: int,
        width: int,
    ) -> Tensor:
        """(V, height, width, C): rows ``top + [0, height)`` and columns ``left + [0, width)`` of
        ``padded[image]``, with ``crop[v]`` pasted at ``(shift_r[v], shift_c[v])`` (partly outside is clipped).
        The index tensors are (V,) int64 on the CPU; a window outside ``padded`` raises ``IndexError``."""
        if not self.accepts(padded, crop):
            raise ValueError(
                "the window kernel reads CPU contiguous (N, H, W, C) maps and (V, h, w, C) crops of one dtype and C; "
                f"got {padded.dtype} {tuple(padded.shape)} and {crop.dtype} {tuple(crop.shape)}"
            )
        indices = self._indices(crop, image, top, left, shift_r, shift_c)
        copies = crop.shape[0]
        out = torch.empty(copies, height, width, padded.shape[3], dtype=padded.dtype)
        if copies and height > 0 and width > 0 and padded.shape[3]:
            status = self._window(
                padded.data_ptr(), *padded.shape[:3], padded.shape[3] * padded.element_size(), crop.data_ptr(),
                crop.shape[1], crop.shape[2],
                *(t.data_ptr() for t in indices), copies, height, width, out.data_ptr(),
                max(1, torch.get_num_threads()),
            )  # fmt: skip
            if status != 0:
                raise IndexError(f"a {height}x{width} window lies outside the {tuple(padded.shape[:3])} maps")
        return out

    def max_pool(
        self,
        padded: Tensor,
        crop: Tensor,
        image: Tensor,
        top: Tensor,
        left: Tensor,
        shift_r: Tensor,
        shift_c: Tensor,
        out_size: tuple[int, int],
        kernel: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int],
    ) -> Tensor:
        """``F.max_pool2d`` (no padding: ``padded`` holds it, as -inf) of the windows :meth:`window` would build,
        without building them: (V, out_h, out_w, C). float32 and float64 only."""
        if not self.accepts(padded, crop) or padded.dtype not in self._max_pool:
            raise ValueError(
                "the max-pool kernel reads CPU contiguous (N, H, W, C) maps and (V, h, w, C) crops of one dtype "
                f"(float32 or float64) and C; got {padded.dtype} {tuple(padded.shape)} and {crop.dtype} "
                f"{tuple(crop.shape)}"
            )
        indices = self._indices(crop, image, top, left, shift_r, shift_c)
        copies = crop.shape[0]
        out = torch.empty(copies, *out_size, padded.shape[3], dtype=padded.dtype)
        if copies and out_size[0] > 0 and out_size[1] > 0 and padded.shape[3]:
            status = self._max_pool[padded.dtype](
                padded.data_ptr(), *padded.shape, crop.data_ptr(), crop.shape[1], crop.shape[2],
                *(t.data_ptr() for t in indices), copies, *out_size, *kernel, *stride, *dilation, out.data_ptr(),
                max(1, torch.get_num_threads()),
            )  # fmt: skip
            if status != 0:
                raise IndexError(f"a pooling window lies outside the {tuple(padded.shape[:3])} maps")
        return out

    @staticmethod
    def _indices(crop: Tensor, *tensors: Tensor) -> list[Tensor]:
        indices = [t.to(device="cpu", dtype=torch.int64).contiguous() for t in tensors]
        if any(t.shape != (crop.shape[0],) for t in indices):
            raise ValueError(f"image, top, left and the shifts need one entry per crop ({crop.shape[0]})")
        return indices


def firing_kernel() -> FiringKernel | None:
    """The compiled kernel, built and self-checked on the first call; ``None`` where it is not available."""
    kernel = _cached("firing.c", FiringKernel, _self_check)
    return kernel if isinstance(kernel, FiringKernel) else None


def window_kernel() -> WindowKernel | None:
    """The compiled window kernel, built and self-checked on the first call; ``None`` where not available."""
    kernel = _cached("windows.c", WindowKernel, _window_self_check)
    return kernel if isinstance(kernel, WindowKernel) else None


def _cached(source: str, factory: Callable[[ctypes.CDLL], Kernel], check: Callable[[Kernel], bool]) -> object:
    """The kernel of ``source`` (or ``None``), loaded once per process, whichever thread asks first."""
    if source not in _kernels:
        with _lock:
            if source not in _kernels:
                loaded: Kernel | None = _load(source, factory, check)
                _kernels[source] = loaded
    return _kernels[source]


def _channels_last(values: Tensor) -> bool:
    return values.dim() == 4 and values.is_contiguous(memory_format=torch.channels_last)


def _load(source: str, factory: Callable[[ctypes.CDLL], Kernel], check: Callable[[Kernel], bool]) -> Kernel | None:
    if os.environ.get("LIGHTNING_CNNVIZ_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not sys.platform.startswith(("linux", "darwin")):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None
    try:
        kernel = factory(ctypes.CDLL(str(_build(compiler, Path(__file__).with_name(source)))))
        if not check(kernel):
            _log.warning("lightning_cnnviz: the compiled kernel %s disagrees with torch; using torch", source)
            return None
        return kernel
    except Exception as error:  # any build or load problem: the torch path is always there
        _log.debug("lightning_cnnviz: no compiled kernel %s (%s); using torch", source, error)
        return None


def _cache_dir() -> Path:
    root = os.environ.get("LIGHTNING_CNNVIZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lightning_cnnviz"
    )
    return Path(root) / "native"


def _build(compiler: str, path: Path) -> Path:
    source = path.read_bytes()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            b"\0".join([source, compiler.encode(), " ".join(flags).encode(), platform.machine().encode()])
        ).hexdigest()[:16]
        for directory in (_cache_dir(), Path(tempfile.gettempdir()) / f"lightning_cnnviz-{os.getuid()}"):
            target = directory / f"libcnnviz_{path.stem}-{key}.so"
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
                    [compiler, *flags, str(path), "-o", partial], capture_output=True, text=True, timeout=120
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


def _window_self_check(kernel: WindowKernel) -> bool:
    generator = torch.Generator().manual_seed(0)
    padded = torch.randn(2, 6, 7, 3, generator=generator, dtype=torch.float64)
    crop = torch.randn(3, 2, 3, 3, generator=generator, dtype=torch.float64)
    image, top, left = torch.tensor([1, 0, 1]), torch.tensor([0, 2, 1]), torch.tensor([0, 3, 2])
    shift_r, shift_c = torch.tensor([1, -1, 3]), torch.tensor([2, 0, -2])
    out = kernel.window(padded, crop, image, top, left, shift_r, shift_c, 4, 4)
    for v in range(3):
        expected = padded[image[v], top[v] : top[v] + 4, left[v] : left[v] + 4].clone()
        for r in range(2):
            for c in range(3):
                y, x = r + int(shift_r[v]), c + int(shift_c[v])
                if 0 <= y < 4 and 0 <= x < 4:
                    expected[y, x] = crop[v, r, c]
        if not torch.equal(out[v], expected):
            return False
    pooled = kernel.max_pool(padded, crop, image, top, left, shift_r, shift_c, (2, 2), (2, 2), (1, 2), (1, 1))
    windows = kernel.window(padded, crop, image, top, left, shift_r, shift_c, 3, 4).permute(0, 3, 1, 2)
    return torch.equal(pooled, torch.nn.functional.max_pool2d(windows, (2, 2), (1, 2)).permute(0, 2, 3, 1))
