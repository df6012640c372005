"""The incremental occlusion evaluator against full forwards of the occluded images (float64, so any gap
beyond rounding is a wrong value), on every op family it follows, ops it densifies, and models it must refuse."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN, global_state_clean
from torch import Tensor, nn

from lightning_cnnviz.core import incremental as I
from lightning_cnnviz.core import native
from lightning_cnnviz.core import saliency as S
from lightning_cnnviz.models import SmallCNN, resnet18_cifar


class Strided(nn.Module):
    """Strided conv, avg-pool with padding, dilated grouped "same" conv, a residual sum of crops of different
    boxes, GELU, a strided dilated max pool with padding and a mean over both spatial axes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=2)
        self.conv3 = nn.Conv2d(8, 6, (3, 1), padding=(1, 0))
        self.fc = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(self.conv1(x), 3, stride=1, padding=1)
        x = x + F.hardtanh(self.conv2(x))
        x = F.gelu(self.conv3(torch.sigmoid(x) * 2.0 - 1.0))
        x = F.max_pool2d(x, (2, 3), stride=(1, 2), padding=1, dilation=(2, 1))
        return self.fc(x.mean(dim=(2, 3)))


class Densified(nn.Module):
    """Ops the crops cannot follow, so the evaluator pastes the crops into the clean maps first: upsampling,
    channel slicing, concatenation, and a flatten straight into a linear layer."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        side = [(s // 2 + 1) * 2 - 2 for s in size]  # after the padded pool, upsampling and the slice
        self.fc = nn.Linear(10 * side[0] * side[1], 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1((x - self.mean) * 1.5))
        x = F.max_pool2d(x, 2, padding=1)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        y = self.conv2(x[:, :, : x.shape[2] - 2, : x.shape[3] - 2])
        y = torch.cat([y, x[:, :, 1:-1, 1:-1]], dim=1)
        return self.fc(y.view(y.size(0), -1))


class BatchDependent(nn.Module):
    """Takes a different path for a batch of 3 (the clean pass) than for the occluded copies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = torch.relu(x) if x.shape[0] == 3 else torch.tanh(x)
        return self.fc(x.mean(dim=(2, 3)))


class MasksInPlace(nn.Module):
    """Multiplies an activation in place by a full-size spatial mask: the crop cannot follow that."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("mask", torch.linspace(0, 1, size[0] * size[1]).view(1, 1, *size))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x.mul_(self.mask)
        return self.fc(x.mean(dim=(2, 3)))


def full_logits(model: nn.Module, images: Tensor, boxes: Tensor, fill: Tensor) -> Tensor:
    """(N, B, K) by filling each box in a copy of each image and running the whole model."""
    out = []
    for top, left, h, w in boxes.tolist():
        copy = images.clone()
        copy[:, :, top : top + h, left : left + w] = fill
        out.append(model(copy))
    return torch.stack(out, dim=1)


MODELS = {
    "small_cnn": lambda size: SmallCNN(3, 4, first_kernel=7),
    "tiny_module": lambda size: TinyCNN("module", in_channels=3),
    "tiny_inplace": lambda size: TinyCNN("inplace", in_channels=3),
    "tiny_functional": lambda size: TinyCNN("functional", in_channels=3),
    "tiny_method": lambda size: TinyCNN("method", in_channels=3),
    "resnet18": lambda size: resnet18_cifar(3, 4),
    "strided": lambda size: Strided(),
    "densified": lambda size: Densified(size),
}

MAX_POOLED = {"small_cnn", "strided", "densified"}  # the models that call F.max_pool2d on a crop


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("size", "patch", "stride"), [((16, 16), 4, 2), ((13, 17), 5, 3)])
@pytest.mark.parametrize("windows", ["compiled", "torch"])
def test_equals_full_forwards(
    name: str, size: tuple[int, int], patch: int, stride: int, windows: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of building the windows (the compiled kernel, and torch's gather and scatter)."""
    calls: list[str] = []
    kernel = native.window_kernel()
    if windows == "compiled":
        if kernel is None:
            pytest.skip("no C compiler: the torch path is the one tested")
        built, pooled = kernel.window, kernel.max_pool
        monkeypatch.setattr(kernel, "window", lambda *args: calls.append("window") or built(*args))
        monkeypatch.setattr(kernel, "max_pool", lambda *args: calls.append("max_pool") or pooled(*args))
    else:
        monkeypatch.setattr(I, "window_kernel", lambda: None)
    torch.manual_seed(0)
    model = MODELS[name](size).double().eval()
    for module in model.modules():  # running statistics that are not the identity, so BN does something
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images = torch.randn(3, 3, *size, dtype=torch.float64)
    fill = images.mean(dim=(2, 3), keepdim=True)
    boxes = S._occlusion_boxes(*size, patch, stride)
    with torch.no_grad():
        clean, occluded = I.occluded_logits(model, images, boxes, fill, max_batch=4)
        expected = full_logits(model, images, boxes, fill)
        torch.testing.assert_close(clean, model(images), rtol=0, atol=1e-12)
    scale = (expected - clean[:, None]).abs().max().item()
    assert scale > 1e-6  # the boxes change the logits, so agreement is not trivial
    assert (occluded - expected).abs().max().item() <= 1e-10 * scale
    assert global_state_clean()
    assert ("window" in calls) == (windows == "compiled")
    assert ("max_pool" in calls) == (windows == "compiled" and name in MAX_POOLED)  # fused where a model pools


