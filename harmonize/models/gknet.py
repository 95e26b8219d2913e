"""GKNet: "Learning Global-aware Kernel for Image Harmonization" (Shen et al., ICCV 2023).

A U-Net with mask-guided attention blocks whose decoder features are filtered by
per-pixel, per-channel harmony kernels (kernel modulation, Eq. 5-6). The kernels are
predicted level by level by Kernel Prediction Blocks (Eq. 1), the deepest of which is fed
the long-distance reference of a transformer over the deepest features (LRE); KPBs fuse
their two inputs by Selective Correlation Fusion (Eq. 2-4).

Levels are counted as in the paper: level 1 is the deepest (1/16 of the input), level 2 is
1/8, level 3 is 1/4, and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._builder import build_model_with_cfg
from .._pretrained import PretrainedCfg
from .._registry import generate_default_cfgs, register_deprecated_name, register_model
from ..layers import (
    KernelPredictionBlock,
    LongDistanceReferenceExtractor,
    SpatialSeparatedAttention,
    kernel_modulation,
)
from ..layers._layout import conv2d_of_concat
from ._base import blend, check_inputs, float32_under_autocast, pad_to_multiple

__all__ = ["GKNet"]


def _conv_bn_act(in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    pad = (kernel_size - stride + 1) // 2 if stride > 1 else kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=pad, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.LeakyReLU(0.2, inplace=True),
    )


class _DownBlock(nn.Sequential):
    """4x4 stride-2 conv then 3x3 conv: (B, in, H, W) -> (B, out, H/2, W/2)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(_conv_bn_act(in_chs, out_chs, 4, 2), _conv_bn_act(out_chs, out_chs, 3))


