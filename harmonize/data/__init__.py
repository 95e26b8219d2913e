"""Datasets in the iHarmony4 layout, composites made on the fly, paired transforms, image IO."""

from .composite import (
    METHODS,
    CompositeSynthesizer,
    retouch,
    transfer_histogram,
    transfer_lab_mean_std,
    transfer_rgb_mean_cov,
)
from .iharmony4 import OFFICIAL_SUBSETS, IHarmony4Dataset, Triplet, find_subsets, read_triplets
from .io import ImageReadError, image_to_tensor, load_image, load_mask, mask_to_tensor
from .synthetic import SyntheticCompositeDataset
from .transforms import (
    PairedCompose,
    PairedRandomHorizontalFlip,
    PairedRandomResizedCrop,
    PairedResize,
    resize_image,
)

__all__ = [
    "IHarmony4Dataset",
    "SyntheticCompositeDataset",
    "CompositeSynthesizer",
    "METHODS",
    "OFFICIAL_SUBSETS",
    "Triplet",
    "find_subsets",
    "read_triplets",
    "transfer_lab_mean_std",
    "transfer_rgb_mean_cov",
    "transfer_histogram",
    "retouch",
    "PairedCompose",
    "PairedResize",
    "PairedRandomResizedCrop",
    "PairedRandomHorizontalFlip",
    "resize_image",
    "load_image",
    "load_mask",
    "image_to_tensor",
    "mask_to_tensor",
    "ImageReadError",
]
