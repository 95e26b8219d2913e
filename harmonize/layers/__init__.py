"""Reusable layers: every one usable alone in another network."""

from .attention import (
    SpatialSeparatedAttention,
    channel_spatial_gate,
    masked_mean,
    weighted_pixel_sums,
)
from .kernel_modulation import KernelModulation, kernel_modulation
from .kpb import KernelPredictionBlock
from .local_dynamic import LocalDynamic, foreground_positions, local_dynamic
from .lre import LongDistanceReferenceExtractor, sincos_pos_embed_2d
from .mask_global_dynamic import MaskGlobalDynamic, dynamic_conv1x1
from .rain import RegionAwareInstanceNorm, region_aware_instance_norm
from .scf import SelectiveCorrelationFusion
from .transformer import Mlp, SelfAttention, TransformerBlock, self_attention

__all__ = [
    "kernel_modulation",
    "KernelModulation",
    "KernelPredictionBlock",
    "LongDistanceReferenceExtractor",
    "SelectiveCorrelationFusion",
    "sincos_pos_embed_2d",
    "SpatialSeparatedAttention",
    "masked_mean",
    "weighted_pixel_sums",
    "channel_spatial_gate",
    "local_dynamic",
    "LocalDynamic",
    "foreground_positions",
    "dynamic_conv1x1",
    "MaskGlobalDynamic",
    "region_aware_instance_norm",
    "RegionAwareInstanceNorm",
    "self_attention",
    "SelfAttention",
    "Mlp",
    "TransformerBlock",
]
