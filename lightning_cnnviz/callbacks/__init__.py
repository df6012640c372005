"""Thin Lightning adapters over :mod:`lightning_cnnviz.core`, one monitor per file."""

from lightning_cnnviz.callbacks._epoch import EpochMonitor
from lightning_cnnviz.callbacks.activation_atlas_monitor import ActivationAtlasMonitor
from lightning_cnnviz.callbacks.activation_map_monitor import ActivationMapMonitor
from lightning_cnnviz.callbacks.activation_monitor import ActivationMonitor
from lightning_cnnviz.callbacks.class_model_monitor import ClassModelMonitor
from lightning_cnnviz.callbacks.embedding_monitor import EmbeddingMonitor
from lightning_cnnviz.callbacks.feature_vis_monitor import FeatureVisMonitor
from lightning_cnnviz.callbacks.filter_monitor import FilterMonitor
from lightning_cnnviz.callbacks.invariance_monitor import InvarianceMonitor
from lightning_cnnviz.callbacks.inversion_monitor import InversionMonitor
from lightning_cnnviz.callbacks.occlusion_monitor import OcclusionMonitor
from lightning_cnnviz.callbacks.saliency_monitor import SaliencyMonitor
from lightning_cnnviz.callbacks.top_patch_monitor import TopPatchMonitor

__all__ = [
    "ActivationAtlasMonitor",
    "ActivationMapMonitor",
    "ActivationMonitor",
    "ClassModelMonitor",
    "EmbeddingMonitor",
    "EpochMonitor",
    "FeatureVisMonitor",
    "FilterMonitor",
    "InvarianceMonitor",
    "InversionMonitor",
    "OcclusionMonitor",
    "SaliencyMonitor",
    "TopPatchMonitor",
]
