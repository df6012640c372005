"""What every sink keeps: the :class:`Sink` protocol, the moment an entry goes at, and the pixels of a picture."""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from lightning_cnnviz.core.drawing.basic import to_rgb
from lightning_cnnviz.core.protocol import Moment, Snapshot

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Sink", "as_moment", "caption_of", "finite_values", "markdown", "pixels", "png", "say_once",
           "write_projector"]


@runtime_checkable
class Sink(Protocol):
    """Turns a :class:`~lightning_cnnviz.core.Snapshot` into one tracker's calls.

    ``write(snapshot, moment, per_step)``: every entry at ``moment`` (a :class:`~lightning_cnnviz.core.Moment`, or
    one integer used as both epoch and step). ``per_step`` says the picture is of training steps (the activation
    windows), not of an epoch: TensorBoard puts such entries at the global step and the others at the epoch; every
    other tracker puts every entry at the global step, with the epoch alongside where it takes one. ``where`` says
    in words where the entries go. A sink is made on rank zero only.
    """

    @property
    def where(self) -> str: ...

    def write(self, snapshot: Snapshot, moment: Moment | int, per_step: bool = False) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def as_moment(moment: Moment | int) -> Moment:
    """``moment``, or an integer as the moment whose epoch and step are both that integer (a plain loop's count)."""
    return moment if isinstance(moment, Moment) else Moment(int(moment), int(moment))


def pixels(image: Tensor) -> np.ndarray:
    """A (1, H, W) or (3, H, W) picture in [0, 1] as (H, W, 3) bytes, the values scaled by 255 and truncated as
    TensorBoard's ``add_image`` stores them: every tracker gets the same pixels."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"a picture is (1, H, W) or (3, H, W) in [0, 1], got shape {tuple(image.shape)}")
    values = image.detach().float().clamp(0, 1).mul(255).to(torch.uint8).cpu()
    return values.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy()


def png(image: Tensor) -> bytes:
    """:func:`pixels` as PNG bytes, encoded at zlib's fastest level (two to four times faster than level 6 on our
    pictures, the files between 15% smaller and 20% larger)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def say_once(said: set[str], message: str) -> None:
    """Warn of ``message`` once per ``said`` set (one sink's)."""
    if message not in said:
        said.add(message)
        warnings.warn(message, stacklevel=3)


def write_projector(
    logdir: str, tag: str, step: int, features: Tensor, metadata: list[str] | None, thumbnails: Tensor | None
) -> None:
    """The files TensorBoard's Projector reads, as ``SummaryWriter.add_embedding`` lays them out
    (``<logdir>/<step:05d>/<tag, '/' as %2f>/`` with ``tensors.tsv``, ``metadata.tsv``, ``sprite.png``, and the
    run's ``projector_config.pbtxt``), written in bulk: values with ``%.9g`` (exact for float32) instead of one
    Python ``str`` per value, the sprite tiled in torch. The latest embedding goes first in the config: the
    Projector opens on the first one, and the latest codes are the ones to look at."""
    from google.protobuf import text_format
    from tensorboard.compat import tf
    from tensorboard.plugins.projector.projector_config_pb2 import EmbeddingInfo, ProjectorConfig

    values = features.detach().float().cpu().numpy()
    if values.ndim != 2:
        raise ValueError(f"projector: features must be (N, D), got shape {tuple(values.shape)}")
    count = len(values)
    name = tag.replace("%", "%25").replace("/", "%2f").replace("\\", "%5c")
    padded = str(step).zfill(5)
    subdir = f"{padded}/{name}"
    folder = os.path.join(logdir, subdir)
    tf.io.gfile.makedirs(folder)
    info = EmbeddingInfo(tensor_name=f"{tag}:{padded}", tensor_path=f"{subdir}/tensors.tsv")
    row = "\t".join(["%.9g"] * values.shape[1])
    with tf.io.gfile.GFile(os.path.join(folder, "tensors.tsv"), "wb") as handle:
        handle.write("".join(row % tuple(v) + "\n" for v in values.tolist()).encode())
    if metadata is not None:
        if len(metadata) != count:
            raise ValueError(f"projector: {len(metadata)} metadata strings for {count} points")
        with tf.io.gfile.GFile(os.path.join(folder, "metadata.tsv"), "wb") as handle:
            handle.write(("\n".join(str(m) for m in metadata) + "\n").encode())
        info.metadata_path = f"{subdir}/metadata.tsv"
    if thumbnails is not None:
        if len(thumbnails) != count:
            raise ValueError(f"projector: {len(thumbnails)} thumbnails for {count} points")
        images = to_rgb(thumbnails.detach().float().cpu())
        side, (height, width) = math.ceil(count**0.5), images.shape[-2:]
        # a square sprite of side x side cells, filled row by row (the Projector's layout)
        cells = torch.zeros(side * side, 3, height, width)
        cells[:count] = images
        sprite = cells.view(side, side, 3, height, width).permute(2, 0, 3, 1, 4).reshape(3, side * height, side * width)
        with tf.io.gfile.GFile(os.path.join(folder, "sprite.png"), "wb") as handle:
            handle.write(png(sprite))
        info.sprite.image_path = f"{subdir}/sprite.png"
        info.sprite.single_image_dim.extend([width, height])
    path = os.path.join(logdir, "projector_config.pbtxt")
    config = ProjectorConfig()
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path, "rb") as handle:
            text_format.Parse(handle.read().decode(), config)
    kept = [e for e in config.embeddings if e.tensor_name != info.tensor_name]
    config = ProjectorConfig()
    config.embeddings.extend([info, *kept])
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(text_format.MessageToString(config).encode())


def finite_values(values: Tensor) -> Tensor:
    """A histogram's values on the host, in float64, without the non-finite ones (no tracker bins them)."""
    values = values.detach().double().cpu()
    return values[torch.isfinite(values)]


def markdown(texts: list[str]) -> str:
    """Several texts of one tag as one file's markdown, a blank line after each."""
    return "".join(f"{text}\n\n" for text in texts)


def caption_of(snapshot: Snapshot, tag: str, moment: Moment) -> str:
    """The picture's caption, else its tag, with the moment."""
    return f"{snapshot.captions.get(tag) or tag}, {moment.caption}"
