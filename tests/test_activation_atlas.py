"""The activation atlas (Carter et al. 2019): positions sampled evenly, vectors equal to the layer's output read by a
hook, cells equal to a brute-force binning (hand-picked and generated layouts), the direction objective against a
hand computation, renders that beat the best probe patch of their cell, the patches beside them equal to the
receptive field's crop, the layout's quality against openTSNE, its alignment and checkpoint, the picture, the
default layer on networks we did not write, and clear errors; on generated networks the model is left as it was."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from generated_nets import GeneratedNet, plans
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import TinyCNN, hooks_left
from lightning_cnnviz.core import ActivationAtlas, Context, DoesNotApply, InputScale, Moment, Probe, receptive_fields
from lightning_cnnviz.core.methods.atlas import bin_layout, sample_positions, spatial_vectors
from lightning_cnnviz.core.methods.feature_vis import evaluate
from lightning_cnnviz.core.methods.objectives import direction
from lightning_cnnviz.core.monitors.activation_atlas import last_conv_block
from lightning_cnnviz.demo.models import SmallCNN


def context(epoch: int = 0) -> Context:
    return Context(Moment(epoch=epoch, step=epoch))


def test_positions_are_spread_evenly_over_images_without_repeats() -> None:
    for images, height, width, count in ((7, 3, 5, 40), (4, 2, 2, 16), (4, 2, 2, 100), (3, 8, 8, 1)):
        chosen = sample_positions(images, height, width, count, seed=3)
        total = min(count, images * height * width)
        per_image = torch.bincount(chosen[:, 0], minlength=images)
        expected = [total // images + (1 if i < total % images else 0) for i in range(images)]
        assert per_image.tolist() == expected
        assert len({tuple(row) for row in chosen.tolist()}) == total  # no position twice
        assert int(chosen[:, 1].max()) < height and int(chosen[:, 2].max()) < width
        assert torch.equal(chosen, sample_positions(images, height, width, count, seed=3))
    with pytest.raises(ValueError, match="must be >= 1"):
        sample_positions(0, 2, 2, 4)


def test_vectors_are_the_layer_output_at_the_positions_read_by_a_hook() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=3).eval()
    inputs = torch.rand(9, 3, 16, 16)
    seen: list[torch.Tensor] = []
    handle = net.relu2.register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    with torch.no_grad():
        net(inputs)
    handle.remove()
    vectors, positions = spatial_vectors(net, inputs, "relu2", 50, seed=1, max_batch=4)  # three chunks
    expected = seen[0][positions[:, 0], :, positions[:, 1], positions[:, 2]]
    torch.testing.assert_close(vectors, expected)
    assert torch.equal(positions, sample_positions(9, *seen[0].shape[2:], 50, seed=1))
    with pytest.raises(ValueError, match="not a 2-D feature map"):
        spatial_vectors(net, inputs, "fc", 10)


def brute_force(layout: np.ndarray, vectors: np.ndarray, grid: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Each point's cell, each cell's count and average, one point at a time: the columns from the left, the rows
    from the top (largest y), the grid over the layout's extent, the largest values in the last cell."""
    low, high = layout.min(axis=0), layout.max(axis=0)
    cells, counts, sums = [], np.zeros(grid * grid), np.zeros((grid * grid, vectors.shape[1]))
    for (x, y), vector in zip(layout, vectors, strict=True):
        column = min(math.floor((x - low[0]) / max(high[0] - low[0], 1e-12) * grid), grid - 1)
        row = min(math.floor((high[1] - y) / max(high[1] - low[1], 1e-12) * grid), grid - 1)
        cell = row * grid + column
        cells.append(cell)
        counts[cell] += 1
        sums[cell] += vector
    averages = sums / np.maximum(counts, 1)[:, None]
    return cells, counts, averages


