"""Local Dynamic (LD) matching: HDNet's bottleneck module (Chen et al., ACM MM 2023).

Every foreground position looks for the background positions whose features are most
similar to its own (dot product), gathers the best ``K`` of them and is rewritten by a
fusion of its own feature with theirs. Background positions are left as they are.

The similarity between all foreground and all background positions is an ``HW x HW``
matrix per image. It is never built whole: query positions are processed in chunks, so
the peak memory of the matching is ``B x chunk_size x HW`` similarities, and the result
does not depend on the chunk size. On CUDA, where triton is installed, one Triton kernel
keeps a running top-k per query instead (:mod:`harmonize.layers._triton_ops`), so no
similarities are stored at all.

Unlike the public HDNet code, no softmax is taken over the spatial axis (there it
multiplied the fused features by about ``1 / HW``); the gathered features are used as
they are.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._config import is_exportable
from ._gpu import triton_ops

__all__ = ["LocalDynamic", "foreground_positions", "local_dynamic"]

# The Triton kernel compares in float32: float64 stays on the PyTorch path.
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def foreground_positions(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Which positions of an ``H x W`` feature map belong to the foreground.

    The mask is area-resized to ``size`` (each cell gets the fraction of its pixels that
    are foreground) and thresholded at 0.5; at the mask's own size this thresholds a soft
    mask at 0.5.

    Args:
        mask: foreground mask in 0..1.
        size: ``(H, W)`` of the feature map.

    Returns:
        A boolean map, True on the foreground.

    Shape:
        mask: (B, 1, h, w) -> (B, 1, H, W)
    """
    if not mask.is_floating_point():
        mask = mask.float()
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=tuple(size), mode="area")
    return mask >= 0.5


def _check(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor, top_k: int, chunk_size: int
) -> None:
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if query.dim() != 4:
        raise ValueError(f"query_feat must be (B, C, H, W), got shape {tuple(query.shape)}")
    if key.dim() != 4 or key.shape[:2] != query.shape[:2] or key.shape[2:] != query.shape[2:]:
        raise ValueError(
            f"key_feat {tuple(key.shape)} must have the shape of query_feat {tuple(query.shape)}"
        )
    if value.dim() != 4 or value.shape[0] != query.shape[0] or value.shape[2:] != query.shape[2:]:
        raise ValueError(
            f"value_feat {tuple(value.shape)} must match query_feat {tuple(query.shape)} "
            "in batch size, height and width"
        )
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != query.shape[0]:
        raise ValueError(
            f"mask must be (B, 1, h, w) with B = {query.shape[0]}, got shape {tuple(mask.shape)}"
        )


def _flatten_features(query_feat: Tensor, key_feat: Tensor, value_feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B, N, C) queries, (B, C, N) keys in the queries' dtype, (B, N, Cv) values."""
    q = query_feat.flatten(2).transpose(1, 2)
    k = key_feat.to(query_feat.dtype).flatten(2)
    v = value_feat.flatten(2).transpose(1, 2)
    return q, k, v


def _match(q: Tensor, k: Tensor, v: Tensor, fg: Tensor, top_k: int) -> Tensor:
    """For each query, the mean value of its ``top_k`` best-matching background keys.

    Shape:
        q (B, m, C), k (B, C, N), v (B, N, Cv), fg (B, N) foreground keys -> (B, m, Cv)
    """
    sim = torch.bmm(q, k).masked_fill(fg[:, None, :], float("-inf"))  # foreground keys cannot be chosen
    idx = sim.topk(top_k, dim=-1).indices  # (B, m, top_k)
    # A selected key that is not background (fewer than top_k of them) does not count.
    valid = (~fg).gather(1, idx.flatten(1)).view(idx.shape)
    return _gather_mean(v, idx, valid)


def _gather_mean(v: Tensor, idx: Tensor, valid: Tensor) -> Tensor:
    """The mean of the values at the valid selected keys (zero where none is valid).

    Shape:
        v (B, N, Cv), idx (B, m, top_k) key indices in 0..N-1, valid (B, m, top_k) bool
        -> (B, m, Cv)
    """
    b, m, top_k = idx.shape
    cv = v.shape[-1]
    valid = valid[..., None].to(v.dtype)
    gathered = v.gather(1, idx.flatten(1)[..., None].expand(-1, -1, cv)).view(b, m, top_k, cv)
    return (gathered * valid).sum(2) / valid.sum(2).clamp_min(1)


def _match_triton(
    ops: ModuleType, q: Tensor, k: Tensor, v: Tensor, fg: Tensor, top_k: int
) -> Tensor:
    """:func:`_match` over every query at once, selected by the Triton kernel (no ``N x N``
    similarities in memory); the gathering, and so the gradient, is :func:`_gather_mean`."""
    idx = ops.local_dynamic_topk(q, k, fg, top_k)  # -1: no background key left
    return _gather_mean(v, idx.clamp_min(0), idx >= 0)


