"""The sink against TensorBoard's own writer: our bulk image and Projector writers store what ``SummaryWriter``'s
``add_image`` and ``add_embedding`` store, and TensorBoard's event reader reads them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import read_events
from lightning_cnnviz.sinks import TensorBoardSink


def test_images_decode_to_add_images_pixels(tmp_path: Path) -> None:
    """RGB and one-channel pictures, values outside [0, 1] included: the same tag, step, size and pixels as
    ``add_image`` of the same float image."""
    import io

    from torch.utils.tensorboard import SummaryWriter

    generator = torch.Generator().manual_seed(0)
    pictures = {"cnnviz/a/rgb": torch.rand(3, 37, 53, generator=generator) * 1.2 - 0.1,
                "cnnviz/a/gray": torch.rand(1, 20, 9, generator=generator)}  # fmt: skip
    ours, theirs = SummaryWriter(str(tmp_path / "ours")), SummaryWriter(str(tmp_path / "theirs"))
    sink = TensorBoardSink(ours)
    for step in (0, 4):
        for tag, picture in pictures.items():
            sink.image(tag, picture + step / 100, step)
            theirs.add_image(tag, (picture + step / 100).clamp(0, 1), global_step=step, dataformats="CHW")
    ours.close()
    theirs.close()
    events = [read_events(tmp_path / which)["images"] for which in ("ours", "theirs")]
    assert sorted(events[0]) == sorted(events[1]) == sorted(pictures)
    for tag in pictures:
        assert [e.step for e in events[0][tag]] == [e.step for e in events[1][tag]] == [0, 4]
        for mine, reference in zip(events[0][tag], events[1][tag], strict=True):
            assert (mine.width, mine.height) == (reference.width, reference.height)
            decoded = [np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))
                       for e in (mine, reference)]  # fmt: skip
            assert np.array_equal(decoded[0], decoded[1])


def test_projector_files_match_summary_writers(tmp_path: Path) -> None:
    """Our bulk projector writer against ``SummaryWriter.add_embedding``: the same folders and config entries,
    the same float32 values, metadata and sprite pixels, and the latest embedding first in the config."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_cnnviz.sinks import write_projector

    generator = torch.Generator().manual_seed(0)
    codes = torch.randn(23, 7, generator=generator) * 1e3
    labels = [f"class {i % 3}" for i in range(23)]
    thumbnails = torch.rand(23, 1, 6, 6, generator=generator)
    reference = SummaryWriter(str(tmp_path / "torch"))
    for step in (0, 3):
        reference.add_embedding(codes + step, metadata=labels, label_img=thumbnails, global_step=step, tag="a/b")
        write_projector(str(tmp_path / "ours"), "a/b", step, codes + step, labels, thumbnails)
    reference.close()
    for step in ("00000", "00003"):
        theirs, ours = (tmp_path / which / step / "a%2fb" for which in ("torch", "ours"))
        values = np.loadtxt(ours / "tensors.tsv", dtype=np.float32, delimiter="\t")
        assert np.array_equal(values, np.loadtxt(theirs / "tensors.tsv", dtype=np.float32, delimiter="\t"))
        assert np.array_equal(values, (codes + int(step)).numpy())
        assert (ours / "metadata.tsv").read_text() == (theirs / "metadata.tsv").read_text()
        sprites = [np.asarray(Image.open(path / "sprite.png").convert("RGB")).astype(int) for path in (ours, theirs)]
        assert sprites[0].shape == sprites[1].shape == (5 * 6, 5 * 6, 3)  # ceil(sqrt(23)) = 5 cells a side
        assert np.abs(sprites[0] - sprites[1]).max() <= 1  # rounding against truncation to uint8
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    configs = [
        text_format.Parse((tmp_path / which / "projector_config.pbtxt").read_text(), ProjectorConfig())
        for which in ("torch", "ours")
    ]
    their_entries, ours_entries = list(configs[0].embeddings), list(configs[1].embeddings)
    assert [e.tensor_name for e in ours_entries] == ["a/b:00003", "a/b:00000"]  # the latest first
    assert sorted(ours_entries, key=lambda e: e.tensor_name) == sorted(their_entries, key=lambda e: e.tensor_name)
