"""Region-aware Adaptive Instance Normalization (RAIN), after RainNet (Ling et al., CVPR 2021).

HDNet normalises its decoder with RAIN. Each region of the image is normalised by the
statistics of its own pixels; the foreground is then given the background's mean and
standard deviation, so its features take on the background's "style":

    background: (x - mu_bg) / sigma_bg                 * weight_bg + bias_bg
    foreground: ((x - mu_fg) / sigma_fg * sigma_bg + mu_bg) * weight_fg + bias_fg

This is RainNet's formulation: the background is instance-normalised with its own
statistics, while the foreground keeps the background's (unnormalised) statistics.
Means and variances are per image and channel, weighted by the mask (a soft mask
weights pixels and blends the two results), with biased variance and ``eps`` added to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RegionAwareInstanceNorm", "region_aware_instance_norm"]


def _masked_stats(x: Tensor, m: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, std and pixel count of ``x`` over the region ``m``; mean 0 and std 1 when empty."""
    count = m.sum(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    denom = count.clamp_min(torch.finfo(x.dtype).tiny)
    mean = (x * m).sum(dim=(2, 3), keepdim=True) / denom
    var = ((x - mean).square() * m).sum(dim=(2, 3), keepdim=True) / denom
    nonempty = count > 0
    std = torch.where(nonempty, (var + eps).sqrt(), torch.ones_like(var))
    return mean, std, nonempty


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    if weight is not None:
        y = y * weight.to(y.dtype)[None, :, None, None]
    if bias is not None:
        y = y + bias.to(y.dtype)[None, :, None, None]
    return y


def region_aware_instance_norm(
    x: Tensor,
    mask: Tensor,
    weight_fg: Tensor | None = None,
    bias_fg: Tensor | None = None,
    weight_bg: Tensor | None = None,
    bias_bg: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalise each region by its own statistics and give the foreground the background's.

    The mask is area-resized to the size of ``x``. Empty regions are safe: an image
    without background leaves its foreground at its own statistics (normalised and
    de-normalised by them, then the affine), and a region without pixels contributes
    nothing and divides by nothing.

    Args:
        x: features.
        mask: foreground mask in 0..1.
        weight_fg: per-channel scale of the foreground, or None.
        bias_fg: per-channel shift of the foreground, or None.
        weight_bg: per-channel scale of the background, or None.
        bias_bg: per-channel shift of the background, or None.
        eps: added to the variances.

    Returns:
        The normalised features, same shape and dtype as ``x``.

    Shape:
        x: (B, C, H, W); mask: (B, 1, h, w); weights and biases: (C,) -> (B, C, H, W)

    Examples:
        >>> x = torch.randn(1, 4, 8, 8)
        >>> mask = torch.zeros(1, 1, 8, 8); mask[..., :4, :] = 1
        >>> y = region_aware_instance_norm(x, mask)
        >>> torch.allclose(y[..., 4:, :].mean(dim=(2, 3)), torch.zeros(1, 4), atol=1e-5)
        True
        >>> sd = lambda t: t.std(dim=(2, 3), unbiased=False)
        >>> torch.allclose(sd(y[..., :4, :]), sd(x[..., 4:, :]), atol=1e-3)  # the bg's std
        True
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0]:
        raise ValueError(
            f"mask must be (B, 1, h, w) with B = {x.shape[0]}, got shape {tuple(mask.shape)}"
        )
    c = x.shape[1]
    params = {
        "weight_fg": weight_fg,
        "bias_fg": bias_fg,
        "weight_bg": weight_bg,
        "bias_bg": bias_bg,
    }
    for name, p in params.items():
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"{name} must be ({c},) for x with C={c}, got shape {tuple(p.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    m = mask.to(x.dtype)
    if m.shape[-2:] != x.shape[-2:]:
        m = F.interpolate(m, size=x.shape[-2:], mode="area")
    mu_fg, sd_fg, _ = _masked_stats(x, m, eps)
    mu_bg, sd_bg, has_bg = _masked_stats(x, 1 - m, eps)
    # Without background the foreground has nothing to take on: it keeps its own statistics.
    ref_mu = torch.where(has_bg, mu_bg, mu_fg)
    ref_sd = torch.where(has_bg, sd_bg, sd_fg)
    fg = _affine((x - mu_fg) / sd_fg * ref_sd + ref_mu, weight_fg, bias_fg)
    bg = _affine((x - mu_bg) / sd_bg, weight_bg, bias_bg)
    return m * fg + (1 - m) * bg


class RegionAwareInstanceNorm(nn.Module):
    """Module twin of :func:`region_aware_instance_norm`, with learnable per-region affine.

    Args:
        chs: channels ``C`` of the features.
        affine: learn ``weight_fg, bias_fg, weight_bg, bias_bg`` (initialised to 1 and 0).
        eps: added to the variances.

    Shape:
        x: (B, C, H, W); mask: (B, 1, h, w) in 0..1 -> (B, C, H, W)

    Examples:
        >>> rain = RegionAwareInstanceNorm(16)
        >>> mask = torch.zeros(2, 1, 64, 64); mask[..., 16:48, 16:48] = 1
        >>> rain(torch.randn(2, 16, 32, 32), mask).shape
        torch.Size([2, 16, 32, 32])
    """

    def __init__(self, chs: int, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.chs, self.affine, self.eps = chs, affine, eps
        if affine:
            self.weight_fg = nn.Parameter(torch.ones(chs))
            self.bias_fg = nn.Parameter(torch.zeros(chs))
            self.weight_bg = nn.Parameter(torch.ones(chs))
            self.bias_bg = nn.Parameter(torch.zeros(chs))
        else:
            self.register_parameter("weight_fg", None)
            self.register_parameter("bias_fg", None)
            self.register_parameter("weight_bg", None)
            self.register_parameter("bias_bg", None)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.chs:
            raise ValueError(f"x must be (B, {self.chs}, H, W), got shape {tuple(x.shape)}")
        return region_aware_instance_norm(
            x, mask, self.weight_fg, self.bias_fg, self.weight_bg, self.bias_bg, self.eps
        )

    def extra_repr(self) -> str:
        return f"chs={self.chs}, affine={self.affine}, eps={self.eps}"
