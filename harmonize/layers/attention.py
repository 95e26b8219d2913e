"""Mask-guided attention for U-Net decoders, after S2AM (Cun & Pun, TIP 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer import Mlp

__all__ = ["masked_mean", "SpatialSeparatedAttention"]


def masked_mean(x: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean of ``x`` over the pixels where ``mask`` is 1 (weighted by a soft mask).

    Shape:
        x: (B, C, H, W); mask: (B, 1, H, W) -> (B, C)
    """
    return (x * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + eps)


class SpatialSeparatedAttention(nn.Module):
    """Separate channel attention for foreground and background, blended by a learned spatial map.

    Channel attention vectors are computed from the foreground- and background-pooled
    statistics of ``x``; a 3x3 conv over ``(x, mask)`` predicts where each applies. The
    result is added to ``x`` through a zero-initialised 1x1 conv, so the block starts as
    the identity.

    Args:
        chs: channels of ``x``.
        reduction: hidden width of the attention MLPs is ``chs // reduction``.

    Shape:
        x: (B, C, H, W); mask: (B, 1, h, w), resized to H, W -> (B, C, H, W)
    """

    def __init__(self, chs: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(chs // reduction, 4)
        self.attn_fg = Mlp(2 * chs, hidden, chs, act_layer=nn.ReLU)
        self.attn_bg = Mlp(2 * chs, hidden, chs, act_layer=nn.ReLU)
        self.spatial = nn.Conv2d(chs + 1, 1, 3, padding=1)
        self.proj = nn.Conv2d(chs, chs, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False).to(x.dtype)
        stats = torch.cat([masked_mean(x, m), masked_mean(x, 1 - m)], dim=1)
        a_fg = torch.sigmoid(self.attn_fg(stats))[:, :, None, None]
        a_bg = torch.sigmoid(self.attn_bg(stats))[:, :, None, None]
        s = torch.sigmoid(self.spatial(torch.cat([x, m], dim=1)))
        return x + self.proj(x * (a_fg * s + a_bg * (1 - s)))
