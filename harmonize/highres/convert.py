"""Photos as people hold them (PIL images, numpy arrays, tensors) to and from the tensors models take."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.io import mask_to_tensor, to_uint8_hwc

__all__ = ["mask_from_any", "to_uint8_hwc"]


def mask_from_any(mask: Any) -> Tensor:
    """A mask of any kind -> float tensor (1, H, W), or (B, 1, H, W) for a batch of masks."""
    if isinstance(mask, Tensor):
        m = mask.detach()
        if m.dtype == torch.bool:
            m = m.float()
        elif not m.is_floating_point():
            m = m.float() / (255.0 if float(m.max()) > 1 else 1.0)
        if m.dim() == 2:
            m = m[None]
        if m.dim() == 3 and m.shape[0] in (3, 4):  # an RGB(A) mask: channels averaged
            m = m[:3].mean(0, keepdim=True)
        if m.dim() == 4 and m.shape[0] == 1:
            m = m[0]
        return m
    if isinstance(mask, (Image.Image, np.ndarray)):
        return mask_to_tensor(mask, threshold=None)
    raise TypeError(f"mask must be a PIL image, a numpy array or a tensor, got {type(mask).__name__}")
