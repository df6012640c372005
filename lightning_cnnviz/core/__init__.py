"""Pure-torch tensor work behind the monitors: no Lightning and no TensorBoard imports.

Everything here takes a model and tensors and returns tensors, on the model's device, so it is usable from a
notebook or a plain training loop. The verbs:

* activations: :func:`find_activation_sites`, :func:`tap_activations`, :func:`capture`, :class:`ActivationStats`,
  the alert policy :class:`DeadFilterAlerts`, and :class:`ActivationHealth`, ActivationMonitor's state and logic
  for any training loop;
* the protocol every monitor's core object keeps (:class:`Picture`, and :class:`StepPicture` for one that watches
  training steps): ``attach(model, example)``, ``snapshot(model, probe, context)`` returns a :class:`Snapshot`,
  ``state_dict``; the :class:`Context` (:class:`Moment`, :class:`Guard` (error policy), :class:`Ranks` (gathering
  over processes), :class:`InputScale`, the shared :class:`ProbeService`);
* probes: :class:`Probe`, :class:`ProbeSet`, :class:`ProbeService` (one pass for every monitor),
  :func:`select_balanced`; batches: :func:`images_from_batch`, :func:`inputs_from_batch` (any shape),
  :func:`labels_from_batch`; where images go in: :class:`ImageEntry` (the model, or the backbone of one that
  transforms its input first, as a detector does) and :class:`Trunk`;
* tasks: :func:`label_kind`, :func:`decide_task` (what a network is trained for, from its labels or output),
  :func:`choose_target` (the :class:`Target` its saliency maps explain), :func:`describe_labels`,
  :func:`detections_of` (a detector's boxes, labels and scores), :data:`TASKS`;
  :class:`DoesNotApply`, what a picture that cannot be drawn for a model or its batches raises;
* models: :class:`LayerMap` (every layer a picture looks up, once per model), :func:`resolve_modules`,
  :func:`hooked`, :func:`evaluating`,
  :func:`run_to`, :func:`class_name`; argument checks :func:`check_positive_int`, :func:`check_choice`;
* time: :class:`Schedule` (when one monitor logs), :class:`Budget`, the fraction of training time all
  visualizations of a run may take, and when a monitor on ``every_n_epochs="auto"`` logs within it, one
  :class:`Account` per monitor; :func:`check_budget`;
* pass sizes: :func:`pass_size` (the one rule sizing every batched pass, from :func:`activation_bytes` and the
  :func:`memory_bound` of the device);
* drawing: :func:`to_rgb`, :func:`upscale`, :func:`normalize_per_item`, :func:`tile_grid`, :func:`annotate`,
  :func:`captioned_grid`;
* filters (Conv1d, Conv2d, Conv3d): :class:`FilterPanel`, :func:`render_filter_grid`, :func:`filter_smoothness`;
* saliency: the methods a panel draws, :class:`SaliencyMethod` variants registered in :data:`METHODS` (read
  :class:`SaliencySettings`); the functions :func:`vanilla_gradient`, :func:`smoothgrad`, :func:`guided_backprop`,
  :func:`deconvnet`, :func:`grad_cam`, :func:`occlusion`, drawn by :func:`render_saliency`;
  :class:`SaliencyPanel`, SaliencyMonitor's logic for any training loop;
* Zeiler & Fergus: :func:`receptive_fields`, :func:`top_activations`, :func:`project_activations`,
  :func:`crop_patches`, drawn by :func:`render_top_patches`, tracked by :class:`EvolutionHistory`;
  :class:`TopPatchGallery`, TopPatchMonitor's logic for any training loop, on :func:`default_channels`;
* codes: :func:`tsne`, :func:`procrustes_align`, :func:`knn_accuracy`; :class:`EmbeddingMap`, EmbeddingMonitor's
  logic for any training loop, on the layer map's code layer;
* feature visualization: :func:`visualize_features`, :func:`deep_dream`; :class:`FeatureAtlas`,
  FeatureVisMonitor's logic for any training loop.

Each module's ``__all__`` lists what it adds here; the modules' other names serve the package itself.
"""

