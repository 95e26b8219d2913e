"""Datasets in the iHarmony4 layout, composites made on the fly, paired transforms, image IO."""

from .composite import (
    METHODS,
    CompositeSynthesizer,
    retouch,
    transfer_histogram,
    transfer_lab_mean_std,
    transfer_rgb_mean_cov,
)
from .families import (
    FAMILIES,
    HELDOUT_FAMILIES,
    TRAIN_FAMILIES,
    FamilySynthesizer,
    global_edit,
    local_variation,
    relight,
    stat_transfer,
    transfer_idt,
)
from .iharmony4 import OFFICIAL_SUBSETS, IHarmony4Dataset, Triplet, find_subsets, read_triplets
from .io import ImageReadError, image_to_tensor, load_image, load_mask, mask_to_tensor
from .robustness import UNEDITED, RobustnessDataset
from .splits import VAL_SIZE, split_train_val, train_val_indices
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
    "FAMILIES",
    "TRAIN_FAMILIES",
    "HELDOUT_FAMILIES",
    "FamilySynthesizer",
    "global_edit",
    "stat_transfer",
    "transfer_idt",
    "relight",
    "local_variation",
    "RobustnessDataset",
    "UNEDITED",
    "VAL_SIZE",
    "split_train_val",
    "train_val_indices",
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
