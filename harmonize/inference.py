"""Deprecated: the names of harmonize 0.1's ``harmonize.inference``, now in
:mod:`harmonize.highres` (the harmonizer), :mod:`harmonize.data.io` (files) and
:func:`harmonize.load_model`. Importing this module warns; it will be removed."""

import warnings

from ._factory import load_model
from .data.io import output_format, save_image
from .highres import METHODS, RESIZE_MODES, Harmonizer, clean_mask, harmonize
from .utils.files import publish

warnings.warn(
    "harmonize.inference is deprecated: use harmonize.highres (Harmonizer, harmonize), "
    "harmonize.data.io (save_image) and harmonize.load_model",
    FutureWarning,
    stacklevel=2,
)

__all__ = [
    "Harmonizer",
    "harmonize",
    "load_model",
    "save_image",
    "output_format",
    "publish",
    "clean_mask",
    "METHODS",
    "RESIZE_MODES",
]
