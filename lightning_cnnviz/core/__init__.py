"""Pure-torch tensor work behind the monitors: no Lightning and no TensorBoard imports.

Everything here takes a model and tensors and returns tensors, on the model's device, so it is usable from a
notebook or a plain training loop. The public names, by topic:

* the protocol every monitor's core object keeps: :class:`Picture` (``attach(model, example)``,
  ``snapshot(model, probe, context)`` returning a :class:`Snapshot`, ``state_dict``), :class:`StepPicture` for one
  that also watches training steps; the :class:`Context` of a snapshot (:class:`Moment`, :class:`Guard` the error
  policy, :class:`Ranks` the processes, :class:`InputScale`, the shared :class:`ProbeService`); :class:`Embedding`
  (Projector data); :class:`DoesNotApply`, what a picture that cannot be drawn for a model raises;
* each monitor's picture: :class:`FilterPanel`, :class:`ActivationHealth`, :class:`ActivationMaps`,
  :class:`SaliencyPanel`, :class:`TopPatchGallery`, :class:`EmbeddingMap`, :class:`FeatureVisPanel`,
  :class:`ClassModels`, :class:`FeatureInversion`, :class:`ActivationAtlas`, :class:`OcclusionFigure`,
  :class:`InvarianceCurves`;
* what they share: :class:`LayerMap` (a model's layers, once), :class:`ChannelSelection`, :class:`Probe`,
  :class:`ProbeSet`, :class:`ProbeService`, :func:`select_balanced`; the time budget :class:`Budget`, one
  :class:`Schedule` and :class:`Account` per monitor; :func:`inputs_from_batch` (where a batch's input is;
  :class:`NoImages` when nowhere); :func:`model_device`;
* activations: :func:`find_activation_sites`, :func:`tap_activations` (an :class:`ActivationTap`) of
  :class:`ActivationSite`\\ s, :class:`ActivationStats`, :class:`DeadFilterAlerts` and their
  :class:`DeadFilterEvent`, a layer's :class:`ChannelHealth`;
* saliency: :func:`vanilla_gradient`, :func:`smoothgrad`, :func:`guided_backprop`, :func:`deconvnet`,
  :func:`grad_cam`, :func:`occlusion` (its forwards, :func:`occlude`, shared with the occlusion figure); the
  variants a panel draws, :class:`SaliencyMethod` registered in :data:`METHODS`, reading :class:`SaliencySettings`;
* Zeiler & Fergus: :func:`receptive_fields`, :func:`top_activations`, :func:`project_activations`,
  :func:`invariance` (curves under translation, scaling, rotation);
* codes: :func:`tsne`, :func:`knn_accuracy`; feature visualization: :func:`visualize_features`,
  :func:`deep_dream`, :func:`render_objective` of an :class:`Objective` (the factories are in
  :mod:`~lightning_cnnviz.core.methods.objectives`), :func:`invert` (feature inversion); filters:
  :func:`render_filter_grid`, :func:`filter_smoothness`;
* the choices some of the monitors' arguments take are typed in their modules: ``Task`` and ``TargetSpec``
  (:mod:`~lightning_cnnviz.core.inputs.task`), ``Normalization`` (:mod:`~lightning_cnnviz.core.drawing.filters`),
  ``Projection`` (:mod:`~lightning_cnnviz.core.monitors.selection`).

The sub-packages show the layers: :mod:`~lightning_cnnviz.core.methods` (the methods; those that change the input and
watch the answer in :mod:`~lightning_cnnviz.core.methods.perturbation`), :mod:`~lightning_cnnviz.core.drawing`,
:mod:`~lightning_cnnviz.core.monitors` (the pictures, their policies and histories; the occlusion figure and the
invariance curves in :mod:`~lightning_cnnviz.core.monitors.perturbation`), :mod:`~lightning_cnnviz.core.model` (layer
map, hooks, runs to a layer, pass sizes) and :mod:`~lightning_cnnviz.core.inputs` (batches, probes, tasks); the
protocol, context, budget and checks are at the top. Methods and drawing never import the monitors. Names not listed
here serve the package itself.
"""

