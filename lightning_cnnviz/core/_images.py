"""Batched image helpers: tiling, normalisation, nearest-neighbour upscaling, and batch unpacking."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "annotate",
    "as_float_images",
    "check_images",
    "images_from_batch",
    "labels_from_batch",
    "normalize_per_item",
    "tile_grid",
    "upscale_nearest",
]

_IMAGE_KEYS = ("image", "images", "x", "input", "inputs", "pixel_values")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)} elements"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {list(value)[:10]}"
    return type(value).__name__


def as_float_images(images: Tensor) -> Tensor:
    """uint8 images as floats in [0, 1], as torchvision's ``to_dtype(..., scale=True)`` converts them."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def images_from_batch(
    batch: Any, *, who: str = "lightning_cnnviz", batch_to_images: Callable[[Any], Tensor] | None = None
) -> Tensor:
    """The image tensor of a batch: ``batch_to_images(batch)`` when given, else the batch itself, its first
    element, or its ``'image'``-like key; uint8 images become floats in [0, 1]. TypeError, saying what the batch
    was and what is accepted, when there is no floating or uint8 (N, C, H, W) tensor."""
    if batch_to_images is not None:
        images = batch_to_images(batch)
        if not (isinstance(images, Tensor) and images.dim() == 4 and _image_dtype(images)):
            raise TypeError(
                f"{who}: `batch_to_images` must return a floating (or uint8) image tensor of shape (N, C, H, W), "
                f"got {images!r:.200}."
            )
        return as_float_images(images)
    candidate: Any = batch
    if isinstance(batch, (list, tuple)) and batch:
        candidate = batch[0]
    elif isinstance(batch, Mapping):
        key = next((k for k in _IMAGE_KEYS if k in batch), None)
        candidate = batch[key] if key is not None else None
    if isinstance(candidate, Tensor) and candidate.dim() == 4 and _image_dtype(candidate):
        return as_float_images(candidate)
    raise TypeError(
        f"{who}: the batch must hold an image tensor of shape (N, C, H, W) with a floating (or uint8) dtype: the "
        f"batch itself, the first element of a (images, labels) tuple/list, or a dict value under one of "
        f"{list(_IMAGE_KEYS)}. Got a batch that is {_describe(batch)}"
        + ("" if candidate is batch else f", whose image candidate is {_describe(candidate)}")
        + ". Pass `batch_to_images=` to tell the monitor where the images are."
    )


def _image_dtype(images: Tensor) -> bool:
    return images.is_floating_point() or images.dtype == torch.uint8


def labels_from_batch(
    batch: Any, images: Tensor, batch_to_labels: Callable[[Any], Tensor | None] | None = None
) -> Tensor | None:
    """One label per image: ``batch_to_labels(batch)`` when given, else the second element of an
    ``(images, labels, ...)`` batch or a dict value under one of ``label``, ``labels``, ``target``, ``targets``,
    ``y``; None when there is no integer tensor of shape (N,) there."""
    if batch_to_labels is not None:
        labels = batch_to_labels(batch)
    elif isinstance(batch, (list, tuple)) and len(batch) > 1:
        labels = batch[1]
    elif isinstance(batch, Mapping):
        labels = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
    else:
        labels = None
    if isinstance(labels, Tensor) and labels.shape == images.shape[:1] and not labels.is_floating_point():
        return labels
    return None


def check_images(images: Tensor) -> None:
    """Raise ``TypeError`` unless ``images`` is a floating tensor (N, C, H, W)."""
    if not (isinstance(images, Tensor) and images.dim() == 4 and images.is_floating_point()):
        raise TypeError(f"images must be a floating tensor of shape (N, C, H, W), got {images!r:.120}")


def in_layout_of(tensor: Tensor, images: Tensor) -> Tensor:
    """``tensor`` in the memory format of ``images``: the model runs in the layout (and rounding) it was given."""
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return tensor.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def normalize_per_item(values: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale each item (dimension 0) to [0, 1] by its own min and max; constant items become 0.5."""
    flat = values.reshape(values.shape[0], -1)
    low = flat.amin(dim=1, keepdim=True)
    high = flat.amax(dim=1, keepdim=True)
    span = high - low
    scaled = torch.where(span > eps, (flat - low) / span.clamp_min(eps), torch.full_like(flat, 0.5))
    return scaled.reshape(values.shape)


def upscale_nearest(images: Tensor, factor: int) -> Tensor:
    """Repeat each pixel ``factor`` x ``factor`` times (no smoothing, so single weights stay visible)."""
    if factor <= 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def tile_grid(tiles: Tensor, ncol: int | None = None, *, padding: int = 1, pad_value: float = 1.0) -> Tensor:
    """Lay out ``tiles`` (N, C, h, w) row by row into one image (C, H, W) with ``padding`` px between tiles.

    ``ncol`` defaults to ``ceil(sqrt(N))``. Unused cells are filled with ``pad_value``.
    """
    if tiles.dim() != 4:
        raise ValueError(f"tile_grid expects tiles of shape (N, C, h, w), got {tuple(tiles.shape)}")
    count, channels, height, width = tiles.shape
    ncol = max(1, min(ncol or math.ceil(math.sqrt(max(count, 1))), max(count, 1)))
    nrow = max(1, math.ceil(count / ncol))
    cell_h, cell_w = height + padding, width + padding
    grid = tiles.new_full((channels, nrow * cell_h + padding, ncol * cell_w + padding), pad_value)
    if count == 0:
        return grid
    filled = tiles.new_full((nrow * ncol, channels, height, width), pad_value)
    filled[:count] = tiles
    cells = torch.nn.functional.pad(filled, (padding, 0, padding, 0), value=pad_value)
    body = (
        cells.reshape(nrow, ncol, channels, cell_h, cell_w)
        .permute(2, 0, 3, 1, 4)
        .reshape(channels, nrow * cell_h, ncol * cell_w)
    )
    grid[:, : nrow * cell_h, : ncol * cell_w] = body
    return grid


def annotate(image: Tensor, labels: Sequence[tuple[int, int, str]]) -> Tensor:
    """Write each ``(x, y, text)`` label on ``image`` (3, H, W) in [0, 1]: white text on a black box whose
    top-left corner is at ``(x, y)``. Returns a new CPU image; the input is unchanged."""
    import numpy as np
    from PIL import Image, ImageDraw

    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    canvas = Image.fromarray(np.ascontiguousarray(array))
    draw = ImageDraw.Draw(canvas)
    for x, y, text in labels:
        box = draw.textbbox((x + 1, y + 1), text)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
        draw.text((x + 1, y + 1), text, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255
