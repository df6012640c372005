"""Pure-torch tensor work behind the monitors: no Lightning and no TensorBoard imports.

Everything here takes a model and tensors and returns tensors, on the model's device, so it is usable
from a notebook or a plain training loop.
"""

from lightning_cnnviz.core.capture import capture
from lightning_cnnviz.core.filters import filter_smoothness, render_filter_grid
from lightning_cnnviz.core.images import images_from_batch, normalize_per_item, tile_grid, upscale_nearest
from lightning_cnnviz.core.layers import conv_layers, first_conv, resolve_modules
from lightning_cnnviz.core.relu_sites import (
    RELU_MODULE_TYPES,
    ReluSite,
    find_relu_sites,
    restore_training_flags,
    tap_relus,
)
from lightning_cnnviz.core.render import dead_filter_map
from lightning_cnnviz.core.stats import ActivationStats, ActivationSummary, LayerSummary

__all__ = [
    "RELU_MODULE_TYPES",
    "ActivationStats",
    "ActivationSummary",
    "LayerSummary",
    "ReluSite",
    "capture",
    "conv_layers",
    "dead_filter_map",
    "filter_smoothness",
    "find_relu_sites",
    "first_conv",
    "images_from_batch",
    "normalize_per_item",
    "render_filter_grid",
    "resolve_modules",
    "restore_training_flags",
    "tap_relus",
    "tile_grid",
    "upscale_nearest",
]