@settings(max_examples=60, deadline=None)
@given(
    points=st.integers(1, 60),
    grid=st.integers(1, 9),
    channels=st.integers(1, 5),
    seed=st.integers(0, 10_000),
    lattice=st.booleans(),
)
def test_cells_equal_a_brute_force_binning_of_the_same_layout(
    points: int, grid: int, channels: int, seed: int, lattice: bool
) -> None:
    generator = torch.Generator().manual_seed(seed)
    layout = torch.randn(points, 2, generator=generator, dtype=torch.float64) * 10
    if lattice:  # points on cell edges, repeated points
        layout = torch.randint(0, 4, (points, 2), generator=generator).double()
    vectors = torch.randn(points, channels, generator=generator, dtype=torch.float64)
    cells = bin_layout(layout, vectors, grid)
    expected_cells, counts, averages = brute_force(layout.numpy(), vectors.numpy(), grid)
    assert cells.cell.tolist() == expected_cells
    assert cells.count.tolist() == counts.astype(int).tolist()
    np.testing.assert_allclose(cells.average.numpy(), averages, rtol=1e-12, atol=1e-12)
    assert cells.filled.tolist() == [c for c in range(grid * grid) if counts[c] > 0]


def test_the_direction_objective_at_the_centre_and_with_a_cosine_power_is_the_hand_computation() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    images, vector = torch.rand(2, 3, 7, 7), torch.rand(2, 4)
    with torch.no_grad():
        maps = net(images)  # (2, 4, 5, 5)
    for power in (0.0, 2.0):
        for position, where in (("centre", (2, 2)), ((1, 3), (1, 3))):
            expected = []
            for n in range(2):
                found = maps[n, :, where[0], where[1]]
                dot = float(found @ vector[n])
                cosine = dot / ((float(found.norm()) + 1e-4) * (float(vector[n].norm()) + 1e-4))
                expected.append(dot * max(cosine, 0.1) ** power)
            got = evaluate(net, direction("1", vector, power, position=position), images)
            np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5)
        mean = evaluate(net, direction("1", vector, power), images)
        dots = (maps * vector[:, :, None, None]).sum(dim=1)
        if power:
            norms = (maps.norm(dim=1) + 1e-4) * (vector.norm(dim=1)[:, None, None] + 1e-4)
            dots = dots * (dots / norms).clamp_min(0.1) ** power
        torch.testing.assert_close(mean.detach(), dots.flatten(1).mean(dim=1))
    with pytest.raises(ValueError, match="position is 'mean', 'centre' or a tuple"):
        direction("1", vector, position="corner")