def local_dynamic(
    query_feat: Tensor,
    key_feat: Tensor,
    mask: Tensor,
    top_k: int = 1,
    chunk_size: int = 1024,
    value_feat: Tensor | None = None,
) -> Tensor:
    """For every foreground position, the mean of its ``top_k`` best-matching background features.

    Position ``p`` of image ``b`` is matched against the background positions ``q`` of
    the same image by the dot product ``<query_feat[b, :, p], key_feat[b, :, q]>``; the
    ``top_k`` highest scoring ones are selected and their ``value_feat`` (``key_feat`` by
    default) averaged. Averaging, rather than concatenating, keeps the output width
    independent of ``top_k``. Selection is piecewise constant, so gradients flow to the
    gathered values only, not through the similarities.

    The result is zero at background positions and in images without background (there
    is nothing to match). An image with fewer than ``top_k`` background positions
    averages all of them.

    Computed ``chunk_size`` query positions at a time: peak memory is
    ``B x chunk_size x H x W`` similarities, and the result is the same for every chunk
    size.

    Args:
        query_feat: features of the positions looking for a match.
        key_feat: features they are compared with (same width as ``query_feat``).
        mask: foreground mask in 0..1; resized to ``H x W`` by :func:`foreground_positions`.
        top_k: number of background positions gathered per foreground position.
        chunk_size: query positions processed at once.
        value_feat: features gathered at the selected positions; ``key_feat`` if None.

    Returns:
        The matched background features, zero outside the foreground.

    Shape:
        query_feat, key_feat: (B, C, H, W); mask: (B, 1, h, w);
        value_feat: (B, Cv, H, W) -> (B, Cv, H, W)

    Examples:
        >>> f = torch.randn(2, 16, 8, 8)
        >>> mask = torch.zeros(2, 1, 32, 32); mask[..., 8:24, 8:24] = 1
        >>> local_dynamic(f, f, mask, top_k=2, chunk_size=16).shape
        torch.Size([2, 16, 8, 8])
    """
    value_feat = key_feat if value_feat is None else value_feat
    _check(query_feat, key_feat, value_feat, mask, top_k, chunk_size)
    b, _, h, w = query_feat.shape
    cv = value_feat.shape[1]
    n = h * w
    fg = foreground_positions(mask, (h, w)).flatten(1)  # (B, N)
    q, k, v = _flatten_features(query_feat, key_feat, value_feat)
    ops = triton_ops(q) if q.dtype in _TRITON_DTYPES else None
    if is_exportable():  # one match over every position: no loop whose length depends on the size
        matched = _match(q, k, v, fg, top_k)
    elif ops is not None:  # CUDA: the Triton kernel, in one pass whatever chunk_size
        matched = _match_triton(ops, q, k, v, fg, min(top_k, n))
    else:
        kk = min(top_k, n)
        matched = torch.cat([_match(q[:, s : s + chunk_size], k, v, fg, kk) for s in range(0, n, chunk_size)], dim=1)
    matched = torch.where(fg[..., None], matched, torch.zeros((), dtype=matched.dtype, device=matched.device))
    return matched.transpose(1, 2).reshape(b, cv, h, w)


class LocalDynamic(nn.Module):
    """HDNet's Local Dynamic module: rewrite foreground features from matched background ones.

    ``f = proj(x)``; every foreground position of ``f`` gathers the mean of its ``top_k``
    most similar background features of ``f`` (:func:`local_dynamic`), a 1x1 conv fuses
    ``[f, matched]`` (``2C -> C``) and the result replaces ``x`` on the foreground.
    Background positions, and every position of an image without background, keep ``x``
    bit for bit.

    Args:
        chs: channels ``C`` of the features.
        top_k: number of background matches per foreground position (``K`` in the paper).
        chunk_size: query positions matched at once; bounds memory at
            ``B x chunk_size x H x W`` similarities without changing the result.
        kernel_size: size of the projection conv applied before matching.

    Shape:
        x: (B, C, H, W); mask: (B, 1, h, w) in 0..1 -> (B, C, H, W)

    Examples:
        >>> ld = LocalDynamic(32, top_k=1)
        >>> mask = torch.zeros(1, 1, 64, 64); mask[..., 16:48, 16:48] = 1
        >>> ld(torch.randn(1, 32, 16, 16), mask).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(
        self, chs: int, top_k: int = 1, chunk_size: int = 1024, kernel_size: int = 3
    ) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.chs, self.top_k, self.chunk_size = chs, top_k, chunk_size
        self.proj = nn.Conv2d(chs, chs, kernel_size, padding=kernel_size // 2)
        self.fuse = nn.Conv2d(2 * chs, chs, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.chs:
            raise ValueError(f"x must be (B, {self.chs}, H, W), got shape {tuple(x.shape)}")
        f = self.proj(x)
        matched = local_dynamic(f, f, mask, self.top_k, self.chunk_size)
        fused = self.fuse(torch.cat([f, matched], dim=1))
        fg = foreground_positions(mask, x.shape[-2:])
        has_bg = (~fg).flatten(1).any(dim=1)[:, None, None, None]
        return torch.where(fg & has_bg, fused, x)

    def extra_repr(self) -> str:
        return f"chs={self.chs}, top_k={self.top_k}, chunk_size={self.chunk_size}"
