"""Numbers of the core against independent references: NumPy brute force, hand-computed values, torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_cnnviz.core import ActivationStats, filter_smoothness, render_filter_grid
from lightning_cnnviz.core.drawing.basic import tile_grid
from lightning_cnnviz.core.drawing.render import dead_filter_map, distribution_map
from lightning_cnnviz.core.inputs.batches import images_from_batch, labels_from_batch
from lightning_cnnviz.core.methods.stats import LayerSpec


def brute_force(batches: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Firing counts per channel by explicit loops over every value (no vectorised reduction)."""
    channels = batches[0].shape[1]
    counts = np.zeros(channels, dtype=np.int64)
    positions = 0
    for batch in batches:
        moved = np.moveaxis(batch, 1, 0).reshape(channels, -1)
        positions += moved.shape[1]
        for c in range(channels):
            counts[c] += sum(1 for value in moved[c] if value > 0)
    return counts, positions


@pytest.mark.parametrize("shape", [(5, 4, 3, 3), (7, 6), (3, 5, 11)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_activation_stats_match_brute_force(shape: tuple[int, ...], channels_last: bool) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    batches = []
    for _ in range(3):
        values = torch.randn(shape, generator=generator).clamp_min(0)
        values[:, 1] = 0  # channel 1 never fires
        if channels_last and values.dim() == 4:
            values = values.contiguous(memory_format=torch.channels_last)
        batches.append(values)
    stats = ActivationStats({"layer": shape[1]})
    for values in batches:
        stats.update("layer", values)
        stats.step()
    summary = stats.summary()
    layer = summary.layers["layer"]
    counts, positions = brute_force([b.numpy() for b in batches])
    assert layer.firing.tolist() == counts.astype(float).tolist()
    assert layer.positions == positions
    assert layer.dead_channels == [1]
    assert layer.sparsity == pytest.approx(1 - counts.sum() / (positions * shape[1]))
    assert summary.steps == 3
    np.testing.assert_allclose(layer.firing_rate.numpy(), counts / positions)


def test_activation_stats_merge_equals_pooled_data() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 5, 5, generator=generator).clamp_min(0)
    b = torch.randn(6, 3, 5, 5, generator=generator).clamp_min(0)
    a[:, 2] = 0
    b[:, 2] = 0
    b[:, 0] = 0  # dead in b, alive in a: dead only if dead on every rank
    rank0, rank1, pooled = (ActivationStats({"x": 3}) for _ in range(3))
    rank0.update("x", a)
    rank1.update("x", b)
    pooled.update("x", torch.cat([a, b]))
    others: list[torch.Tensor] = []
    rank1.summary(reduce_sum=lambda flat: others.append(flat.clone()) or flat)
    # a reduce_sum that adds the other "rank"'s accumulators: what all_reduce does over two processes
    merged = rank0.summary(reduce_sum=lambda flat: flat + others[0]).layers["x"]
    expected = pooled.summary().layers["x"]
    assert merged.firing.tolist() == expected.firing.tolist()
    assert merged.positions == expected.positions
    assert merged.dead_channels == [2]


def test_nan_activations_count_as_not_firing() -> None:
    stats = ActivationStats({"x": 2})
    values = torch.zeros(2, 2, 3, 3)
    values[:, 0] = float("nan")  # a diverged channel
    values[1, 1, 0, 0] = 3.0
    stats.update("x", values)
    layer = stats.summary().layers["x"]
    assert layer.dead_channels == [0] and layer.firing.tolist() == [0.0, 1.0]
    assert layer.nonfinite == 1  # channel 0 in the one batch
    assert layer.magnitude.tolist() == [0.0, 3.0]


@pytest.mark.parametrize("channel_dim", [1, -1])
def test_dormant_channels_and_magnitudes_match_brute_force(channel_dim: int) -> None:
    """ReDo's score by explicit loops in float64: mean |a| per channel over the window / mean over channels."""
    generator = torch.Generator().manual_seed(11)
    channels = 6
    scales = torch.tensor([1.0, 0.02, 1.5, 0.5, 0.001, 2.0])
    batches = []
    for size in (3, 5):
        values = torch.nn.functional.gelu(torch.randn(size, channels, 4, 5, generator=generator))
        values = values * scales.view(1, -1, 1, 1)
        batches.append(values.permute(0, 2, 3, 1).contiguous() if channel_dim == -1 else values)
    stats = ActivationStats({"gelu": LayerSpec(channels, relu=False, channel_dim=channel_dim)})
    for values in batches:
        stats.update("gelu", values, distribution=True)
    layer = stats.summary().layers["gelu"]
    totals = np.zeros(channels)
    count = 0
    for values in batches:
        array = values.double().numpy()
        array = np.moveaxis(array, channel_dim if channel_dim == 1 else -1, 0).reshape(channels, -1)
        count += array.shape[1]
        for c in range(channels):
            totals[c] += sum(abs(v) for v in array[c])
    np.testing.assert_allclose(layer.magnitude.numpy(), totals, rtol=1e-5)
    means = totals / count
    expected = [c for c in range(channels) if means[c] / means.mean() <= 0.1]
    assert expected == [1, 4] and layer.dormant_channels(0.1) == expected
    assert layer.firing is None and layer.dead_channels == [] and np.isnan(layer.sparsity)
    # one batch binned: the first; counts of asinh(value) in 64 bins over [-8, 8]
    reference = np.histogram(np.arcsinh(batches[0].double().numpy()), bins=64, range=(-8, 8))[0]
    assert layer.distribution is not None and layer.distribution.tolist() == reference.astype(float).tolist()


def test_smoothness_hand_computed_values() -> None:
    ramp = torch.arange(5.0).repeat_interleave(5).reshape(1, 1, 5, 5)
    # vertical neighbours differ by 1, horizontal by 0: D = 20 / 40 = 0.5; variance of 0..4 = 2
    assert filter_smoothness(ramp).item() == pytest.approx(1 - 0.5 / 4)
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(4)] for i in range(4)]).reshape(1, 1, 4, 4)
    assert filter_smoothness(checker).item() == pytest.approx(-1.0)  # D = 4, V = 1
    noise = torch.randn(64, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    assert abs(filter_smoothness(noise).item()) < 0.05
    blurred = torch.nn.functional.avg_pool2d(torch.randn(64, 3, 11, 11), 5, stride=1)
    assert filter_smoothness(blurred).item() > 0.6
    assert torch.isnan(filter_smoothness(torch.randn(4, 4, 1, 1)))


def test_tile_grid_matches_torchvision_make_grid() -> None:
    from torchvision.utils import make_grid

    tiles = torch.rand(7, 3, 5, 4, generator=torch.Generator().manual_seed(1))
    for ncol, padding in [(3, 1), (7, 2), (1, 0), (4, 3)]:
        expected = make_grid(tiles, nrow=ncol, padding=padding, pad_value=0.25)
        torch.testing.assert_close(tile_grid(tiles, ncol, padding=padding, pad_value=0.25), expected)


def test_filter_grid_rgb_and_grayscale_layouts() -> None:
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    grid = render_filter_grid(weight, min_tile_px=9, padding=1)
    # 2x2 grid of 9x9 tiles (3x3 kernels upscaled 3x), 1 px padding around every tile
    assert grid.shape == (3, 2 * 10 + 1, 2 * 10 + 1)
    first = weight[0]
    normalised = (first - first.min()) / (first.max() - first.min())
    # pixel (1, 1) is the top-left weight of filter 0 in each colour channel
    torch.testing.assert_close(grid[:, 1, 1], normalised[:, 0, 0])
    assert grid[:, 1:10, 1:10].amin() == 0 and grid[:, 1:10, 1:10].amax() == 1

    global_grid = render_filter_grid(weight, normalize="global", min_tile_px=3, padding=0)
    torch.testing.assert_close(
        global_grid[:, 0, 0], (weight[0, :, 0, 0] - weight.min()) / (weight.max() - weight.min())
    )

    deep = torch.randn(5, 16, 3, 3, generator=torch.Generator().manual_seed(1))
    deep_grid = render_filter_grid(deep, min_tile_px=3, padding=1)
    assert deep_grid.shape == (3, 2 * 4 + 1, 3 * 4 + 1)  # one tile per filter, 3 x 2 grid
    assert torch.equal(deep_grid[0], deep_grid[1])  # grayscale
    magnitude = deep[0].abs().mean(dim=0)  # the first filter's kernel magnitude over its 16 input channels
    expected = (magnitude - magnitude.min()) / (magnitude.max() - magnitude.min())
    torch.testing.assert_close(deep_grid[0, 1:4, 1:4], expected)
    wide = render_filter_grid(torch.randn(64, 128, 3, 3))  # a deeper layer stays within a screen
    assert wide.shape[1] <= 500 and wide.shape[2] <= 500


def test_a_deeper_layers_slice_tiles_equal_its_weights() -> None:
    """One row per filter, one tile per input slice: each tile is its slice of the weights, stretched over the
    filter's range (per filter) or the layer's (global); capped at the first filters and slices."""
    from lightning_cnnviz.core.drawing.filters import render_filter_slices

    weight = torch.randn(5, 7, 3, 3, generator=torch.Generator().manual_seed(2))
    grid = render_filter_slices(weight, min_tile_px=3)
    assert grid.shape == (3, 5 * 4 + 1, 7 * 4 + 1) and torch.equal(grid[0], grid[2])
    for f in range(5):
        low, high = weight[f].min(), weight[f].max()
        for i in range(7):
            tile = grid[0, 1 + 4 * f : 4 + 4 * f, 1 + 4 * i : 4 + 4 * i]
            torch.testing.assert_close(tile, (weight[f, i] - low) / (high - low))
    layer = render_filter_slices(weight, normalize="global", min_tile_px=3)
    torch.testing.assert_close(layer[0, 1:4, 5:8], (weight[0, 1] - weight.min()) / (weight.max() - weight.min()))
    capped = render_filter_slices(torch.randn(40, 64, 3, 3), min_tile_px=3, max_filters=16, max_inputs=32)
    assert capped.shape == (3, 16 * 4 + 1, 32 * 4 + 1)


def test_dead_filter_map_colours_dead_cells() -> None:
    rates = torch.tensor([[0.25, 0.0], [1.0, float("nan")]])
    image = dead_filter_map(rates, cell_px=2, window_px=2, min_width_px=0, legend=False)
    assert image.shape == (3, 4, 4)
    torch.testing.assert_close(image[:, 0, 0], torch.full((3,), 0.2 + 0.8 * 0.5))  # sqrt(0.25) = 0.5
    torch.testing.assert_close(image[:, 1, 3], torch.tensor([0.85, 0.1, 0.1]))
    torch.testing.assert_close(image[:, 3, 3], torch.tensor([0.1, 0.3, 0.9]))


def test_images_from_batch_accepts_common_layouts_and_explains_failures() -> None:
    images = torch.zeros(2, 1, 4, 4)
    labels = torch.zeros(2, dtype=torch.long)
    for batch in (images, (images, labels), [images, labels], {"image": images, "label": labels}):
        assert images_from_batch(batch) is images
    with pytest.raises(TypeError, match=r"\(N, C, H, W\).*Tensor of shape \(2, 784\)"):
        images_from_batch((torch.zeros(2, 784), labels))
    with pytest.raises(TypeError, match="dtype torch.int64"):
        images_from_batch(torch.zeros(2, 1, 4, 4, dtype=torch.long))
    raw = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).repeat(2, 1, 1, 1)
    converted = images_from_batch({"inputs": raw, "targets": labels})
    assert converted.dtype == torch.float32
    torch.testing.assert_close(converted[0, 0, 0], torch.tensor([0.0, 51 / 255, 1.0]))
    for key in ("label", "labels", "target", "targets", "y", "mask", "masks"):
        assert labels_from_batch({"x": images, key: labels}, images) is labels
    assert labels_from_batch({"x": images, "weight": labels}, images) is None
    assert labels_from_batch({"x": images, "y": labels[:1]}, images) is None  # not one per image
    assert labels_from_batch(images, images, lambda batch: labels) is labels


