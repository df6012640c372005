"""Pure-torch tensor work behind the monitors: no Lightning and no TensorBoard imports.

Everything here takes a model and tensors and returns tensors, on the model's device, so it is usable from a
notebook or a plain training loop. The verbs:

* activations: :func:`find_activation_sites`, :func:`tap_activations`, :func:`capture`, :class:`ActivationStats`,
  the alert policy :class:`DeadFilterAlerts`, and :class:`ActivationHealth`, ActivationMonitor's state and logic
  for any training loop;
* filters: :func:`render_filter_grid`, :func:`filter_smoothness`;
* saliency: :func:`vanilla_gradient`, :func:`smoothgrad`, :func:`guided_backprop`, :func:`deconvnet`,
  :func:`grad_cam`, :func:`occlusion`, drawn by :func:`render_saliency`; :class:`SaliencyPanel`, SaliencyMonitor's
  logic for any training loop;
* Zeiler & Fergus: :func:`receptive_fields`, :func:`top_activations`, :func:`project_activations`,
  :func:`crop_patches`, drawn by :func:`render_top_patches`, tracked by :class:`EvolutionHistory`;
  :class:`TopPatchGallery`, TopPatchMonitor's logic for any training loop, on :func:`default_layers` and
  :func:`default_channels`;
* codes: :func:`tsne`, :func:`procrustes_align`, :func:`knn_accuracy`; :class:`EmbeddingMap`, EmbeddingMonitor's
  logic for any training loop, on the :func:`penultimate_layer`'s codes;
* probes: :func:`select_balanced`;
* feature visualization: :func:`visualize_features`, :func:`deep_dream`; :class:`FeatureAtlas`,
  FeatureVisMonitor's logic for any training loop.

Each module's ``__all__`` lists what it adds here; the modules' other names serve the package itself.
"""

from lightning_cnnviz.core.activation_health import ActivationHealth
from lightning_cnnviz.core.activation_sites import find_activation_sites, tap_activations
from lightning_cnnviz.core.alerts import DeadFilterAlerts
from lightning_cnnviz.core.capture import capture
from lightning_cnnviz.core.embedding import knn_accuracy, procrustes_align, tsne
from lightning_cnnviz.core.embedding_map import EmbeddingMap, penultimate_layer
from lightning_cnnviz.core.feature_atlas import FeatureAtlas
from lightning_cnnviz.core.feature_vis import deep_dream, visualize_features
from lightning_cnnviz.core.filters import filter_smoothness, render_filter_grid
from lightning_cnnviz.core.history import EvolutionHistory
from lightning_cnnviz.core.probe import select_balanced
from lightning_cnnviz.core.receptive_field import receptive_fields
from lightning_cnnviz.core.render import render_saliency, render_top_patches
from lightning_cnnviz.core.saliency import deconvnet, grad_cam, guided_backprop, occlusion, smoothgrad, vanilla_gradient
from lightning_cnnviz.core.saliency_panel import SaliencyPanel
from lightning_cnnviz.core.stats import ActivationStats
from lightning_cnnviz.core.top_patch_gallery import TopPatchGallery, default_channels, default_layers
from lightning_cnnviz.core.top_patches import crop_patches, project_activations, top_activations

__all__ = [
    "ActivationHealth",
    "ActivationStats",
    "DeadFilterAlerts",
    "EmbeddingMap",
    "EvolutionHistory",
    "FeatureAtlas",
    "SaliencyPanel",
    "TopPatchGallery",
    "capture",
    "crop_patches",
    "deconvnet",
    "deep_dream",
    "default_channels",
    "default_layers",
    "filter_smoothness",
    "find_activation_sites",
    "grad_cam",
    "guided_backprop",
    "knn_accuracy",
    "occlusion",
    "penultimate_layer",
    "procrustes_align",
    "project_activations",
    "receptive_fields",
    "render_filter_grid",
    "render_saliency",
    "render_top_patches",
    "select_balanced",
    "smoothgrad",
    "tap_activations",
    "top_activations",
    "tsne",
    "vanilla_gradient",
    "visualize_features",
]
