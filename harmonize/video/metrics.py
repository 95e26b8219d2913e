"""Temporal metrics for harmonized video: the foreground's mean colour and its flicker.

``flicker`` measures how much the foreground's mean colour jumps from one frame to the next
*beyond* what the ground truth does (the scene itself may brighten, or the object move into
shade)::

    mu_t   = mean colour of the output's foreground in frame t   (RGB, 0..255)
    nu_t   = the same for the ground truth
    flicker = mean over t >= 1 of || (mu_t - mu_{t-1}) - (nu_t - nu_{t-1}) ||_2

0 for a harmonization whose colour follows the ground truth's exactly (however wrong its
level); it grows with the frame-to-frame wobble of the colour change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["foreground_mean", "flicker"]


def foreground_mean(image: Tensor, mask: Tensor) -> Tensor:
    """The mean colour of the foreground on the 0..255 scale, NaN without foreground.

    Shape:
        image: (3, H, W) ``uint8`` or float in 0..1; mask: (1, H, W) or (H, W) in 0..1 -> (3,) float64
    """
    x = image.double() if image.dtype == torch.uint8 else image.double() * 255.0
    m = mask.double().reshape(1, *x.shape[-2:])
    area = m.sum()
    if area <= 0:
        return torch.full((3,), float("nan"), dtype=torch.float64)
    return (x * m).sum(dim=(1, 2)) / area


def flicker(pred_means: Sequence[Tensor] | Tensor, target_means: Sequence[Tensor] | Tensor) -> float:
    """Mean frame-to-frame change of the foreground's mean colour, beyond the ground truth's.

    Shape:
        pred_means, target_means: (T, 3) (or T tensors (3,)) from :func:`foreground_mean` -> float
    """
    p = torch.stack(list(pred_means)) if not isinstance(pred_means, Tensor) else pred_means
    g = torch.stack(list(target_means)) if not isinstance(target_means, Tensor) else target_means
    if p.shape != g.shape or p.dim() != 2 or p.shape[0] < 2:
        raise ValueError(f"need two (T, 3) sequences with T >= 2, got {tuple(p.shape)} and {tuple(g.shape)}")
    d = (p[1:] - p[:-1]) - (g[1:] - g[:-1])
    return float(d.double().norm(dim=1).nanmean())
