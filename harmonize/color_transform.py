"""Deprecated: moved to :mod:`harmonize.highres.color_transform`. Importing this module warns."""

import warnings

from .highres.color_transform import apply_color_transform, fit_color_transform, upsample_blend

warnings.warn(
    "harmonize.color_transform is deprecated: use harmonize.highres.color_transform", FutureWarning, stacklevel=2
)

__all__ = ["fit_color_transform", "apply_color_transform", "upsample_blend"]
