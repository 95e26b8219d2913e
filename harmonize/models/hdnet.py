"""HDNet: "Hierarchical Dynamic Image Harmonization" (Chen et al., ACM MM 2023).

A U-Net whose features are adapted from local to global view:

- **Local Dynamic** (LD, :class:`~harmonize.layers.LocalDynamic`) at the bottleneck:
  every foreground position is rewritten from its ``K`` most similar background
  positions.
- **Mask-aware Global Dynamic** (MGD, :class:`~harmonize.layers.MaskGlobalDynamic`)
  after the skip concatenations of the three finest decoder levels: per-image 1x1
  kernels, one for the foreground and one for the background.
- **RAIN** (:class:`~harmonize.layers.RegionAwareInstanceNorm`) after every decoder conv:
  the foreground's features take on the background's statistics.

With ``w = base_width`` the encoder is (instance norm without affine, LeakyReLU 0.2)::

    e0 conv3x3 in->w      1      e4 conv3x3 8w->8w       1/4
    e1 conv4x4/2 w->2w    1/2    e5 conv4x4/2 8w->8w     1/8
    e2 conv3x3 2w->4w     1/2    e6 conv3x3 8w->8w       1/8  -> LD
    e3 conv4x4/2 4w->8w   1/4

and the decoder (conv, RAIN, ReLU; ``[a, b]`` is channel concatenation)::

    d0 conv3x3 LD(e6) -> 8w                 1/8
    d1 conv3x3 [d0, e6] -> 8w               1/8
    d2 convT4x4/2 [d1, e5] -> 8w            1/4
    d3 conv3x3 [d2, e4] -> 8w               1/4
    d4 convT4x4/2 [d3, e3] -> 4w            1/2
    d5 conv3x3 MGD([d4, e2]) -> 2w          1/2
    d6 convT4x4/2 MGD([d5, e1]) -> w        1
    out conv3x3 MGD([d6, e0]) -> 3, tanh    1
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._builder import build_model_with_cfg
from .._pretrained import PretrainedCfg
from .._registry import generate_default_cfgs, register_deprecated_name, register_model
from ..layers import LocalDynamic, MaskGlobalDynamic, RegionAwareInstanceNorm
from ._base import blend, check_inputs, pad_to_multiple

__all__ = ["HDNet"]


def _enc_block(in_chs: int, out_chs: int, down: bool) -> nn.Sequential:
    """conv (4x4 stride 2 if ``down``, else 3x3), instance norm without affine, LeakyReLU."""
    conv = (
        nn.Conv2d(in_chs, out_chs, 4, stride=2, padding=1, bias=False)
        if down
        else nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
    )
    return nn.Sequential(
        conv, nn.InstanceNorm2d(out_chs, affine=False), nn.LeakyReLU(0.2, inplace=True)
    )


class _DecBlock(nn.Module):
    """conv (4x4 stride-2 transposed if ``up``, else 3x3), RAIN (or instance norm), ReLU.

    The convs have no bias: both normalisations subtract per-region means, which would
    remove it.
    """

    def __init__(self, in_chs: int, out_chs: int, up: bool, rain: bool) -> None:
        super().__init__()
        self.conv = (
            nn.ConvTranspose2d(in_chs, out_chs, 4, stride=2, padding=1, bias=False)
            if up
            else nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        )
        self.norm = (
            RegionAwareInstanceNorm(out_chs) if rain else nn.InstanceNorm2d(out_chs, affine=True)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.norm(x, mask) if isinstance(self.norm, RegionAwareInstanceNorm) else self.norm(x)
        return self.act(x)


class HDNet(nn.Module):
    """Hierarchical Dynamic Network.

    Args:
        base_width: channels ``w`` of the first encoder level; the widths are
            ``w, 2w, 4w, 8w, 8w, 8w, 8w`` (32 gives the paper's 32..256).
        concat_mask: feed the mask to the encoder as a 4th input channel. The public code
            gives the encoder the composite only (the mask reaches LD, MGD and RAIN);
            concatenating it tells the encoder where the foreground is from the start.
        top_k: background matches ``K`` per foreground position in LD.
        ld_chunk_size: query positions LD matches at once; bounds its memory at
            ``B x ld_chunk_size x (H/8 * W/8)`` similarities without changing the result.
        use_ld: apply Local Dynamic at the bottleneck (off: the bottleneck passes through).
        use_mgd: apply Mask-aware Global Dynamic at the three finest skip concatenations.
        use_rain: normalise the decoder with RAIN (off: instance norm with affine).

    Shape:
        image: (B, 3, H, W) in 0..1; mask: (B, 1, H, W) in {0, 1} -> (B, 3, H, W).
        Any H, W: the input is padded internally to a multiple of 8 and the output cropped;
        pixels outside the mask come back bit for bit.
    """

    multiple = 8

    def __init__(
        self,
        base_width: int = 32,
        concat_mask: bool = True,
        top_k: int = 1,
        ld_chunk_size: int = 1024,
        use_ld: bool = True,
        use_mgd: bool = True,
        use_rain: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(base_width, int) or base_width < 1:
            raise ValueError(f"base_width must be a positive integer, got {base_width!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        if ld_chunk_size < 1:
            raise ValueError(f"ld_chunk_size must be a positive integer, got {ld_chunk_size}")
        w = base_width
        self.base_width, self.concat_mask = w, concat_mask
        self.use_ld, self.use_mgd, self.use_rain = use_ld, use_mgd, use_rain
        enc = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w, 8 * w]
        self.widths = tuple(enc)
        in_chs = 4 if concat_mask else 3
        self.encoder = nn.ModuleList(
            _enc_block(enc[i - 1] if i else in_chs, enc[i], down=i in (1, 3, 5)) for i in range(7)
        )
        self.ld = LocalDynamic(enc[6], top_k=top_k, chunk_size=ld_chunk_size) if use_ld else None
        # Decoder block i takes [d_{i-1}, e_{7-i}] (block 0 takes the bottleneck alone).
        dec = [8 * w, 8 * w, 8 * w, 8 * w, 4 * w, 2 * w, w]
        up = (False, False, True, False, True, False, True)
        dec_in = [enc[6]] + [dec[i - 1] + enc[7 - i] for i in range(1, 7)]
        self.decoder = nn.ModuleList(
            _DecBlock(dec_in[i], dec[i], up[i], use_rain) for i in range(7)
        )
        # MGD on the inputs of d5, d6 and the output conv.
        self.mgd = (
            nn.ModuleList(MaskGlobalDynamic(c) for c in (dec_in[5], dec_in[6], dec[6] + enc[0]))
            if use_mgd
            else None
        )
        self.head = nn.Conv2d(dec[6] + enc[0], 3, 3, padding=1)

    def forward_features(self, x: Tensor, mask: Tensor) -> Tensor:
        """Padded network input and padded mask -> ``head`` input (B, 2w, H, W)."""
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        y = self.ld(feats[6], mask) if self.ld is not None else feats[6]
        for i, block in enumerate(self.decoder):
            if i > 0:
                y = torch.cat([y, feats[7 - i]], dim=1)
                if self.mgd is not None and i >= 5:
                    y = self.mgd[i - 5](y, mask)
            y = block(y, mask)
        y = torch.cat([y, feats[0]], dim=1)
        return self.mgd[2](y, mask) if self.mgd is not None else y

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        check_inputs(image, mask)
        h, w = image.shape[-2:]
        m = pad_to_multiple(mask, self.multiple)
        x = pad_to_multiple(image * 2 - 1, self.multiple)
        if self.concat_mask:
            x = torch.cat([x, m], dim=1)
        out = torch.tanh(self.head(self.forward_features(x, m)))
        pred = ((out[..., :h, :w] + 1) / 2).to(image.dtype)
        if not self.training:
            pred = pred.clamp(0, 1)
        return blend(pred, image, mask)


def _create_hdnet(variant: str, pretrained: bool = False, **kwargs: Any) -> HDNet:
    return build_model_with_cfg(HDNet, variant, pretrained, **kwargs)


_PAPER = "Hierarchical Dynamic Image Harmonization (Chen et al., ACM MM 2023)"
_PAPER_URL = "https://arxiv.org/abs/2312.06886"

# Weights trained here, shipped inside the package (the save_pretrained folder is what
# push_to_hub publishes): `labelme` under the budget of gknet.labelme, `labelme_families` the
# same run fine-tuned 2,200 steps on the composite families, `labelme_families_long` that one
# trained 15 x 1,300 steps more at a larger learning rate (the last two at 1e-4); each chosen on the validation photos.
# Scores: the folders' model cards, docs/models/hdnet.md and docs/comparison.md.
_COMMON = dict(
    paper=_PAPER,
    paper_url=_PAPER_URL,
    license="apache-2.0",
    trained_on="LabelMe-Harmony train (1402 photos), composites made on the fly",
)

default_cfgs = generate_default_cfgs(
    {
        # The first tag of an architecture is its default.
        "hdnet.labelme_families_long": PretrainedCfg(
            **_COMMON,
            file="weights/hdnet.labelme_families_long",
            metrics={"LabelMe test fMSE / MSE / PSNR (iHarmony4 protocol)": "504.6 / 122.1 / 30.24"},
        ),
        "hdnet.labelme_families": PretrainedCfg(
            **_COMMON,
            file="weights/hdnet.labelme_families",
            metrics={"LabelMe test fMSE / MSE / PSNR (iHarmony4 protocol)": "732.6 / 175.9 / 28.49"},
        ),
        "hdnet.labelme": PretrainedCfg(
            **_COMMON,
            file="weights/hdnet.labelme",
            metrics={"LabelMe test fMSE / MSE / PSNR (iHarmony4 protocol)": "775.3 / 186.8 / 28.33"},
        ),
        "hdnet_large.untrained": PretrainedCfg(paper=_PAPER, paper_url=_PAPER_URL, license="apache-2.0"),
        "test_hdnet.untrained": PretrainedCfg(paper=_PAPER, paper_url=_PAPER_URL, license="apache-2.0"),
    }
)


@register_model
def hdnet(pretrained: bool = False, **kwargs: Any) -> HDNet:
    """HDNet as we ship it: widths 16..128 (a quarter of the paper's parameters), LD, MGD, RAIN."""
    return _create_hdnet("hdnet", pretrained, variant_args={"base_width": 16}, **kwargs)


@register_model
def hdnet_large(pretrained: bool = False, **kwargs: Any) -> HDNet:
    """HDNet at the paper's scale: widths 32..256, LD with K=1, MGD at three levels, RAIN decoder."""
    return _create_hdnet("hdnet_large", pretrained, **kwargs)


@register_model
def test_hdnet(pretrained: bool = False, **kwargs: Any) -> HDNet:
    """A tiny HDNet for tests: every part present (widths 2..16), LD matched in chunks of 16."""
    return _create_hdnet(
        "test_hdnet", pretrained, variant_args={"base_width": 2, "ld_chunk_size": 16}, **kwargs
    )


# hdnet_small was this network before hdnet became it.
register_deprecated_name("hdnet_small", "hdnet")