def test_counts_stay_exact_past_float32_integers() -> None:
    stats = ActivationStats({"x": 2})
    ones = torch.ones(1, 2, 4096, 4096)
    ones[:, 1, 0, 0] = 0
    for _ in range(3):
        stats.update("x", ones)
    firing = stats.summary().layers["x"].firing
    assert firing.tolist() == [3.0 * 2**24, 3.0 * 2**24 - 3]  # float32 would round the second to the first


def test_distribution_map_puts_large_values_on_top_and_scales_each_window() -> None:
    counts = torch.zeros(2, 4)
    counts[0, 3] = 1000.0  # window 0: every value in the largest bin
    counts[1, 0] = 5.0  # window 1: few values, all in the smallest bin
    image = distribution_map(counts, window_px=1, bin_px=1)
    brightness = image.sum(0)  # (bins, windows), largest bin on row 0
    assert brightness[:, 0].argmax() == 0 and brightness[:, 1].argmax() == 3
    torch.testing.assert_close(brightness[0, 0], brightness[3, 1])  # each column scaled to its own maximum


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_counts_and_magnitudes_stay_exact(dtype: torch.dtype) -> None:
    values = torch.zeros(2, 3, 64, 64, dtype=dtype)
    values[:, 0] = 1.0
    values[0, 1, :10] = 2.0
    values[0, 1, 10, 0] = 2.0  # 641 positions of channel 1 in image 0: not a bfloat16 or float16 number
    stats = ActivationStats({"x": 3})
    stats.update("x", values)
    layer = stats.summary().layers["x"]
    assert layer.firing.tolist() == [2 * 4096.0, 641.0, 0.0]  # a bfloat16 sum would round it to 640
    assert layer.magnitude.tolist() == [2 * 4096.0, 1282.0, 0.0]


