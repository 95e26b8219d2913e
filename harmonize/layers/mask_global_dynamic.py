"""Mask-aware Global Dynamic (MGD) convolution: HDNet's decoder module (Chen et al., ACM MM 2023).

From the globally pooled features of an image, MGD predicts two ``C x C`` 1x1 kernels,
one for the foreground and one for the background. Both are applied to the whole
feature map and every pixel takes the result of its own region, so foreground and
background get distinct, image-dependent transformations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskGlobalDynamic", "dynamic_conv1x1"]


def dynamic_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Apply a different 1x1 convolution to each image of a batch.

    ``out[b, o, y, x] = sum_c weight[b, o, c] * x[b, c, y, x] + bias[b, o]``.

    Args:
        x: features.
        weight: one ``C_out x C`` kernel per image.
        bias: one bias vector per image, or None.

    Returns:
        The convolved features.

    Shape:
        x: (B, C, H, W); weight: (B, C_out, C); bias: (B, C_out) -> (B, C_out, H, W)

    Examples:
        >>> x = torch.randn(2, 8, 5, 5)
        >>> eye = torch.eye(8).expand(2, 8, 8)
        >>> torch.allclose(dynamic_conv1x1(x, eye), x)
        True
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if weight.dim() != 3 or weight.shape[0] != b or weight.shape[2] != c:
        raise ValueError(
            f"weight must be (B, C_out, C) = ({b}, C_out, {c}), got shape {tuple(weight.shape)}"
        )
    cout = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (b, cout):
        raise ValueError(f"bias must be (B, C_out) = ({b}, {cout}), got shape {tuple(bias.shape)}")
    out = torch.bmm(weight.to(x.dtype), x.reshape(b, c, h * w))
    if bias is not None:
        out = out + bias.to(x.dtype)[:, :, None]
    return out.view(b, cout, h, w)


class MaskGlobalDynamic(nn.Module):
    """Per-image foreground and background 1x1 kernels predicted from global features.

    Global average pooling, a 1x1 conv to ``hidden`` channels and a sigmoid give a small
    descriptor of the image; a grouped 1x1 conv (two groups: half the descriptor per
    region, computed as a batched matmul) turns it into a foreground and a background
    ``C x C`` kernel. Both kernels
    are applied (:func:`dynamic_conv1x1`) and blended by the mask, area-resized to the
    feature size: ``out = m * K_fg(x) + (1 - m) * K_bg(x)``. A binary mask picks one
    region's result per pixel; a soft mask (or a mask edge after resizing) blends them.

    The kernel generator is initialised so that, at the start, each generated kernel has
    the scale of a default ``C x C`` 1x1 conv (entries of variance about ``1 / (3C)``
    per term) rather than that of a 2-input layer, which would be ``C`` times larger.

    Args:
        chs: channels ``C`` of the features (in and out).
        hidden: width of the pooled descriptor (4 in the paper); must be even.

    Shape:
        x: (B, C, H, W); mask: (B, 1, h, w) in 0..1 -> (B, C, H, W)

    Examples:
        >>> mgd = MaskGlobalDynamic(16)
        >>> mask = torch.zeros(2, 1, 32, 32); mask[..., :, 16:] = 1
        >>> mgd(torch.randn(2, 16, 16, 16), mask).shape
        torch.Size([2, 16, 16, 16])
    """

    def __init__(self, chs: int, hidden: int = 4) -> None:
        super().__init__()
        if chs < 1:
            raise ValueError(f"chs must be a positive integer, got {chs}")
        if hidden < 2 or hidden % 2:
            raise ValueError(
                f"hidden must be a positive even integer (half per region), got {hidden}"
            )
        self.chs, self.hidden = chs, hidden
        self.squeeze = nn.Linear(chs, hidden)  # the 1x1 conv on the pooled features
        # The grouped 1x1 conv (2 groups) from the descriptor to the two kernels, as a
        # batched matmul: group g maps descriptor channels [g*h/2, (g+1)*h/2) to kernel g.
        self.kernel_weight = nn.Parameter(torch.empty(2, chs * chs, hidden // 2))
        self.kernel_bias = nn.Parameter(torch.empty(2, chs * chs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.chs)
        nn.init.uniform_(self.kernel_weight, -bound, bound)
        nn.init.uniform_(self.kernel_bias, -bound, bound)

    def kernels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The foreground and background kernels of each image, each (B, C, C)."""
        d = torch.sigmoid(self.squeeze(x.mean(dim=(2, 3))))  # (B, hidden)
        d = d.view(x.shape[0], 2, self.hidden // 2)
        k = torch.einsum("gkh,bgh->bgk", self.kernel_weight, d) + self.kernel_bias
        k = k.view(x.shape[0], 2, self.chs, self.chs)
        return k[:, 0], k[:, 1]

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.chs:
            raise ValueError(f"x must be (B, {self.chs}, H, W), got shape {tuple(x.shape)}")
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0]:
            raise ValueError(
                f"mask must be (B, 1, h, w) with B = {x.shape[0]}, got shape {tuple(mask.shape)}"
            )
        m = mask.to(x.dtype)
        if m.shape[-2:] != x.shape[-2:]:
            m = F.interpolate(m, size=x.shape[-2:], mode="area")
        k_fg, k_bg = self.kernels(x)
        return m * dynamic_conv1x1(x, k_fg) + (1 - m) * dynamic_conv1x1(x, k_bg)

    def extra_repr(self) -> str:
        return f"chs={self.chs}, hidden={self.hidden}"
