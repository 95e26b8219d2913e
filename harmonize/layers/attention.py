"""Mask-guided attention for U-Net decoders, after S2AM (Cun & Pun, TIP 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layout import conv2d_of_concat, is_channels_last
from .transformer import Mlp

__all__ = ["masked_mean", "weighted_pixel_sums", "channel_spatial_gate", "SpatialSeparatedAttention"]


def weighted_pixel_sums(x: Tensor, weights: Tensor) -> Tensor:
    """``sum over pixels of x * weights[:, j]`` for every channel of ``x`` and every weight map.

    One matrix product over the pixels, read in ``x``'s own memory layout (contiguous or
    channels-last), with no ``x``-sized product in between.

    Shape:
        x: (B, C, H, W); weights: (B, J, H, W) -> (B, J, C)
    """
    b, c, h, w = x.shape
    weights = weights.to(x.dtype).reshape(b, -1, h * w)  # (B, J, HW)
    if is_channels_last(x):
        pixels = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view
    else:
        # Also a view. (Not x @ weights^T: torch 2.14's bfloat16 bmm of (24, 65536) by
        # (65536, 2) on one thread dies of a floating-point exception.)
        pixels = x.reshape(b, c, h * w).transpose(1, 2)
    return torch.bmm(weights, pixels)


def masked_mean(x: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean of ``x`` over the pixels where ``mask`` is 1 (weighted by a soft mask).

    Shape:
        x: (B, C, H, W); mask: (B, 1, H, W) -> (B, C)
    """
    return weighted_pixel_sums(x, mask)[:, 0] / (mask.sum(dim=(2, 3)) + eps)


def channel_spatial_gate(x: Tensor, a_fg: Tensor, a_bg: Tensor, s: Tensor) -> Tensor:
    """``x * (a_fg * s + a_bg * (1 - s))``: per-channel weights blended by a spatial map.

    The blend is one batched outer product laid out like ``x`` (``a_bg + s (a_fg - a_bg)``),
    so no step mixes memory layouts.

    Shape:
        x: (B, C, H, W); a_fg, a_bg: (B, C); s: (B, 1, H, W) -> (B, C, H, W)
    """
    b, c, h, w = x.shape
    d = a_fg - a_bg
    if is_channels_last(x):
        g = torch.baddbmm(a_bg[:, None, :], s.reshape(b, h * w, 1), d[:, None, :])  # (B, HW, C)
        return x * g.view(b, h, w, c).permute(0, 3, 1, 2)
    g = torch.baddbmm(a_bg[:, :, None], d[:, :, None], s.reshape(b, 1, h * w))  # (B, C, HW)
    return x * g.view(b, c, h, w)


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
        regions = torch.cat([m, 1 - m], dim=1)  # foreground, background
        sums = weighted_pixel_sums(x, regions)  # (B, 2, C)
        area = regions.sum(dim=(2, 3))[:, :, None] + 1e-6
        stats = (sums / area).flatten(1)  # fg means then bg means, (B, 2C)
        a_fg = torch.sigmoid(self.attn_fg(stats))
        a_bg = torch.sigmoid(self.attn_bg(stats))
        s = conv2d_of_concat([x, m], self.spatial)  # the 3x3 conv over (x, m)
        return x + self.proj(channel_spatial_gate(x, a_fg, a_bg, torch.sigmoid(s)))