def cell_scores(atlas: ActivationAtlas, net: nn.Module, to_model: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each non-empty cell's render scored by its objective, and the best score of a probe vector in that cell (the
    objective at one position is the dot product there)."""
    cells = atlas.last_cells
    assert cells is not None and atlas.last_images is not None and atlas.last_vectors is not None
    renders = atlas.last_images if to_model is None else to_model(atlas.last_images)
    with torch.no_grad():
        ours = evaluate(net, atlas.objective(cells), renders)
    scores = (atlas.last_vectors * cells.average[cells.cell]).sum(dim=1)
    best = torch.full((cells.grid**2,), -math.inf).scatter_reduce(0, cells.cell, scores, reduce="amax")
    return ours, best[cells.filled]


def test_each_cell_render_beats_the_best_probe_patch_of_its_cell_and_the_patches_are_the_receptive_fields() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=3).eval()
    probe = torch.rand(40, 3, 16, 16)
    atlas = ActivationAtlas(vectors=300, grid=4, steps=48, perplexity=10, examples=True)
    shot = atlas.snapshot(net, Probe(probe), context())
    assert atlas.layer_name == "relu3" and sorted(shot.images) == ["cnnviz/activation_atlas/relu3"]
    ours, best = cell_scores(atlas, net)
    assert bool((ours > best).all()), (ours, best)
    # the patch beside each cell: the receptive field of its best vector's position, cropped to the image
    cells, vectors, positions = atlas.last_cells, atlas.last_vectors, atlas.last_positions
    assert cells is not None and vectors is not None and positions is not None
    field = receptive_fields(net, ["relu3"], probe[:1])["relu3"]
    scores = (vectors * cells.average[cells.cell]).sum(dim=1)
    patches = atlas.best_patches(net, cells, vectors, positions, probe)
    for index, cell in enumerate(cells.filled.tolist()):
        members = (cells.cell == cell).nonzero().flatten()
        image, y, x = positions[members[scores[members].argmax()]].tolist()
        top, left, bottom, right = field.box(y, x)
        height, width = min(bottom - top + 1, 16), min(right - left + 1, 16)
        top, left = min(max(top, 0), 16 - height), min(max(left, 0), 16 - width)
        torch.testing.assert_close(patches[index], probe[image, :, top : top + height, left : left + width])


def test_the_picture_shows_each_cell_as_opaque_as_it_is_dense_with_its_count() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=3).eval()
    atlas = ActivationAtlas(vectors=200, grid=3, steps=2, perplexity=10)
    shot = atlas.snapshot(net, Probe(torch.rand(30, 3, 12, 12)), context())
    image = shot.images["cnnviz/activation_atlas/relu3"]
    cells, renders = atlas.last_cells, atlas.last_images
    assert cells is not None and renders is not None
    side, padding = 48, 2  # tiles of at least 48 px, 2 px apart
    assert tuple(image.shape) == (3, padding + 3 * (side + padding), padding + 3 * (side + padding))
    densest = int(cells.count.argmax())
    index = cells.filled.tolist().index(densest)
    row, column = divmod(densest, 3)
    top, left = padding + row * (side + padding), padding + column * (side + padding)
    tile = image[:, top : top + side, left : left + side]
    shown = torch.nn.functional.interpolate(renders[index : index + 1].float(), size=(side, side), mode="nearest")[0]
    # the densest cell is fully opaque: its render as drawn, below the count in the corner
    torch.testing.assert_close(tile[:, 20:, :], shown[:, 20:, :], atol=1 / 255, rtol=0)
    assert bool((tile[:, :10, :10] < 0.05).any())  # the count's black box
    for cell in range(9):
        if cells.count[cell] == 0:  # an empty cell is white
            row, column = divmod(cell, 3)
            top, left = padding + row * (side + padding), padding + column * (side + padding)
            assert bool((image[:, top : top + side, left : left + side] == 1).all())
    lightest = int(cells.count[cells.filled].argmin())
    if int(cells.count[cells.filled][lightest]) < int(cells.count.max()):  # a sparser cell is paler
        alpha = 0.25 + 0.75 * math.log1p(int(cells.count[cells.filled][lightest])) / math.log1p(int(cells.count.max()))
        row, column = divmod(int(cells.filled[lightest]), 3)
        top, left = padding + row * (side + padding), padding + column * (side + padding)
        pale = image[:, top + 20 : top + side, left : left + side]
        drawn = torch.nn.functional.interpolate(renders[lightest : lightest + 1].float(), size=(side, side))[0]
        torch.testing.assert_close(pale, alpha * drawn[:, 20:, :] + 1 - alpha, atol=1 / 255, rtol=0)


def test_the_layout_is_aligned_call_to_call_and_a_checkpoint_goes_on_from_it() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=3).eval()
    probe = Probe(torch.rand(30, 3, 12, 12))
    atlas = ActivationAtlas(vectors=150, grid=3, steps=2, perplexity=10)
    atlas.snapshot(net, probe, context(0))
    first = atlas.previous
    assert first is not None
    state = atlas.state_dict()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(1.05)  # a little training
    atlas.snapshot(net, probe, context(1))
    second = atlas.previous
    assert second is not None
    # aligned: the points stay near their places (closer than to a shuffled order of them)
    near = (second - first).norm(dim=1).mean()
    shuffled = (second[torch.randperm(len(second))] - first).norm(dim=1).mean()
    assert float(near) < 0.5 * float(shuffled)
    resumed = ActivationAtlas(vectors=150, grid=3, steps=2, perplexity=10)
    resumed.load_state_dict(state)
    resumed.snapshot(net, probe, context(1))
    assert resumed.previous is not None and torch.equal(resumed.previous, second)


def test_the_layout_is_as_trustworthy_as_opentsne_on_the_same_vectors() -> None:
    """The atlas's layout of 1,000 vectors of a conv layer on the bundled digits: its trustworthiness within 0.01 of
    openTSNE's (defaults) on the same vectors."""
    from openTSNE import TSNE
    from sklearn.datasets import load_digits
    from sklearn.manifold import trustworthiness

    torch.manual_seed(0)
    digits = torch.from_numpy(load_digits().images).float()[:, None] / 16
    net = SmallCNN(in_channels=1).eval()
    atlas = ActivationAtlas(vectors=1000)
    vectors, _ = spatial_vectors(net, digits, "relu2", 1000)
    ours = atlas.lay_out(vectors).numpy()
    theirs = np.asarray(TSNE(n_jobs=2, random_state=0).fit(vectors.numpy()))
    scores = [trustworthiness(vectors.numpy(), layout, n_neighbors=5) for layout in (ours, theirs)]
    print(f"atlas layout trustworthiness: ours {scores[0]:.4f}, openTSNE {scores[1]:.4f}")
    assert abs(scores[0] - scores[1]) <= 0.01


