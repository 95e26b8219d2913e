"""Selective Correlation Fusion (GKNet, Eq. 2-4 and Fig. 5).

Fuses a deep, coarse feature map with a shallow, finer one. Each input yields a channel
attention vector; the grouped vectors are correlated into an ``n x n`` matrix, an
``N x N`` convolution over that matrix gives selective factors, and the sigmoid of
``alpha + b * FC(alpha_bar)`` weights each input before the weighted sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer import Mlp

__all__ = ["SelectiveCorrelationFusion"]


class _ChannelAttentionVector(nn.Module):
    """3x3 conv -> global average pool -> MLP: (B, C_in, H, W) -> (B, C_out)."""

    def __init__(self, in_chs: int, out_chs: int, reduction: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1)
        self.mlp = Mlp(out_chs, max(out_chs // reduction, 4), out_chs, act_layer=nn.ReLU)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(F.relu(self.conv(x)).mean(dim=(2, 3)))


class SelectiveCorrelationFusion(nn.Module):
    """Fuse a shallow feature with a deeper (coarser) one by selected channel attention.

    ``out = S_skip * Conv(skip) + Upsample(S_deep * Conv(deep))`` where the weights ``S``
    come from the grouped correlation of the two channel attention vectors (Eq. 2-4).

    Args:
        in_chs: channels of the deep input (``F_KPB^{l-1}`` in the paper).
        skip_chs: channels of the shallow input (``F_E^l``).
        out_chs: channels of the fused output (``C_l``); defaults to ``skip_chs``.
        groups: number of groups ``n`` the attention vectors are split into;
            ``out_chs`` must be divisible by it.
        corr_kernel_size: size ``N`` of the convolution over the ``n x n`` correlation matrix.

    Shape:
        deep: (B, in_chs, h, w), skip: (B, skip_chs, H, W) -> (B, out_chs, H, W).
        ``h, w`` may differ from ``H, W``: the deep branch is resized bilinearly to ``H, W``.

    Examples:
        >>> scf = SelectiveCorrelationFusion(in_chs=64, skip_chs=32, groups=8)
        >>> scf(torch.randn(1, 64, 8, 8), torch.randn(1, 32, 16, 16)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(
        self,
        in_chs: int,
        skip_chs: int,
        out_chs: int | None = None,
        groups: int = 8,
        corr_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        out_chs = out_chs or skip_chs
        if out_chs % groups != 0:
            raise ValueError(f"out_chs ({out_chs}) must be divisible by groups ({groups})")
        if corr_kernel_size < 1 or corr_kernel_size % 2 == 0:
            raise ValueError(f"corr_kernel_size must be a positive odd integer, got {corr_kernel_size}")
        self.in_chs, self.skip_chs, self.out_chs = in_chs, skip_chs, out_chs
        self.groups = groups
        self.group_len = out_chs // groups
        self.attn_deep = _ChannelAttentionVector(in_chs, out_chs)
        self.attn_skip = _ChannelAttentionVector(skip_chs, out_chs)
        # N x N conv over the correlation matrix, one map of m channels per input ("splitting").
        self.corr_conv = nn.Conv2d(1, 2 * self.group_len, corr_kernel_size, padding=corr_kernel_size // 2)
        self.fc_deep = nn.Linear(out_chs, out_chs)
        self.fc_skip = nn.Linear(out_chs, out_chs)
        self.b = nn.Parameter(torch.zeros(1))
        self.proj_deep = nn.Conv2d(in_chs, out_chs, 3, padding=1)
        self.proj_skip = nn.Conv2d(skip_chs, out_chs, 3, padding=1)

    def selective_weights(self, deep: Tensor, skip: Tensor) -> tuple[Tensor, Tensor]:
        """The channel weights ``(S_deep, S_skip)``, each (B, out_chs), in 0..1."""
        a_deep = self.attn_deep(deep)  # (B, C)
        a_skip = self.attn_skip(skip)
        b, n, m = a_deep.shape[0], self.groups, self.group_len
        corr = torch.bmm(a_deep.view(b, n, m), a_skip.view(b, n, m).transpose(1, 2))  # Eq. 2: (B, n, n)
        sel = self.corr_conv(corr.unsqueeze(1))  # (B, 2m, n, n)
        sel_deep, sel_skip = sel.split(m, dim=1)
        # Row i of A belongs to group i of the deep vector, column j to group j of the skip one.
        bar_deep = sel_deep.mean(dim=3).transpose(1, 2).reshape(b, n * m)
        bar_skip = sel_skip.mean(dim=2).transpose(1, 2).reshape(b, n * m)
        s_deep = torch.sigmoid(a_deep + self.b * self.fc_deep(bar_deep))  # Eq. 3
        s_skip = torch.sigmoid(a_skip + self.b * self.fc_skip(bar_skip))
        return s_deep, s_skip

    def forward(self, deep: Tensor, skip: Tensor) -> Tensor:
        if deep.dim() != 4 or deep.shape[1] != self.in_chs:
            raise ValueError(f"deep must be (B, {self.in_chs}, h, w), got {tuple(deep.shape)}")
        if skip.dim() != 4 or skip.shape[1] != self.skip_chs:
            raise ValueError(f"skip must be (B, {self.skip_chs}, H, W), got {tuple(skip.shape)}")
        if deep.shape[0] != skip.shape[0]:
            raise ValueError(f"batch sizes differ: deep {deep.shape[0]}, skip {skip.shape[0]}")
        s_deep, s_skip = self.selective_weights(deep, skip)
        d = self.proj_deep(deep) * s_deep[:, :, None, None].to(deep.dtype)
        if d.shape[-2:] != skip.shape[-2:]:
            d = F.interpolate(d, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.proj_skip(skip) * s_skip[:, :, None, None].to(skip.dtype) + d  # Eq. 4

    def extra_repr(self) -> str:
        return f"in_chs={self.in_chs}, skip_chs={self.skip_chs}, out_chs={self.out_chs}, groups={self.groups}"
