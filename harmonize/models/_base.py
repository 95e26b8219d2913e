"""What every harmonization model shares: the input contract and padding to a multiple."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_inputs", "pad_to_multiple", "blend"]


def check_inputs(image: Tensor, mask: Tensor) -> None:
    """Raise a ValueError unless image is (B, 3, H, W) and mask (B, 1, H, W), both floating point."""
    if not (image.dim() == 4 and image.shape[1] == 3):
        raise ValueError(f"image must be (B, 3, H, W) with values in 0..1, got shape {tuple(image.shape)}")
    if not (mask.dim() == 4 and mask.shape[1] == 1):
        raise ValueError(f"mask must be (B, 1, H, W) with values in {{0, 1}}, got shape {tuple(mask.shape)}")
    if mask.shape[0] != image.shape[0] or mask.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"mask {tuple(mask.shape)} must match image {tuple(image.shape)} in batch size, height and width"
        )
    if not image.is_floating_point() or not mask.is_floating_point():
        raise ValueError(f"image and mask must be floating point, got {image.dtype} and {mask.dtype}")


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom and right edges (replicating the border) up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def blend(pred: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """``pred * mask + image * (1 - mask)``: where mask is 0 the image comes back bit for bit."""
    return pred * mask + image * (1 - mask)
