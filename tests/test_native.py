"""The compiled kernels: firing counts equal to torch's in every layout, occluded windows equal to torch's
gather and scatter, and a clean fallback without them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_cnnviz.core import native, stats
from lightning_cnnviz.core.native import FiringKernel, WindowKernel, firing_kernel, window_kernel
from lightning_cnnviz.core.stats import ActivationStats


@pytest.fixture
def fresh_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget the loaded kernel for the duration of a test (the next call builds or finds it again)."""
    monkeypatch.setattr(native, "_kernels", {})
    yield


def _reference(values: torch.Tensor) -> torch.Tensor:
    return (values > 0).sum(dim=[0, *range(2, values.dim())]).double()


def _kernel() -> FiringKernel:
    kernel = firing_kernel()
    assert kernel is not None, "a C compiler is on this machine, so the kernel must build"
    return kernel


def test_kernel_builds_where_a_compiler_exists() -> None:
    has_compiler = bool(shutil.which("cc") or shutil.which("gcc"))
    assert (firing_kernel() is not None) == has_compiler


@pytest.mark.parametrize(
    "shape", [(4, 3), (5, 6, 11), (3, 5, 7, 9), (2, 4, 3, 5, 6), (1, 1, 1, 1), (2, 70, 33, 1), (64, 32, 28, 28)]
)
def test_kernel_counts_equal_torch(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    values = torch.randn(shape, generator=generator).clamp_min(0)
    values.view(-1)[:: max(1, values.numel() // 7)] = float("nan")  # NaN does not fire
    values.view(-1)[1 :: max(1, values.numel() // 5)] = -0.0  # nor does negative zero
    counts = torch.full((shape[1],), 5.0, dtype=torch.float64)  # the kernel adds to what is there
    _kernel()(values, counts)
    assert torch.equal(counts, _reference(values) + 5.0)


def test_kernel_channels_last_and_threads() -> None:
    values = torch.randn(6, 13, 9, 7, generator=torch.Generator().manual_seed(1)).clamp_min(0)
    channels_last = values.contiguous(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            for layout in (values, channels_last):
                counts = torch.zeros(13, dtype=torch.float64)
                _kernel()(layout, counts)
                assert torch.equal(counts, _reference(values))
    finally:
        torch.set_num_threads(threads)


def test_kernel_refuses_what_it_cannot_read() -> None:
    kernel = _kernel()
    counts = torch.zeros(4, dtype=torch.float64)
    values = torch.rand(3, 4, 5, 5)
    assert kernel.accepts(values, counts)
    for bad_values, bad_counts in [
        (values.transpose(2, 3), counts),  # strided
        (values.double(), counts),
        (values.half(), counts),
        (values, counts.float()),
        (values, torch.zeros(5, dtype=torch.float64)),
        (values[:, :, :0], counts),
    ]:
        assert not kernel.accepts(bad_values, bad_counts)
    with pytest.raises(ValueError, match="CPU float32 activations"):
        kernel(values.double(), counts)


def test_activation_stats_same_summary_with_and_without_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(2)
    batches = [
        torch.randn(8, 6, 10, 10, generator=generator).clamp_min(0),
        torch.randn(8, 6, 10, 10, generator=generator).clamp_min(0).contiguous(memory_format=torch.channels_last),
        torch.randn(8, 6, 10, 10, generator=generator).clamp_min(0).transpose(2, 3),  # strided: torch path
        torch.randn(8, 6, 10, 10, generator=generator, dtype=torch.float64).clamp_min(0),  # torch path
    ]
    batches[0][:, 4] = 0  # a dead channel
    for batch in batches[1:]:
        batch[:, 4] = 0
    summaries = []
    for use_kernel in (True, False):
        if not use_kernel:
            monkeypatch.setattr(stats, "firing_kernel", lambda: None)
        accumulator = ActivationStats({"relu": 6})
        for batch in batches:
            accumulator.update("relu", batch)
        summaries.append(accumulator.summary().layers["relu"])
    with_kernel, without = summaries
    expected = sum(_reference(batch) for batch in batches)
    assert torch.equal(with_kernel.firing, expected) and torch.equal(without.firing, expected)
    assert with_kernel.positions == without.positions == 4 * 8 * 100
    assert with_kernel.dead_channels == without.dead_channels == [4]


def test_kernel_builds_into_an_empty_cache(fresh_kernel: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_CNNVIZ_CACHE", str(tmp_path))
    if not (shutil.which("cc") or shutil.which("gcc")):
        assert firing_kernel() is None
        return
    assert firing_kernel() is not None and window_kernel() is not None
    for name in ("firing", "windows"):
        assert len(list((tmp_path / "native").glob(f"libcnnviz_{name}-*.so"))) == 1
    assert not list((tmp_path / "native").glob("tmp*"))  # no half-written files left


@pytest.mark.parametrize(
    "setting", [{"LIGHTNING_CNNVIZ_NATIVE": "0"}, {"CC": "/nonexistent/cc", "LIGHTNING_CNNVIZ_CACHE": "EMPTY"}]
)
def test_no_kernel_falls_back_to_torch(
    setting: dict[str, str], fresh_kernel: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in setting.items():
        monkeypatch.setenv(key, str(tmp_path) if value == "EMPTY" else value)
    assert firing_kernel() is None and window_kernel() is None
    accumulator = ActivationStats({"relu": 3})
    values = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]], [[2.0, 3.0]]]])
    accumulator.update("relu", values)
    assert accumulator.summary().layers["relu"].firing.tolist() == [1.0, 0.0, 2.0]


def _windows() -> WindowKernel:
    kernel = window_kernel()
    assert kernel is not None, "a C compiler is on this machine, so the kernel must build"
    return kernel


def _reference_windows(
    padded: torch.Tensor, crop: torch.Tensor, place: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Element by element: the window of padded[image] at (top, left), crop pasted at (shift_r, shift_c)."""
    out = torch.empty(len(crop), height, width, padded.shape[3], dtype=padded.dtype)
    for v, (image, top, left, shift_r, shift_c) in enumerate(place.tolist()):
        for r in range(height):
            for c in range(width):
                y, x = r - shift_r, c - shift_c
                inside = 0 <= y < crop.shape[1] and 0 <= x < crop.shape[2]
                out[v, r, c] = crop[v, y, x] if inside else padded[image, top + r, left + c]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("threads", [1, 2])
def test_window_kernel_equals_element_by_element(dtype: torch.dtype, threads: int) -> None:
    generator = torch.Generator().manual_seed(3)
    padded = torch.randn(3, 9, 11, 5, generator=generator).to(dtype)
    crop = torch.randn(40, 3, 4, 5, generator=generator).to(dtype)
    height, width = 5, 6
    place = torch.stack(
        [
            torch.randint(0, 3, (40,), generator=generator),
            torch.randint(0, 9 - height + 1, (40,), generator=generator),
            torch.randint(0, 11 - width + 1, (40,), generator=generator),
            torch.randint(-4, height + 1, (40,), generator=generator),  # above, inside, below, partly outside
            torch.randint(-5, width + 1, (40,), generator=generator),
        ],
        dim=1,
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = _windows().window(padded, crop, *place.T, height, width)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(out, _reference_windows(padded, crop, place, height, width))
    empty = _windows().window(padded, crop[:0], *place[:0].T, height, width)
    assert empty.shape == (0, height, width, 5)


def test_window_kernel_refuses_what_it_cannot_read() -> None:
    kernel = _windows()
    padded, crop = torch.zeros(2, 6, 6, 3), torch.zeros(1, 2, 2, 3)
    index = [torch.zeros(1, dtype=torch.long)] * 5
    with pytest.raises(IndexError, match="outside"):
        kernel.window(padded, crop, torch.tensor([2]), *index[1:], 2, 2)  # no third image
    with pytest.raises(IndexError, match="outside"):
        kernel.window(padded, crop, index[0], torch.tensor([5]), *index[2:], 2, 2)  # rows 5 and 6 of 6
    with pytest.raises(ValueError, match="one dtype"):
        kernel.window(padded, crop.double(), *index, 2, 2)
    with pytest.raises(ValueError, match="contiguous"):
        kernel.window(padded.transpose(1, 2), crop, *index, 2, 2)
    with pytest.raises(ValueError, match="one entry per crop"):
        kernel.window(padded, crop, *index[:4], torch.zeros(2, dtype=torch.long), 2, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("kernel", "stride", "dilation"), [((2, 2), (2, 2), (1, 1)), ((3, 2), (1, 2), (2, 1))])
def test_max_pool_kernel_equals_torch_on_the_windows(
    dtype: torch.dtype, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> None:
    generator = torch.Generator().manual_seed(4)
    padded = torch.randn(3, 12, 13, 6, generator=generator).to(dtype)
    padded[1, 4, 5, 2] = float("nan")  # NaN wins, as in torch
    padded[0, :, :2] = -torch.inf  # padding
    crop = torch.randn(30, 4, 3, 6, generator=generator).to(dtype)
    crop[7, 1, 1, 0] = float("nan")
    out_h, out_w = 3, 4
    height = (out_h - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    width = (out_w - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    place = torch.stack(
        [
            torch.randint(0, 3, (30,), generator=generator),
            torch.randint(0, 12 - height + 1, (30,), generator=generator),
            torch.randint(0, 13 - width + 1, (30,), generator=generator),
            torch.randint(-4, height + 1, (30,), generator=generator),
            torch.randint(-3, width + 1, (30,), generator=generator),
        ],
        dim=1,
    )
    place[7, 3:] = 0  # the crop with the NaN lies inside its window
    pooled = _windows().max_pool(padded, crop, *place.T, (out_h, out_w), kernel, stride, dilation)
    windows = _reference_windows(padded, crop, place, height, width).permute(0, 3, 1, 2)
    expected = torch.nn.functional.max_pool2d(windows, kernel, stride, 0, dilation).permute(0, 2, 3, 1)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0, equal_nan=True)
    assert bool(pooled.isnan().any())


def test_max_pool_kernel_refuses_other_dtypes() -> None:
    padded, crop = torch.zeros(1, 4, 4, 2, dtype=torch.float16), torch.zeros(1, 1, 1, 2, dtype=torch.float16)
    index = [torch.zeros(1, dtype=torch.long)] * 5
    with pytest.raises(ValueError, match="float32 or float64"):
        _windows().max_pool(padded, crop, *index, (1, 1), (2, 2), (2, 2), (1, 1))
