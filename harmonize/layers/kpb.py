"""Kernel Prediction Block (GKNet, Eq. 1): fused features in, harmony kernels out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layout import pointwise_conv_contiguous
from .scf import SelectiveCorrelationFusion

__all__ = ["KernelPredictionBlock"]


class _AddFusion(nn.Module):
    """Plain fusion for the ablation without SCF: ``Conv(skip) + Upsample(Conv(deep))``."""

    def __init__(self, in_chs: int, skip_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj_deep = nn.Conv2d(in_chs, out_chs, 3, padding=1)
        self.proj_skip = nn.Conv2d(skip_chs, out_chs, 3, padding=1)

    def forward(self, deep: Tensor, skip: Tensor) -> Tensor:
        d = self.proj_deep(deep)
        if d.shape[-2:] != skip.shape[-2:]:
            d = F.interpolate(d, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.proj_skip(skip) + d


class KernelPredictionBlock(nn.Module):
    """``K^l, F_KPB^l = KPB(F_E^l, F_KPB^{l-1})`` (Eq. 1).

    The encoder feature and the previous KPB feature are fused (by
    :class:`SelectiveCorrelationFusion`, or by a plain sum when ``use_scf=False``), refined
    by a conv, and a post-conv predicts one ``k x k`` kernel per pixel and per target
    channel. The kernel head starts as the identity kernel (centre 1, rest 0), so an
    untrained block leaves the features it modulates unchanged.

    Args:
        in_chs: channels of the previous KPB feature (or of ``F_LR`` for the deepest block).
        skip_chs: channels of the encoder feature ``F_E^l``.
        out_chs: channels of ``F_KPB^l`` passed on to the next block.
        kernel_chs: channels ``C`` of the decoder feature the kernels will filter.
        kernel_size: ``k``.
        use_scf: fuse with SCF (True) or a plain sum (False).
        groups: SCF groups ``n``.
        corr_kernel_size: SCF's ``N``.
        kernel_norm: ``"none"`` (free kernels, the paper says nothing more) or ``"softmax"``
            (each kernel's taps sum to 1, so modulation cannot amplify features; the head then
            starts near the identity: centre weight 0.87 for k=3).

    Shape:
        skip: (B, skip_chs, H, W), deep: (B, in_chs, h, w)
        -> kernels (B, kernel_chs * k * k, H, W), feature (B, out_chs, H, W)
    """

    def __init__(
        self,
        in_chs: int,
        skip_chs: int,
        out_chs: int,
        kernel_chs: int,
        kernel_size: int = 3,
        use_scf: bool = True,
        groups: int = 8,
        corr_kernel_size: int = 3,
        kernel_norm: str = "none",
    ) -> None:
        super().__init__()
        if kernel_norm not in ("none", "softmax"):
            raise ValueError(f"kernel_norm must be 'none' or 'softmax', got {kernel_norm!r}")
        self.kernel_chs, self.kernel_size, self.kernel_norm = kernel_chs, kernel_size, kernel_norm
        if use_scf:
            self.fuse = SelectiveCorrelationFusion(in_chs, skip_chs, out_chs, groups, corr_kernel_size)
        else:
            self.fuse = _AddFusion(in_chs, skip_chs, out_chs)
        self.refine = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(out_chs, out_chs, 3, padding=1), nn.LeakyReLU(0.2))
        self.kernel_head = nn.Conv2d(out_chs, kernel_chs * kernel_size * kernel_size, 1)
        self.reset_kernel_head()

    def reset_kernel_head(self) -> None:
        """Start from identity kernels: zero weights, bias 1 at each kernel's centre."""
        kk = self.kernel_size * self.kernel_size
        if self.kernel_head.weight.is_meta:  # no values to set; normal_ there would import torch._dynamo (1 s)
            return
        nn.init.normal_(self.kernel_head.weight, std=1e-3)
        with torch.no_grad():
            bias = torch.zeros(self.kernel_chs, kk)
            bias[:, kk // 2] = 1.0 if self.kernel_norm == "none" else 4.0
            self.kernel_head.bias.copy_(bias.flatten())

    def extra_repr(self) -> str:
        return f"kernel_chs={self.kernel_chs}, kernel_size={self.kernel_size}, kernel_norm={self.kernel_norm!r}"

    def forward(self, skip: Tensor, deep: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.refine(self.fuse(deep, skip))
        # The kernels go to kernel_modulation, which reads whole planes: made contiguous here.
        kernels = pointwise_conv_contiguous(feat, self.kernel_head.weight, self.kernel_head.bias)
        if self.kernel_norm == "softmax":
            b, _, h, w = kernels.shape
            kk = self.kernel_size * self.kernel_size
            # In the logits' own dtype: autocast would run it in float32, and kernel_modulation
            # cast the kernels back to the features' dtype. Softmax computes in float32 either
            # way and rounds once, so the values are the same, without two passes over the
            # kernels each way (forward and backward at (4, 96, 9, 64, 64), bfloat16: 34-42 -> 25-29 ms).
            with torch.autocast(kernels.device.type, enabled=False):
                kernels = kernels.view(b, self.kernel_chs, kk, h, w).softmax(dim=2).view(b, -1, h, w)
        return kernels, feat