from lightning_cnnviz.core.budget import Account, Budget, Schedule
from lightning_cnnviz.core.context import Context, InputScale
from lightning_cnnviz.core.drawing.filters import filter_smoothness, render_filter_grid
from lightning_cnnviz.core.inputs.batches import NoImages, inputs_from_batch
from lightning_cnnviz.core.inputs.probe import Probe, ProbeService, ProbeSet, select_balanced
from lightning_cnnviz.core.methods.activation_sites import (
    ActivationSite,
    ActivationTap,
    find_activation_sites,
    tap_activations,
)
from lightning_cnnviz.core.methods.embedding import knn_accuracy, tsne
from lightning_cnnviz.core.methods.feature_vis import deep_dream, render_objective, visualize_features
from lightning_cnnviz.core.methods.inversion import invert
from lightning_cnnviz.core.methods.objectives import Objective
from lightning_cnnviz.core.methods.perturbation.invariance import invariance
from lightning_cnnviz.core.methods.perturbation.occlusion import occlude
from lightning_cnnviz.core.methods.saliency import (
    deconvnet,
    grad_cam,
    guided_backprop,
    occlusion,
    smoothgrad,
    vanilla_gradient,
)
from lightning_cnnviz.core.methods.saliency_methods import METHODS, SaliencyMethod, SaliencySettings
from lightning_cnnviz.core.methods.stats import ActivationStats, ChannelHealth
from lightning_cnnviz.core.methods.top_patches import project_activations, top_activations
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import model_device
from lightning_cnnviz.core.model.receptive_field import receptive_fields
from lightning_cnnviz.core.monitors.activation_atlas import ActivationAtlas
from lightning_cnnviz.core.monitors.activation_health import ActivationHealth
from lightning_cnnviz.core.monitors.activation_maps import ActivationMaps
from lightning_cnnviz.core.monitors.alerts import DeadFilterAlerts, DeadFilterEvent
from lightning_cnnviz.core.monitors.class_models import ClassModels
from lightning_cnnviz.core.monitors.embedding_map import EmbeddingMap
from lightning_cnnviz.core.monitors.feature_vis_panel import FeatureVisPanel
from lightning_cnnviz.core.monitors.filter_panel import FilterPanel
from lightning_cnnviz.core.monitors.inversion import FeatureInversion
from lightning_cnnviz.core.monitors.perturbation.invariance_curves import InvarianceCurves
from lightning_cnnviz.core.monitors.perturbation.occlusion_figure import OcclusionFigure
from lightning_cnnviz.core.monitors.saliency_panel import SaliencyPanel
from lightning_cnnviz.core.monitors.selection import ChannelSelection
from lightning_cnnviz.core.monitors.top_patch_gallery import TopPatchGallery
from lightning_cnnviz.core.protocol import DoesNotApply, Embedding, Guard, Moment, Picture, Ranks, Snapshot, StepPicture

__all__ = [
    "METHODS",
    "Account",
    "ActivationAtlas",
    "ActivationHealth",
    "ActivationMaps",
    "ActivationSite",
    "ActivationStats",
    "ActivationTap",
    "Budget",
    "ChannelHealth",
    "ChannelSelection",
    "ClassModels",
    "Context",
    "DeadFilterAlerts",
    "DeadFilterEvent",
    "DoesNotApply",
    "Embedding",
    "EmbeddingMap",
    "FeatureInversion",
    "FeatureVisPanel",
    "FilterPanel",
    "Guard",
    "InputScale",
    "InvarianceCurves",
    "LayerMap",
    "Moment",
    "NoImages",
    "Objective",
    "OcclusionFigure",
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
    "TopPatchGallery",
    "deconvnet",
    "deep_dream",
    "filter_smoothness",
    "find_activation_sites",
    "grad_cam",
    "guided_backprop",
    "inputs_from_batch",
    "invariance",
    "invert",
    "knn_accuracy",
    "model_device",
    "occlude",
    "occlusion",
    "project_activations",
    "receptive_fields",
    "render_filter_grid",
    "render_objective",
    "select_balanced",
    "smoothgrad",
    "tap_activations",
    "top_activations",
    "tsne",
    "vanilla_gradient",
    "visualize_features",
]
