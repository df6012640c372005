"""Receptive fields against boxes computed by hand, and against the support of input gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18

from conftest import assert_field_is_gradient_support, global_state_clean, hooks_left
from lightning_cnnviz.core.model.receptive_field import ReceptiveField, receptive_fields
from lightning_cnnviz.demo.models import resnet18_cifar


def field(model: nn.Module, layer: str, size: int | tuple[int, int], channels: int = 3) -> ReceptiveField:
    h, w = (size, size) if isinstance(size, int) else size
    result = receptive_fields(model, [layer], torch.zeros(1, channels, h, w))[layer]
    assert hooks_left(model) == [] and global_state_clean()
    return result


def geometry(rf: ReceptiveField) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    return rf.size, rf.stride, rf.offset


def test_plain_conv_chain() -> None:
    net = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)])
    # each 3x3 conv at stride 1 adds 2 pixels and moves the first pixel one to the left (padding 1)
    assert geometry(field(net, "0", 16)) == ((3, 3), (1, 1), (-1, -1))
    assert geometry(field(net, "2", 16)) == ((7, 7), (1, 1), (-3, -3))


def test_alexnet_like_strided_conv_and_max_pool() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(4, 4, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(4, 4, 3, padding=1),
    )
    # conv1: size 11, stride 4, offset -2
    # pool1: 11 + 2*4 = 19, stride 8, offset -2
    # conv2: 19 + 4*8 = 51, stride 8, offset -2 - 2*8 = -18
    # pool2: 51 + 2*8 = 67, stride 16, offset -18
    # conv3: 67 + 2*16 = 99, stride 16, offset -18 - 16 = -34
    assert geometry(field(net, "0", 127)) == ((11, 11), (4, 4), (-2, -2))
    assert geometry(field(net, "2", 127)) == ((19, 19), (8, 8), (-2, -2))
    assert geometry(field(net, "3", 127)) == ((51, 51), (8, 8), (-18, -18))
    assert geometry(field(net, "6", 127)) == ((99, 99), (16, 16), (-34, -34))


def test_dilation_asymmetric_kernels_same_padding_reflect_padding_and_avg_pool() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, (3, 5), dilation=2, padding=(2, 4)),  # size (5, 9), offset (-2, -4)
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3, stride=2),  # size (7, 11), stride 2, offset (-2, -4)
        nn.Conv2d(4, 4, 3, padding="same"),  # size (11, 15), offset (-4, -6)
        nn.AvgPool2d(2),  # size (13, 17), stride 4, offset (-4, -6)
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),  # F.pad then conv: size (21, 25), offset (-8, -10)
        nn.AdaptiveMaxPool2d(5),  # 10x10 -> 5x5 is a 2x2 pool: size (25, 29), stride 8
    )
    assert geometry(field(net, "0", 42)) == ((5, 9), (1, 1), (-2, -4))
    assert geometry(field(net, "2", 42)) == ((7, 11), (2, 2), (-2, -4))
    assert geometry(field(net, "3", 42)) == ((11, 15), (2, 2), (-4, -6))
    assert geometry(field(net, "4", 42)) == ((13, 17), (4, 4), (-4, -6))
    assert geometry(field(net, "5", 42)) == ((21, 25), (4, 4), (-8, -10))
    assert geometry(field(net, "6", 42)) == ((25, 29), (8, 8), (-8, -10))


def test_cifar_resnet_union_over_residual_paths() -> None:
    net = resnet18_cifar()
    # stem 3x3: 3; layer1 (four 3x3 convs at stride 1): 11, offset -5
    assert geometry(field(net, "layer1", 32)) == ((11, 11), (1, 1), (-5, -5))
    # layer2.0: main path 3x3/2 then 3x3 -> 11 + 2 + 2*2 = 17 at stride 2, offset -5 - 1 - 2 = -8;
    # the 1x1/2 shortcut sees 11 at offset -5; the union is the main path's box
    assert geometry(field(net, "layer2.0.downsample.0", 32)) == ((11, 11), (2, 2), (-5, -5))
    assert geometry(field(net, "layer2.0", 32)) == ((17, 17), (2, 2), (-8, -8))
    # each further 3x3 at stride s adds 2s: layer2.1 +8 -> 25; layer3 (stride 4) 25+4+8+8+8 = 53; layer4 (8) 109
    assert geometry(field(net, "layer4", 32)) == ((109, 109), (8, 8), (-54, -54))


def test_torchvision_resnet18_has_the_known_435_pixel_field() -> None:
    net = resnet18()
    # stem 7x7/2 (7, offset -3), max pool 3x3/2 (11, stride 4, offset -5), layer1 +4*2*4 = 43 (offset -21),
    # layer2 99 (stride 8, offset -49), layer3 211 (stride 16, offset -105), layer4 435 (stride 32, offset -217)
    assert geometry(field(net, "maxpool", 224)) == ((11, 11), (4, 4), (-5, -5))
    assert geometry(field(net, "layer2", 224)) == ((99, 99), (8, 8), (-49, -49))
    assert geometry(field(net, "layer4", 224)) == ((435, 435), (32, 32), (-217, -217))
    assert field(net, "avgpool", 224).whole_input


class _WideSkip(nn.Module):
    """A residual block whose shortcut (7x7) sees more than its main path (two 1x1 convs)."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1))
        self.skip = nn.Conv2d(2, 2, 7, padding=3)
        self.pool = nn.AvgPool2d(2)
        self.after = nn.Conv2d(2, 2, 3, padding=(0, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.main(x)
        y += self.skip(x)  # in-place add
        return self.after(self.pool(F.relu(y, inplace=True)))


def test_union_takes_the_wider_branch_and_follows_in_place_ops() -> None:
    net = _WideSkip()
    assert geometry(field(net, "main", 20, channels=2)) == ((1, 1), (1, 1), (0, 0))
    # after the in-place add the box is the union: the skip's 7x7 at offset -3; pool 2 -> 8 at stride 2;
    # 3x3 with padding (0, 1) -> 12, offsets (-3, -5)
    assert geometry(field(net, "pool", 20, channels=2)) == ((8, 8), (2, 2), (-3, -3))
    assert geometry(field(net, "after", 20, channels=2)) == ((12, 12), (2, 2), (-3, -5))


def _positive_copy(model: nn.Module) -> nn.Module:
    """Weights > 0 and no ReLU zeros: every pixel of the true receptive field gets a non-zero gradient."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.abs() + 0.05)
    return model


def _tiny_convnext() -> nn.Module:
    """torchvision's ConvNeXt (permute -> LayerNorm -> Linear -> GELU -> Linear -> permute in every block)."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3)


@pytest.mark.parametrize(
    ("make", "layer", "size"),
    [
        (lambda: resnet18_cifar(), "layer2", 32),
        (lambda: _WideSkip(), "after", 20),
        (
            lambda: nn.Sequential(
                nn.Conv2d(3, 2, 3, padding=1, dilation=2), nn.AvgPool2d(3, stride=2), nn.Conv2d(2, 2, 3, stride=2)
            ),
            "2",
            41,
        ),
        (_tiny_convnext, "features.3.0.block.0", 32),  # a depthwise conv after a channels-last block
        (_tiny_convnext, "features.3.0", 32),
    ],
)
def test_box_equals_the_support_of_the_input_gradient(make, layer: str, size: int) -> None:  # type: ignore[no-untyped-def]
    model = _positive_copy(make()).eval()
    channels = next(p for p in model.parameters() if p.dim() == 4).shape[1]
    rf = field(model, layer, size, channels=channels)
    image, module = torch.rand(1, channels, size, size), dict(model.named_modules())[layer]
    assert_field_is_gradient_support(model, module, rf, image, lambda h, w: [(0, 0), (h // 2, w // 2), (h - 1, w - 1)])


def test_crop_corners_stay_inside_the_image_and_contain_the_visible_box() -> None:
    rf = ReceptiveField((10, 10), (2, 2), (-4, -4), (16, 16))
    tops, lefts, crop_h, crop_w = rf.crop_corners(torch.tensor([0, 3, 7]), torch.tensor([7, 3, 0]))
    assert (crop_h, crop_w) == (10, 10)
    assert tops.tolist() == [0, 2, 6] and lefts.tolist() == [6, 2, 0]
    big = ReceptiveField((109, 109), (8, 8), (-54, -54), (32, 32))
    assert big.crop_corners(torch.tensor([3]), torch.tensor([0]))[2:] == (32, 32)


def test_unmodelled_resize_and_bad_names_are_clear_errors() -> None:
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.after = nn.Conv2d(1, 1, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.after(F.interpolate(self.conv(x), scale_factor=2))

    net = Up()
    assert field(net, "conv", 12, channels=1).size == (3, 3)
    with pytest.raises(ValueError, match="interpolate"):
        field(net, "after", 12, channels=1)
    with pytest.raises(ValueError, match="'conv', 'after'"):
        field(net, "nope", 12, channels=1)
    assert hooks_left(net) == [] and global_state_clean()