def test_alerts_name_units_of_fully_connected_layers_and_dormant_channels() -> None:
    from lightning_cnnviz.core import DeadFilterAlerts

    stats = ActivationStats(
        {"fc.relu": LayerSpec(4, relu=True, units=True), "block.gelu": LayerSpec(4, relu=False, channel_dim=-1)}
    )
    stats.update("fc.relu", torch.tensor([[1.0, 0.0, 2.0, 3.0]]))
    stats.update("block.gelu", torch.tensor([[[[1.0, 0.001, -2.0, 3.0]]]]))
    events = DeadFilterAlerts(threshold=0.2).check(stats.summary(), global_step=3, learning_rate=0.1)
    assert [(e.layer, e.measure, e.units, e.dead_channels) for e in events] == [
        ("fc.relu", "dead", True, [1]),
        ("block.gelu", "dormant", False, [1]),
    ]
    assert "1 of 4 units of the fully connected layer (25.0%) of layer 'fc.relu' are dead" in events[0].message
    assert "1 of 4 filters (25.0%) of layer 'block.gelu' are dormant" in events[1].message


def test_a_wide_layer_map_folds_is_legible_and_its_cells_are_the_firing_rates() -> None:
    """512 channels of a U-Net encoder after a few windows: folded into blocks of 256 channels x 4 px, each window
    widened until the map is at least 256 px wide, a legend below; every cell is its firing rate."""
    rates = torch.rand(512, 3, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    rates[300, 1:] = 0.0  # channel 300 dies in window 1
    image = dead_filter_map(rates)  # defaults: 4 px per channel, at most 1024 px high
    window = -(-(256 - 6) // 6)  # 2 blocks x 3 windows, one 6 px gap, at least 256 px: 42 px a window
    assert image.shape[1] == 1024 + 30 and image.shape[2] == 2 * 3 * window + 6
    map_part = image[:, :1024]
    red = (map_part[0] > 0.8) & (map_part[1] < 0.2)
    rows, cols = red.nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == 4 and cols.max() - cols.min() + 1 == 2 * window  # 4 px, 2 windows
    assert int(rows.min()) == (300 - 256) * 4  # in the second block, row 176
    assert int(cols.min()) == 3 * window + 6 + window  # after the first block and the gap
    for channel, block in ((0, 0), (255, 0), (256, 1), (511, 1)):
        for w in range(3):
            y, x = (channel % 256) * 4 + 1, block * (3 * window + 6) + w * window + 1
            expected = 0.2 + 0.8 * float(rates[channel, w]) ** 0.5
            assert abs(float(image[0, y, x]) - expected) < 1e-6 and float(image[1, y, x]) == float(image[0, y, x])
    legend = image[:, 1024:]
    assert (legend[0] > 0.8).logical_and(legend[1] < 0.2).any()  # the red swatch, named in the band


def test_activation_stats_skip_an_empty_batch() -> None:
    """A forward of zero images (an empty last batch, a pass over zero rows) adds nothing and does not fail."""

    stats = ActivationStats({"a": LayerSpec(3)})
    stats.update("a", torch.zeros(0, 3, 4, 4))
    stats.update("a", torch.tensor([[[[1.0]], [[0.0]], [[2.0]]]]))
    stats.step()
    layer = stats.summary().layers["a"]
    assert layer.positions == 1 and layer.firing is not None and layer.firing.tolist() == [1.0, 0.0, 1.0]
