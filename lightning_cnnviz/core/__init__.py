"""Pure-torch tensor work behind the monitors: no Lightning and no TensorBoard imports.

Everything here takes a model and tensors and returns tensors, on the model's device, so it is usable
from a notebook or a plain training loop.
"""

from lightning_cnnviz.core.capture import capture
from lightning_cnnviz.core.embedding import TSNEAffinities, knn_accuracy, procrustes_align, tsne, tsne_affinities
from lightning_cnnviz.core.filters import filter_smoothness, render_filter_grid
from lightning_cnnviz.core.images import annotate, images_from_batch, normalize_per_item, tile_grid, upscale_nearest
from lightning_cnnviz.core.incremental import occluded_logits
from lightning_cnnviz.core.layers import conv_layers, first_conv, resolve_modules
from lightning_cnnviz.core.receptive_field import ReceptiveField, receptive_fields
from lightning_cnnviz.core.relu_sites import (
    RELU_MODULE_TYPES,
    ReluSite,
    find_relu_sites,
    restore_training_flags,
    tap_relus,
)
from lightning_cnnviz.core.render import (
    colormap,
    dead_filter_map,
    grid_assignment,
    render_evolution,
    render_saliency,
    render_scatter,
    render_thumbnail_grid,
    render_top_patches,
    signed_display,
)
from lightning_cnnviz.core.saliency import (
    SALIENCY_METHODS,
    deconvnet,
    grad_cam,
    guided_backprop,
    occlusion,
    override_relu_gradient,
    smoothgrad,
    vanilla_gradient,
)
from lightning_cnnviz.core.stats import ActivationStats, ActivationSummary, LayerSummary
from lightning_cnnviz.core.top_patches import (
    StreamingTopK,
    TopActivations,
    crop_patches,
    merge_top_activations,
    project_activations,
    project_activations_rules,
    top_activations,
)

__all__ = [
    "RELU_MODULE_TYPES",
    "SALIENCY_METHODS",
    "ActivationStats",
    "ActivationSummary",
    "LayerSummary",
    "ReceptiveField",
    "ReluSite",
    "StreamingTopK",
    "TSNEAffinities",
    "TopActivations",
    "annotate",
    "capture",
    "colormap",
    "conv_layers",
    "crop_patches",
    "dead_filter_map",
    "deconvnet",
    "filter_smoothness",
    "find_relu_sites",
    "first_conv",
    "grad_cam",
    "grid_assignment",
    "guided_backprop",
    "images_from_batch",
    "knn_accuracy",
    "merge_top_activations",
    "normalize_per_item",
    "occluded_logits",
    "occlusion",
    "override_relu_gradient",
    "procrustes_align",
    "project_activations",
    "project_activations_rules",
    "receptive_fields",
    "render_evolution",
    "render_filter_grid",
    "render_saliency",
    "render_scatter",
    "render_thumbnail_grid",
    "render_top_patches",
    "resolve_modules",
    "restore_training_flags",
    "signed_display",
    "smoothgrad",
    "tap_relus",
    "tile_grid",
    "top_activations",
    "tsne",
    "tsne_affinities",
    "upscale_nearest",
    "vanilla_gradient",
]
