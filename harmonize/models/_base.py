"""What every harmonization model shares: the input contract and padding to a multiple."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._config import is_exportable
from ..utils.checks import check_image_mask

__all__ = ["check_inputs", "pad_to_multiple", "blend", "float32_under_autocast"]


def check_inputs(image: Tensor, mask: Tensor) -> None:
    """Raise an InvalidInputError unless image is (B, 3, H, W) and mask (B, 1, H, W), both floating point."""
    check_image_mask(image, mask)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom and right edges (replicating the border) up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if is_exportable():  # no size-dependent shortcut: the traced graph pads (maybe by 0) for every size
        return F.pad(x, (0, pw, 0, ph), mode="replicate")
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def float32_under_autocast(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, in float32 even inside a bfloat16 autocast region.

    For the layers next to the pixels: the one that reads the image and the one that writes
    the correction. All in bfloat16 (8 bits of mantissa), GKNet moved real photos by up to
    2.3/255, mostly from the input image's rounding; with these two small convolutions in
    float32 it stays within 1/255 of the float32 network (``benchmarks/inference.py``). Outside autocast this is
    ``module(x)``, bit for bit.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return module(x)
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float())


def blend(pred: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """``pred * mask + image * (1 - mask)``; where mask is 0 the image comes back bit for bit.

    Bit for bit whatever ``pred`` holds: a NaN or infinite prediction (``NaN * 0`` is NaN)
    never reaches the background.
    """
    return torch.where(mask > 0, pred * mask + image * (1 - mask), image)