from lightning_cnnviz.core.activation_health import ActivationHealth
from lightning_cnnviz.core.activation_sites import ActivationSite, ActivationTap, find_activation_sites, tap_activations
from lightning_cnnviz.core.alerts import DeadFilterAlerts, DeadFilterEvent
from lightning_cnnviz.core.batches import images_from_batch, inputs_from_batch, labels_from_batch
from lightning_cnnviz.core.budget import Account, Budget, Schedule, check_budget
from lightning_cnnviz.core.capture import capture
from lightning_cnnviz.core.checks import check_callable, check_choice, check_positive_int
from lightning_cnnviz.core.context import Context, InputScale
from lightning_cnnviz.core.drawing import annotate, captioned_grid, normalize_per_item, tile_grid, to_rgb, upscale
from lightning_cnnviz.core.embedding import knn_accuracy, procrustes_align, tsne
from lightning_cnnviz.core.embedding_map import EmbeddingMap
from lightning_cnnviz.core.feature_atlas import FeatureAtlas
from lightning_cnnviz.core.feature_vis import deep_dream, visualize_features
from lightning_cnnviz.core.filters import FilterPanel, filter_smoothness, render_filter_grid
from lightning_cnnviz.core.history import EvolutionHistory
from lightning_cnnviz.core.layers import ConvInfo, LayerMap
from lightning_cnnviz.core.model import class_name, evaluating, hooked, model_device, resolve_modules, run_to
from lightning_cnnviz.core.passes import activation_bytes, memory_bound, pass_size
from lightning_cnnviz.core.probe import Probe, ProbeService, ProbeSet, select_balanced
from lightning_cnnviz.core.protocol import DoesNotApply, Embedding, Guard, Moment, Picture, Ranks, Snapshot, StepPicture
from lightning_cnnviz.core.receptive_field import receptive_fields
from lightning_cnnviz.core.render import render_saliency, render_top_patches
from lightning_cnnviz.core.saliency import deconvnet, grad_cam, guided_backprop, occlusion, smoothgrad, vanilla_gradient
from lightning_cnnviz.core.saliency_methods import METHODS, SaliencyMethod, SaliencySettings
from lightning_cnnviz.core.saliency_panel import Explanation, SaliencyPanel
from lightning_cnnviz.core.selection import ChannelSelection, default_channels
from lightning_cnnviz.core.stats import ActivationStats
from lightning_cnnviz.core.task import (
    TASKS,
    Target,
    choose_target,
    decide_task,
    describe_labels,
    detections_of,
    label_kind,
)
from lightning_cnnviz.core.top_patch_gallery import TopPatchGallery
from lightning_cnnviz.core.top_patches import crop_patches, project_activations, top_activations
from lightning_cnnviz.core.trunk import ImageEntry, Trunk

__all__ = [
    "METHODS",
    "TASKS",
    "Account",
    "ActivationHealth",
    "ActivationSite",
    "ActivationStats",
    "ActivationTap",
    "Budget",
    "ChannelSelection",
    "Context",
    "ConvInfo",
    "DeadFilterAlerts",
    "DeadFilterEvent",
    "DoesNotApply",
    "Embedding",
    "EmbeddingMap",
    "EvolutionHistory",
    "Explanation",
    "FeatureAtlas",
    "FilterPanel",
    "Guard",
    "ImageEntry",
    "InputScale",
    "LayerMap",
    "Moment",
    "Picture",
    "Probe",
    "ProbeService",
    "ProbeSet",
    "Ranks",
    "SaliencyMethod",
    "SaliencyPanel",
    "SaliencySettings",
    "Schedule",
    "Snapshot",
    "StepPicture",
    "Target",
    "TopPatchGallery",
    "Trunk",
    "activation_bytes",
    "annotate",
    "captioned_grid",
    "capture",
    "check_budget",
    "check_callable",
    "check_choice",
    "check_positive_int",
    "choose_target",
    "class_name",
    "crop_patches",
    "decide_task",
    "deconvnet",
    "deep_dream",
    "default_channels",
    "describe_labels",
    "detections_of",
    "evaluating",
    "filter_smoothness",
    "find_activation_sites",
    "grad_cam",
    "guided_backprop",
    "hooked",
    "images_from_batch",
    "inputs_from_batch",
    "knn_accuracy",
    "label_kind",
    "labels_from_batch",
    "memory_bound",
    "model_device",
    "normalize_per_item",
    "occlusion",
    "pass_size",
    "procrustes_align",
    "project_activations",
    "receptive_fields",
    "render_filter_grid",
    "render_saliency",
    "render_top_patches",
    "resolve_modules",
    "run_to",
    "select_balanced",
    "smoothgrad",
    "tap_activations",
    "tile_grid",
    "to_rgb",
    "top_activations",
    "tsne",
    "upscale",
    "vanilla_gradient",
    "visualize_features",
]