@pytest.mark.parametrize(
    ("kernel", "stride", "pad", "dilation"),
    [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 1), (3, 1, 2, 2), (2, 2, 0, 1), (7, 3, 0, 1)],
)
def test_reach_is_the_outputs_whose_window_meets_the_rows(kernel: int, stride: int, pad: int, dilation: int) -> None:
    size = 20
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    lows, highs = zip(*[(a, b) for a, b in itertools.combinations_with_replacement(range(size), 2)])
    low, high = torch.tensor(lows), torch.tensor(highs)
    first, last, top, rows = I._reach(low, high, kernel, stride, pad, dilation, out)
    for a, b, f, l_, t in zip(lows, highs, first.tolist(), last.tolist(), top.tolist()):
        # output o reads input rows o * stride - pad + j * dilation; its window spans the first to the last
        meets = [o for o in range(out) if o * stride - pad <= b and o * stride - pad + dilation * (kernel - 1) >= a]
        if not meets:  # rows no window reads (past the last stride step): nothing changes
            assert f > l_
            continue
        assert (f, l_) == (meets[0], meets[-1])
        assert 0 <= t <= f and l_ < t + rows <= out


def test_unsupported_models_are_refused_and_occlusion_falls_back_silently() -> None:
    torch.manual_seed(0)
    images = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    fill = torch.zeros(3, 3, 1, 1, dtype=torch.float64)
    boxes = S._occlusion_boxes(10, 10, 4, 3)
    for model, match in ((BatchDependent(), "differs from the clean one"), (MasksInPlace((10, 10)), "in place")):
        model = model.double().eval()
        with torch.no_grad(), pytest.raises(I.Unsupported, match=match):
            I.occluded_logits(model, images, boxes, fill)
        assert global_state_clean()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ours = S.occlusion(model, images, 1, patch=4, stride=3, baseline=0.0)
        torch.testing.assert_close(
            ours, S.occlusion(model, images, 1, patch=4, stride=3, baseline=0.0, incremental=False)
        )


def test_a_wrong_incremental_result_is_caught_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = SmallCNN(3, 4, first_kernel=5).double().eval()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    expected = S.occlusion(model, images, 0, patch=4, stride=2, incremental=False)
    right = I._Replay.global_mean
    monkeypatch.setattr(I._Replay, "global_mean", lambda self, x, crop: right(self, x, crop) * 1.01)
    with pytest.warns(UserWarning, match="disagrees with full forwards"):
        ours = S.occlusion(model, images, 0, patch=4, stride=2)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)

    def broken(self: I._Replay, x: Tensor, crop: I._Crop) -> Tensor:
        raise IndexError("a bug in the evaluator")

    monkeypatch.setattr(I._Replay, "global_mean", broken)
    with pytest.warns(UserWarning, match="IndexError"):
        ours = S.occlusion(model, images, 0, patch=4, stride=2)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert global_state_clean()


def test_copies_near_the_border_get_smaller_crops_than_copies_in_the_middle() -> None:
    """The geometry pass groups boxes by the sizes they reach, so border boxes are not padded to the middle's."""
    torch.manual_seed(0)
    model = SmallCNN(3, 4, first_kernel=7).eval()
    images = torch.randn(1, 3, 32, 32)
    boxes = S._occlusion_boxes(32, 32, 8, 2)
    with torch.no_grad():
        reach = I._window_reach(model, images, boxes, torch.zeros(1, 3, 1, 1))
    rows_conv1 = reach[0][0]
    assert rows_conv1[0].item() == 11 and rows_conv1.max().item() == 14  # 8 rows + 3 each side, clipped at 0
    groups = I._groups(reach, boxes, overhead=0.0)
    assert sorted(torch.cat(groups).tolist()) == list(range(len(boxes)))  # a partition of the boxes
    assert len(groups) > 1


def test_clean_pass_memory_is_counted_and_bounds_the_image_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    model = TinyCNN("module", in_channels=3).eval()
    # conv1 and relu1: 6 x 12 x 12; conv2 and relu2: 8 x 12 x 12; the global pool: 8 x 1 x 1; float32
    assert I.clean_pass_bytes(model, torch.randn(1, 3, 12, 12)) == 4 * (2 * 6 * 144 + 2 * 8 * 144 + 8)
    images = torch.randn(5, 3, 12, 12)
    expected = S.occlusion(model, images, 1, patch=4, stride=2, incremental=False)
    chunks: list[int] = []
    original = I.occluded_logits

    def spy(model: nn.Module, images: Tensor, *args: object) -> tuple[Tensor, Tensor]:
        chunks.append(images.shape[0])
        return original(model, images, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(S, "occluded_logits", spy)
    monkeypatch.setattr(S, "_CLEAN_PASS_BUDGET", 2 * 16160)  # two images' worth
    ours = S.occlusion(model, images, 1, patch=4, stride=2)
    assert chunks == [2, 2, 1]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
