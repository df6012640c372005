"""Feature visualization and DeepDream against what is known of them: a linear unit's optimum, determinism,
the colour statistics, the training state left as it was; objectives given as functions, and diversity's Gram
similarity against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from conftest import global_state_clean, hooks_left
from lightning_cnnviz.core import deep_dream, visualize_features
from lightning_cnnviz.core.methods.feature_vis import color_correlation
from lightning_cnnviz.core.methods.objectives import channel, diversity, gram_similarity
from lightning_cnnviz.core.model.modules import run_to


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 5), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 3),
    )  # fmt: skip


def test_a_first_layer_unit_is_maximised_by_its_own_filter() -> None:
    """A first-layer unit is linear in its patch: under the L2 bound its optimum is the filter itself (cosine 1),
    whatever the Fourier parameterisation and colour decorrelation do to the path there."""
    model = tiny().eval()
    colors = color_correlation(torch.rand(16, 3, 8, 8) * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1))
    images = visualize_features(
        model, "0", list(range(8)), size=15, steps=256, transforms=False, objective="neuron", l2=1.0, colors=colors
    )
    patch = images[:, :, 5:10, 5:10] - 0.5  # the central position's 5x5 input patch
    cosine = torch.nn.functional.cosine_similarity(patch.flatten(1), model[0].weight.detach().flatten(1))
    assert cosine.min() >= 0.9, cosine
    assert (images[:, :, :2] - 0.5).abs().max() < 0.01  # pixels outside the patch stay at the centre


def test_same_seed_same_images_and_training_state_untouched() -> None:
    model = tiny()
    model.train()
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 0.125)
    before = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    first = visualize_features(model, "2", [0, 5, 7], size=16, steps=12, seed=4)
    second = visualize_features(model, "2", [0, 5, 7], size=16, steps=12, seed=4)
    other = visualize_features(model, "2", [0, 5, 7], size=16, steps=12, seed=5)
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert first.shape == (3, 3, 16, 16) and float(first.min()) >= 0 and float(first.max()) <= 1
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before, strict=True))  # type: ignore[arg-type]
    assert model.training and all(m.training for m in model.modules())
    dreamed = deep_dream(model, "2", torch.rand(2, 3, 24, 24), octaves=2, steps=3)
    assert dreamed.shape == (2, 3, 24, 24)
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before, strict=True))  # type: ignore[arg-type]
    assert hooks_left(model) == [] and global_state_clean()


def test_optimised_images_excite_their_channel_more_than_random_ones() -> None:
    model = tiny().eval()
    images = visualize_features(model, "2", list(range(8)), size=16, steps=64)
    noise = torch.rand(64, 3, 16, 16)
    with torch.no_grad():
        ours = model[:3](images).mean((2, 3))[torch.arange(8), torch.arange(8)]
        best = model[:3](noise).mean((2, 3)).amax(dim=0)
    assert bool((ours > best).all())


def test_deep_dream_raises_the_layer_activation() -> None:
    model = tiny().eval()
    start = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    dreamed = deep_dream(model, "2", start, octaves=2, steps=8)
    with torch.no_grad():
        assert float(model[:3](dreamed).pow(2).mean()) > 1.5 * float(model[:3](start).pow(2).mean())


def test_color_correlation_is_the_square_root_of_the_covariance() -> None:
    pixels = torch.randn(3, 5000, generator=torch.Generator().manual_seed(0))
    mixed = torch.tensor([[1.0, 0.0, 0.0], [0.7, 0.5, 0.0], [0.3, 0.2, 0.4]]) @ pixels
    images = mixed.view(3, 50, 10, 10).transpose(0, 1)
    root = color_correlation(images).double()
    covariance = torch.cov(mixed.double())
    product = root @ root.T
    torch.testing.assert_close(product / product.max(), covariance / covariance.max(), rtol=1e-5, atol=1e-6)
    assert float(root.norm(dim=0).max()) == pytest.approx(1.0)


def test_bad_layer_and_channels_are_clear_errors() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"no module named 'nope'.*'0'"):
        visualize_features(model, "nope", [0], size=8, steps=1)
    with pytest.raises(ValueError, match=r"channel 9 of layer '2' is out of range.*0\.\.7"):
        visualize_features(model, "2", [1, 9], size=8, steps=1)
    with pytest.raises(ValueError, match="`objective` can be 'channel', 'neuron' or a function"):
        visualize_features(model, "2", [1], size=8, steps=1, objective="class")


def test_a_channel_renders_alike_whatever_else_is_in_its_batch() -> None:
    """Each image has its own seeded start and transforms, so channels can be split over processes."""
    model = tiny().eval()
    together = visualize_features(model, "2", [1, 4, 6], size=16, steps=16, seed=2)
    alone = visualize_features(model, "2", [4], size=16, steps=16, seed=2)
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=1e-5)


def test_redirected_relu_steps_move_a_unit_that_never_fires() -> None:
    """Below a ReLU that is 0 everywhere the true gradient is 0 and the image cannot move; Lucid's redirected
    ReLU lets the first steps through (an option, off by default)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # the first layer never fires
    start = visualize_features(model, "2", [0], size=12, steps=0)
    frozen = visualize_features(model, "2", [0], size=12, steps=8)
    moved = visualize_features(model, "2", [0], size=12, steps=8, redirected_relu_steps=8)
    assert torch.equal(frozen, start) and not torch.allclose(moved, start, atol=1e-3)
    assert global_state_clean()


