"""Where the images and labels are in a batch, whatever shape the user's data loader gives it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_cnnviz.core.protocol import DoesNotApply

__all__ = ["NoImages", "images_from_batch", "inputs_from_batch", "labels_from_batch"]

_IMAGE_KEYS = ("image", "images", "x", "input", "inputs", "pixel_values")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y", "mask", "masks")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)} elements"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {list(value)[:10]}"
    return type(value).__name__


class NoImages(DoesNotApply, TypeError):
    """A batch holds no image tensor where the monitor looks: it does not apply to such batches.

    Example:
        >>> try:
        ...     images_from_batch({"text": [1, 2]}, who="MyPicture")
        ... except NoImages as error:
        ...     str(error)[:58]
        'MyPicture: the batch must hold an image tensor of shape (N'
    """


def as_float_images(images: Tensor) -> Tensor:
    """uint8 images as floats in [0, 1], as torchvision's ``to_dtype(..., scale=True)`` converts them."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def _candidate(batch: Any, batch_to_inputs: Callable[[Any], Tensor] | None) -> Any:
    """Where a batch's input is: ``batch_to_inputs(batch)`` when given, else the batch itself, its first element, or
    its ``'image'``-like key (None when a dict has none). The one lookup of images and inputs alike."""
    if batch_to_inputs is not None:
        return batch_to_inputs(batch)
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        key = next((k for k in _IMAGE_KEYS if k in batch), None)
        return batch[key] if key is not None else None
    return batch


def images_from_batch(
    batch: Any, *, who: str = "lightning_cnnviz", batch_to_images: Callable[[Any], Tensor] | None = None
) -> Tensor:
    """The image tensor of a batch, found as :func:`inputs_from_batch` finds inputs; uint8 images become floats in
    [0, 1]. :class:`NoImages` (a TypeError and a ``DoesNotApply``), saying what the batch was and what is accepted,
    when there is no floating or uint8 (N, C, H, W) tensor there.

    Example:
        >>> images_from_batch({"image": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "label": torch.ones(2)}).dtype
        torch.float32
    """
    candidate = _candidate(batch, batch_to_images)
    if isinstance(candidate, Tensor) and candidate.dim() == 4 and _image_dtype(candidate):
        return as_float_images(candidate)
    if batch_to_images is not None:
        raise NoImages(
            f"{who}: `batch_to_images` must return a floating (or uint8) image tensor of shape (N, C, H, W), "
            f"got {candidate!r:.200}."
        )
    raise NoImages(
        f"{who}: the batch must hold an image tensor of shape (N, C, H, W) with a floating (or uint8) dtype: the "
        f"batch itself, the first element of a (images, labels) tuple/list, or a dict value under one of "
        f"{list(_IMAGE_KEYS)}. Got a batch that is {_describe(batch)}"
        + ("" if candidate is batch else f", whose image candidate is {_describe(candidate)}")
        + ". Pass `batch_to_images=` to tell the monitor where the images are."
    )


def inputs_from_batch(
    batch: Any, *, who: str = "lightning_cnnviz", batch_to_inputs: Callable[[Any], Tensor] | None = None
) -> Tensor:
    """The network's input in a batch, of any shape (N, ...): signals (N, C, L), images, clips (N, C, T, H, W),
    features or token ids: ``batch_to_inputs(batch)`` when given, else the batch itself, its first element, or its
    ``'image'``-like key. uint8 images become floats in [0, 1]. :class:`NoImages` when there is no tensor there.

    Example:
        >>> inputs_from_batch((torch.zeros(2, 1, 100), torch.ones(2))).shape
        torch.Size([2, 1, 100])
    """
    candidate = _candidate(batch, batch_to_inputs)
    if isinstance(candidate, Tensor) and candidate.dim() >= 1:
        return as_float_images(candidate) if candidate.dim() == 4 else candidate
    raise NoImages(
        f"{who}: the batch must hold the network's input tensor (N, ...): the batch itself, the first element of a "
        f"tuple/list, or a dict value under one of {list(_IMAGE_KEYS)}. Got a batch that is {_describe(batch)}"
        + ("" if candidate is batch else f", whose input candidate is {_describe(candidate)}")
        + ". Pass `batch_to_images=` to tell the monitor where the inputs are."
    )


def _image_dtype(images: Tensor) -> bool:
    return images.is_floating_point() or images.dtype == torch.uint8


def labels_from_batch(
    batch: Any, images: Tensor, batch_to_labels: Callable[[Any], Tensor | None] | None = None
) -> Tensor | None:
    """The labels of a batch's images: ``batch_to_labels(batch)`` when given, else the second element of an
    ``(images, labels, ...)`` batch or a dict value under one of ``label``, ``labels``, ``target``, ``targets``,
    ``y``, ``mask``, ``masks``. Labels of every task are kept (:func:`~lightning_cnnviz.core.inputs.task.label_kind`):
    integer classes (N,), multi-hot (N, C), values (N,) or (N, K), integer masks (N, H, W); None otherwise.

    Example:
        >>> labels_from_batch((torch.zeros(2, 1, 4, 4), torch.tensor([3, 1])), torch.zeros(2, 1, 4, 4))
        tensor([3, 1])
        >>> labels_from_batch((torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)), torch.zeros(2, 1, 4, 4)) is None
        True
    """
    from lightning_cnnviz.core.inputs.task import label_kind

    if batch_to_labels is not None:
        labels = batch_to_labels(batch)
    elif isinstance(batch, (list, tuple)) and len(batch) > 1:
        labels = batch[1]
    elif isinstance(batch, Mapping):
        labels = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
    else:
        labels = None
    return labels if label_kind(labels, images.shape[0]) is not None else None


def check_images(images: Tensor) -> None:
    """Raise ``TypeError`` unless ``images`` is a floating tensor (N, C, H, W)."""
    if not (isinstance(images, Tensor) and images.dim() == 4 and images.is_floating_point()):
        raise TypeError(f"images must be a floating tensor of shape (N, C, H, W), got {images!r:.120}")


def in_layout_of(tensor: Tensor, images: Tensor) -> Tensor:
    """``tensor`` in the memory format of ``images``: the model runs in the layout (and rounding) it was given."""
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return tensor.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