class _UpBlock(nn.Module):
    """Upsample x2, concatenate the skip feature, two 3x3 convs, mask-guided attention."""

    def __init__(self, in_chs: int, skip_chs: int, out_chs: int, attention: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv_bn_act(in_chs + skip_chs, out_chs), _conv_bn_act(out_chs, out_chs))
        self.attn = SpatialSeparatedAttention(out_chs) if attention else None

    def forward(self, x: Tensor, skip: Tensor, mask: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        conv, bn, act = self.conv[0]
        if torch.is_grad_enabled():  # a conv per input: the concatenation's backward is slow
            y = conv2d_of_concat([x, skip], conv)
        else:  # one conv rounds once under bfloat16 autocast (the split: 1.06/255 from float32)
            y = conv(torch.cat([x, skip], dim=1))
        x = self.conv[1](act(bn(y)))
        return self.attn(x, mask) if self.attn is not None else x


class GKNet(nn.Module):
    """Global-aware Kernel Network.

    Args:
        widths: channels of the encoder at full resolution and at each of the four
            downsamplings (1/2 .. 1/16); the decoder mirrors them.
        lre_dim: token width of the Long-distance Reference Extractor.
        lre_depth: transformer layers of the LRE.
        lre_heads: attention heads of the LRE.
        kernel_size: size ``N`` of the harmony kernels.
        modulated_levels: how many decoder levels, from the deepest, are modulated by
            harmony kernels (each gets its own KPB).
        scf_groups: groups ``n`` of SCF's correlation matrix.
        scf_kernel_size: size of SCF's convolution over the correlation matrix.
        use_kpb: predict harmony kernels and modulate the decoder (off: the U-Net baseline).
        use_lre: feed the deepest KPB the transformer's long-distance reference (off: the
            deepest encoder feature itself).
        use_scf: fuse in each KPB by SCF (off: a plain sum of the two projected inputs).
        attention: mask-guided attention blocks in the decoder (the paper's U-Net has them).
        kernel_norm: ``"none"`` (free harmony kernels) or ``"softmax"`` over each kernel's taps
            (see :class:`~harmonize.layers.KernelPredictionBlock`).

    Shape:
        image: (B, 3, H, W) in 0..1; mask: (B, 1, H, W) in {0, 1} -> (B, 3, H, W).
        Any H, W: the input is padded internally to a multiple of 16 and the output cropped.
    """

    multiple = 16
    #: the layout it runs fastest in on the CPU (``harmonize.utils.device.preferred_memory_format``)
    cpu_memory_format = torch.channels_last

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256, 256),
        lre_dim: int = 256,
        lre_depth: int = 4,
        lre_heads: int = 8,
        kernel_size: int = 3,
        modulated_levels: int = 3,
        scf_groups: int = 8,
        scf_kernel_size: int = 3,
        use_kpb: bool = True,
        use_lre: bool = True,
        use_scf: bool = True,
        attention: bool = True,
        kernel_norm: str = "none",
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5:
            raise ValueError(f"widths must give 5 channel counts (full res, 1/2, 1/4, 1/8, 1/16), got {widths}")
        if not use_kpb and (use_lre or use_scf):
            raise ValueError("LRE and SCF feed the kernel prediction blocks: use_kpb=False needs use_lre=False and use_scf=False")
        if use_kpb and not 1 <= modulated_levels <= 5:
            raise ValueError(f"modulated_levels must be in 1..5, got {modulated_levels}")
        self.widths, self.kernel_size = widths, kernel_size
        self.use_kpb, self.use_lre, self.use_scf = use_kpb, use_lre, use_scf
        self.modulated_levels = modulated_levels if use_kpb else 0

        self.stem = _conv_bn_act(4, widths[0])
        self.down = nn.ModuleList(_DownBlock(widths[i], widths[i + 1]) for i in range(4))
        self.bottleneck = _conv_bn_act(widths[4], widths[4])
        # up[i] goes from level i+1 (paper numbering; 1 = deepest) to the next finer level.
        dec = widths[::-1]  # 1/16, 1/8, 1/4, 1/2, full
        self.up = nn.ModuleList(_UpBlock(dec[i], dec[i + 1], dec[i + 1], attention) for i in range(4))
        self.head = nn.Conv2d(widths[0], 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

        self.lre = (
            LongDistanceReferenceExtractor(widths[4], lre_dim, lre_depth, lre_heads, out_chs=widths[4])
            if use_lre
            else None
        )
        kpbs = []
        for level in range(self.modulated_levels):
            in_chs = dec[level - 1] if level > 0 else widths[4]
            kpbs.append(
                KernelPredictionBlock(
                    in_chs, dec[level], dec[level], dec[level], kernel_size, use_scf, scf_groups, scf_kernel_size,
                    kernel_norm,
                )
            )
        self.kpb = nn.ModuleList(kpbs)

    def predict_kernels(self, feats: list[Tensor]) -> list[Tensor]:
        """Harmony kernels for each modulated level, deepest first.

        Args:
            feats: encoder features, finest first (full res .. 1/16).
        """
        deepest = feats[-1]
        prev = self.lre(deepest) if self.lre is not None else deepest  # F_LR
        kernels = []
        for level, kpb in enumerate(self.kpb):
            k, prev = kpb(feats[-1 - level], prev)
            kernels.append(k)
        return kernels

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        check_inputs(image, mask)
        h, w = image.shape[-2:]
        x = pad_to_multiple(torch.cat([image * 2 - 1, mask], dim=1), self.multiple)
        m = x[:, 3:]
        f0 = float32_under_autocast(self.stem, x)  # the image, not rounded to bfloat16
        if torch.is_autocast_enabled(x.device.type):  # what its two readers would each round it to
            f0 = f0.to(torch.get_autocast_dtype(x.device.type))
        feats = [f0]
        for down in self.down:
            feats.append(down(feats[-1]))
        kernels = self.predict_kernels(feats) if self.use_kpb else []
        y = self.bottleneck(feats[-1])
        for level in range(5):
            if level < len(kernels):
                y = kernel_modulation(y, kernels[level], self.kernel_size)
            if level < 4:
                y = self.up[level](y, feats[-2 - level], m)
        pred = image + float32_under_autocast(self.head, y)[..., :h, :w].to(image.dtype)
        if not self.training:
            pred = pred.clamp(0, 1)
        return blend(pred, image, mask)


def _create_gknet(variant: str, pretrained: bool = False, **kwargs: Any) -> GKNet:
    return build_model_with_cfg(GKNet, variant, pretrained, **kwargs)


_PAPER = "Learning Global-aware Kernel for Image Harmonization (Shen et al., ICCV 2023)"
_PAPER_URL = "https://arxiv.org/abs/2305.11676"
# `gknet`: the configuration whose weights we ship (docs/models/gknet.md says why).
_GKNET_ARGS: dict[str, Any] = dict(
    widths=(24, 48, 96, 128, 160),
    lre_dim=160,
    lre_depth=2,
    lre_heads=4,
    modulated_levels=3,
    scf_groups=8,
    kernel_norm="softmax",
)

# Weights trained here, shipped inside the package (the save_pretrained folder is what
# push_to_hub publishes). Scores: the folders' model cards and docs/models/gknet.md.
# `labelme` is the run under the budget HDNet was given (docs/comparison.md); `labelme_long`
# is the same run trained 5,300 steps further at 256x256; `labelme_families` is
# `labelme_long` fine-tuned 2,200 steps on the composite families, chosen on the
# validation photos: the best GKNet weights we have.
_COMMON = dict(
    paper=_PAPER,
    paper_url=_PAPER_URL,
    license="apache-2.0",
    trained_on="LabelMe-Harmony train (1402 photos), composites made on the fly",
)

default_cfgs = generate_default_cfgs(
    {
        # The first tag of an architecture is its default.
        "gknet.labelme_families": PretrainedCfg(
            **_COMMON,
            file="weights/gknet.labelme_families",
            metrics={"LabelMe test fMSE / MSE / PSNR (iHarmony4 protocol)": "576.9 / 135.5 / 30.12"},
        ),
        "gknet.labelme_long": PretrainedCfg(
            **_COMMON,
            file="weights/gknet.labelme_long",
            metrics={"LabelMe test fMSE / MSE / PSNR (iHarmony4 protocol)": "586.3 / 137.3 / 30.03"},
        ),
        "gknet.labelme": PretrainedCfg(
            **_COMMON,
            file="weights/gknet.labelme",
            metrics={"LabelMe test fMSE / MSE / PSNR (iHarmony4 protocol)": "660.0 / 153.6 / 29.30"},
        ),
        "gknet_large.untrained": PretrainedCfg(paper=_PAPER, paper_url=_PAPER_URL, license="apache-2.0"),
        "test_gknet.untrained": PretrainedCfg(paper=_PAPER, paper_url=_PAPER_URL, license="apache-2.0"),
    }
)


@register_model
def gknet(pretrained: bool = False, **kwargs: Any) -> GKNet:
    """GKNet as we ship it: widths 24..160, a 2-layer LRE, softmax-normalised kernels at three levels."""
    return _create_gknet("gknet", pretrained, variant_args=_GKNET_ARGS, **kwargs)


@register_model
def gknet_large(pretrained: bool = False, **kwargs: Any) -> GKNet:
    """GKNet at the paper's scale: widths 32..256, a 4-layer LRE, free (unnormalised) kernels."""
    return _create_gknet("gknet_large", pretrained, **kwargs)


@register_model
def test_gknet(pretrained: bool = False, **kwargs: Any) -> GKNet:
    """A tiny GKNet for tests: every part present, a few thousand parameters."""
    args = dict(widths=(4, 8, 8, 16, 16), lre_dim=16, lre_depth=1, lre_heads=2, scf_groups=4)
    return _create_gknet("test_gknet", pretrained, variant_args=args, **kwargs)


# gknet_small was this network with free kernels; its tags held softmax-kernel weights, which
# are gknet's. So `gknet_small` without weights (and folders saved under that name) keeps its
# free kernels, and `gknet_small.labelme*` / pretrained=True give gknet's weights.
register_deprecated_name("gknet_small", "gknet", args={"kernel_norm": "none"})
