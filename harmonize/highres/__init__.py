"""High resolution: any photo at any size, the network at its own, the colour change carried back."""

from .color_transform import apply_color_transform, fit_color_transform, upsample_blend
from .convert import mask_from_any, to_uint8_hwc
from .harmonizer import METHODS, RESIZE_MODES, Harmonizer, clean_mask, harmonize, mask_is_empty

__all__ = [
    "Harmonizer",
    "harmonize",
    "fit_color_transform",
    "apply_color_transform",
    "upsample_blend",
    "clean_mask",
    "mask_is_empty",
    "mask_from_any",
    "to_uint8_hwc",
    "METHODS",
    "RESIZE_MODES",
]