def test_gram_similarity_is_its_hand_computation() -> None:
    torch.manual_seed(0)
    acts = torch.randn(6, 3, 4, 5)
    array = acts.double().numpy().reshape(6, 3, 20)
    grams = [a @ a.T for a in array]
    expected = []
    for i in range(6):
        group = range(3 * (i // 3), 3 * (i // 3) + 3)
        cosines = [
            float((grams[i] * grams[j]).sum() / np.linalg.norm(grams[i]) / np.linalg.norm(grams[j]))
            for j in group
            if j != i
        ]
        expected.append(sum(cosines) / 2)
    np.testing.assert_allclose(gram_similarity(acts, 3).numpy(), expected, rtol=1e-5)
    torch.testing.assert_close(diversity("x", 3)({"x": acts}), gram_similarity(acts, 3))
    assert gram_similarity(acts, 1).abs().max() == 0
    with pytest.raises(ValueError, match="groups 4 images"):
        gram_similarity(acts, 4)


def test_an_objective_function_renders_as_its_name_and_diversity_sends_images_apart() -> None:
    """``objective=`` as a function of (layer, channels) renders what the name renders; k diverse images per channel
    start from their own seeds (the first from the channel's usual one) and, under the penalty, their Gram matrices
    are less alike than without it."""
    model = tiny()
    by_name = visualize_features(model, "2", [1, 3], size=16, steps=6)
    by_function = visualize_features(model, "2", [1, 3], size=16, steps=6, objective=lambda name, c: channel(name, c))
    torch.testing.assert_close(by_function, by_name, rtol=0, atol=0)
    with pytest.raises(TypeError, match="returned int, not an Objective"):
        visualize_features(model, "2", [1], size=8, steps=1, objective=lambda name, c: 3)  # type: ignore[arg-type,return-value]
    free = visualize_features(model, "2", [1, 3], size=16, steps=40, diversity_images=3, diversity_weight=0.0)
    apart = visualize_features(model, "2", [1, 3], size=16, steps=40, diversity_images=3, diversity_weight=2.0)
    assert free.shape == (6, 3, 16, 16)
    alone = visualize_features(model, "2", [3], size=16, steps=40, diversity_images=3, diversity_weight=0.0)
    torch.testing.assert_close(free[3:], alone, atol=1e-5, rtol=0)  # a channel's images do not depend on the others'

    def similarity(images: Tensor) -> float:
        captured: list[Tensor] = []
        run_to(model, images, ["2"], lambda name, out: captured.append(out))
        return float(gram_similarity(captured[0].detach(), 3).mean())

    assert similarity(apart) < similarity(free)


def test_the_panel_draws_k_images_a_channel_and_tracks_the_first() -> None:
    from lightning_cnnviz.core import Context, FeatureVisPanel, Moment, Probe

    model = tiny()
    panel = FeatureVisPanel(layers=["2"], channels=[0, 5], steps=4, dream_images=0, patches=False, diversity=3)
    shot = panel.snapshot(model, Probe(torch.rand(8, 3, 16, 16)), Context(Moment(epoch=0, step=0)))
    assert tuple(panel.last_images["2"].shape) == (6, 3, 16, 16)
    grid = shot.images["cnnviz/feature_vis/2"]
    assert tuple(grid.shape) == (3, 2 + 2 * (64 + 12 + 2), 2 + 3 * (64 + 2))  # a row of three per channel
    assert panel.history.stacked("2")[0].shape[:2] == (2, 1)  # the evolution follows one image per channel
    with pytest.raises(ValueError, match="diversity"):
        FeatureVisPanel(diversity=0)