def test_the_default_layer_is_the_last_conv_s_activation_on_networks_we_did_not_write() -> None:
    example = torch.rand(1, 3, 64, 64)
    assert last_conv_block(SmallCNN(in_channels=3), example[..., :32, :32]) == "relu3"
    assert last_conv_block(torchvision.models.resnet18(num_classes=4), example) == "layer4.1"  # after add and ReLU
    assert last_conv_block(torchvision.models.vgg11(num_classes=4), example) == "features.19"  # its ReLU module
    functional = TinyCNN()  # relu by function: the last conv itself
    assert last_conv_block(functional, torch.rand(1, 1, 16, 16)) in dict(functional.named_modules())


def test_bad_arguments_and_networks_without_2d_maps_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="`vectors`"):
        ActivationAtlas(vectors=0)
    with pytest.raises(ValueError, match="`grid`"):
        ActivationAtlas(grid=0)
    with pytest.raises(ValueError, match="`cosine_power`"):
        ActivationAtlas(cosine_power=-1)
    net = SmallCNN(in_channels=3)
    with pytest.raises(ValueError, match="conv9"):
        ActivationAtlas(layer="conv9").attach(net, torch.rand(1, 3, 16, 16))
    with pytest.raises(DoesNotApply):
        ActivationAtlas().attach(nn.Sequential(nn.Conv1d(1, 2, 3)), torch.rand(1, 1, 8))


def test_a_known_input_scale_renders_in_pixels() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=3).eval()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    scale = InputScale(mean, std)
    probe = scale.to_model(torch.rand(30, 3, 12, 12))
    atlas = ActivationAtlas(vectors=150, grid=3, steps=24, perplexity=10)
    atlas.snapshot(net, Probe(probe), Context(Moment(epoch=0, step=0), scale=scale))
    assert atlas.last_images is not None
    assert float(atlas.last_images.min()) >= 0 and float(atlas.last_images.max()) <= 1
    ours, best = cell_scores(atlas, net, scale.to_model)
    assert bool((ours > best).all())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(max_size=4))
def test_on_generated_networks_the_atlas_draws_and_leaves_the_model_as_it_was(plan: list[Any]) -> None:
    """Whatever the forward (activations spelled every way, containers called twice, residuals), the atlas of the
    default layer draws, its cells hold every vector, and the model's parameters, gradients, modes and hooks are as
    they were."""
    torch.manual_seed(0)
    net = GeneratedNet(plan)
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    atlas = ActivationAtlas(vectors=60, grid=3, steps=2, perplexity=5)
    shot = atlas.snapshot(net, Probe(torch.rand(6, 1, 8, 8)), context())
    assert net.training and not hooks_left(net) and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert atlas.last_cells is not None and int(atlas.last_cells.count.sum()) == len(atlas.last_vectors)  # type: ignore[arg-type]
    assert list(shot.images) == [f"cnnviz/activation_atlas/{atlas.layer_name}"]
