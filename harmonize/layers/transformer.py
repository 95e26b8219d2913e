"""Pre-norm transformer pieces: an MLP, multi-head self-attention and a ViT block.

They hold the same submodules, parameter names and default initialisation as timm's ``Mlp``
and ViT ``Block`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``; LayerNorm eps 1e-6), so weights saved from either load into the other and give
the same outputs (tested). They live here so that building a model does not import timm,
which imports torchvision and ``torch._dynamo`` (about 2 s of a 4 s ``harmonize run``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["self_attention", "Mlp", "SelfAttention", "TransformerBlock"]


def self_attention(x: Tensor, qkv_weight: Tensor, qkv_bias: Tensor | None, proj_weight: Tensor,
                   proj_bias: Tensor | None, num_heads: int) -> Tensor:
    """Multi-head self-attention over tokens (scaled dot product, no mask).

    Shape:
        x: (B, N, C); qkv_weight: (3C, C); proj_weight: (C, C) -> (B, N, C)
    """
    b, n, c = x.shape
    if c % num_heads != 0:
        raise ValueError(f"token width {c} is not divisible by num_heads ({num_heads})")
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(b, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)
    return F.linear(out.transpose(1, 2).reshape(b, n, c), proj_weight, proj_bias)


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))`` over the last dimension.

    Shape:
        (..., in_features) -> (..., out_features)
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention (:func:`self_attention`) with its ``qkv`` and ``proj`` layers.

    Shape:
        (B, N, dim) -> (B, N, dim)
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self_attention(x, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias, self.num_heads)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Shape:
        (B, N, dim) -> (B, N, dim)

    Examples:
        >>> TransformerBlock(32, num_heads=2)(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
