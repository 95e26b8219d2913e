"""Long-distance Reference Extractor (GKNet, Sec. 3.2): a transformer over the deepest features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .transformer import TransformerBlock

__all__ = ["sincos_pos_embed_2d", "LongDistanceReferenceExtractor"]


def sincos_pos_embed_2d(height: int, width: int, dim: int, device=None, dtype=None) -> Tensor:
    """2-D sine-cosine position embedding on normalised coordinates, for any grid size.

    Coordinates are fractions of the map (0..1), so a token keeps its embedding when the
    input grows: a 32x32 map at 512 px spans the same range as a 16x16 map at 256 px.

    Shape:
        -> (height * width, dim); ``dim`` must be divisible by 4.
    """
    if dim % 4 != 0:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(1000.0) / quarter))
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi * 16
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi * 16
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    ay = gy.reshape(-1, 1) * freqs
    ax = gx.reshape(-1, 1) * freqs
    emb = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    return emb.to(dtype) if dtype is not None else emb


class LongDistanceReferenceExtractor(nn.Module):
    """Transformer layers over the pixels of a feature map, then a post-conv (F_LR).

    Every pixel of the deepest encoder feature is a token; ``depth`` pre-norm transformer
    blocks (:class:`~harmonize.layers.TransformerBlock`, timm's ViT ``Block`` in parameters
    and outputs) mix them globally, and a 3x3 convolution maps the result back to a feature
    map: the long-distance reference feature.

    Args:
        in_chs: channels of the input feature map.
        embed_dim: token width.
        depth: number of transformer layers ``l``.
        num_heads: attention heads.
        out_chs: channels of the output map; defaults to ``in_chs``.
        mlp_ratio: hidden width of each block's MLP relative to ``embed_dim``.

    Shape:
        (B, in_chs, h, w) -> (B, out_chs, h, w), for any h, w.

    Examples:
        >>> lre = LongDistanceReferenceExtractor(64, embed_dim=32, depth=1, num_heads=2)
        >>> lre(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        in_chs: int,
        embed_dim: int = 256,
        depth: int = 4,
        num_heads: int = 8,
        out_chs: int | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.in_chs, self.embed_dim = in_chs, embed_dim
        self.out_chs = out_chs or in_chs
        self.embed = nn.Conv2d(in_chs, embed_dim, 1)
        self.blocks = nn.Sequential(
            *[TransformerBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.post_conv = nn.Conv2d(embed_dim, self.out_chs, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chs:
            raise ValueError(f"expected (B, {self.in_chs}, h, w), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, hw, D)
        tokens = tokens + sincos_pos_embed_2d(h, w, self.embed_dim, x.device, tokens.dtype)
        tokens = self.norm(self.blocks(tokens))
        return self.post_conv(tokens.transpose(1, 2).reshape(b, self.embed_dim, h, w))
