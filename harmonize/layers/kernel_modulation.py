"""Harmony kernel modulation (GKNet, Eq. 5-6): a per-pixel, per-channel dynamic filter.

Every output pixel is a weighted sum of its ``k x k`` neighbourhood, with weights that
are predicted for that pixel (and channel). The op is written as shift-and-accumulate
with its own backward, so neither pass builds the ``k*k``-times larger unfolded copy of
the input: memory stays near the size of the kernels themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["kernel_modulation", "KernelModulation"]


def _check(x: Tensor, kernels: Tensor, kernel_size: int) -> tuple[int, bool]:
    """Validate shapes; return k*k and whether kernels are shared across channels."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if kernels.dim() != 4:
        raise ValueError(f"kernels must be (B, C*k*k, H, W) or (B, k*k, H, W), got shape {tuple(kernels.shape)}")
    b, c, h, w = x.shape
    kk = kernel_size * kernel_size
    if kernels.shape[0] != b or kernels.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"kernels {tuple(kernels.shape)} must match x {tuple(x.shape)} in batch and spatial size"
        )
    if kernels.shape[1] == c * kk:
        return kk, False
    if kernels.shape[1] == kk:
        return kk, True
    raise ValueError(
        f"kernels must have C*k*k = {c * kk} (per channel) or k*k = {kk} (shared) channels "
        f"for x with C={c} and kernel_size={kernel_size}, got {kernels.shape[1]}"
    )


def _taps(kernel_size: int, h: int, w: int) -> list[tuple[int, list[tuple[int, int, int, int]]]]:
    """The k*k taps as flat shifts over a row-major (H*W) plane, grouped by column offset.

    Tap ``j = (dy + r) * k + (dx + r)`` reads ``x[y + dy, x + dx]``, which in the flattened plane
    is ``xf[p + s]`` with ``s = dy * w + dx``. Over the one contiguous range ``lo <= p < hi`` where
    ``p + s`` stays in the plane, every read is the right neighbour except in the ``|dx|`` columns
    whose neighbour falls off the left or right edge and wraps to the previous or next row; the
    callers fix those columns afterwards. Returns ``[(dx, [(j, s, lo, hi), ...]), ...]`` with the
    ``dx = 0`` group first and the centre tap left out; taps with no valid position are dropped.
    """
    r = kernel_size // 2
    hw = h * w
    groups = []
    for dx in sorted(range(-r, r + 1), key=abs):
        if abs(dx) >= w:
            continue
        taps = []
        for dy in range(-r, r + 1):
            if (dy, dx) == (0, 0) or abs(dy) >= h:
                continue
            s = dy * w + dx
            taps.append(((dy + r) * kernel_size + dx + r, s, max(0, -s), hw - max(0, s)))
        if taps:
            groups.append((dx, taps))
    return groups


def _cols(dx: int, w: int) -> slice:
    """The columns of an (..., H, W) map whose neighbour at column offset ``dx`` is off the edge."""
    return slice(w - dx, w) if dx > 0 else slice(0, -dx)


class _KernelModulationFn(torch.autograd.Function):
    """Shift-and-accumulate over the k*k taps, each a flat shift over whole (H*W) planes, so
    every step is one long contiguous op; no padded or unfolded copy of ``x`` is ever made, in
    either pass. The few entries a flat shift gets wrong (those that wrap across a row edge)
    are put right column-wise: saved before and restored after each column-offset group in the
    accumulations, zeroed in the kernel gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, kernels: Tensor, kernel_size: int, shared: bool) -> Tensor:
        x = x.contiguous()
        b, c, h, w = x.shape
        kk = kernel_size * kernel_size
        kv = kernels.view(b, 1 if shared else c, kk, h * w)
        xf = x.view(b, c, h * w)
        out = torch.mul(kv[:, :, kk // 2], xf)  # the centre tap covers every pixel
        out4 = out.view(b, c, h, w)
        for dx, taps in _taps(kernel_size, h, w):
            if dx:  # entries in these columns would pick up wrapped neighbours: keep them as they are
                cols = _cols(dx, w)
                kept = out4[..., cols].clone()
            for j, s, lo, hi in taps:
                out[..., lo:hi].addcmul_(kv[:, :, j, lo:hi], xf[..., lo + s : hi + s])
            if dx:
                out4[..., cols] = kept
        ctx.save_for_backward(x, kernels)
        ctx.kernel_size = kernel_size
        ctx.shared = shared
        return out4

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, kernels = ctx.saved_tensors
        k, shared = ctx.kernel_size, ctx.shared
        need_x, need_k = ctx.needs_input_grad[:2]
        b, c, h, w = x.shape
        hw, kk = h * w, k * k
        kv = kernels.view(b, 1 if shared else c, kk, hw)
        xf = x.view(b, c, hw)
        g = grad_out.contiguous().view(b, c, hw)

        def kernel_grad(dst: Tensor, gs: Tensor, xs: Tensor) -> None:
            if shared:
                torch.sum(gs * xs, dim=1, keepdim=True, out=dst)
            else:
                torch.mul(gs, xs, out=dst)

        grad_x = grad_k = None
        if need_x:
            grad_x = torch.mul(kv[:, :, kk // 2], g)
            gx4 = grad_x.view(b, c, h, w)
        if need_k:
            grad_k = kernels.new_empty(b, 1 if shared else c, kk, hw)
            gk4 = grad_k.view(b, -1, kk, h, w)
            kernel_grad(grad_k[:, :, kk // 2], g, xf)
            done = {kk // 2}
        for dx, taps in _taps(k, h, w):
            if need_x and dx:  # wrapped writes land in these columns of grad_x: keep them as they are
                cols_x = _cols(-dx, w)
                kept = gx4[..., cols_x].clone()
            for j, s, lo, hi in taps:
                gs = g[..., lo:hi]
                if need_x:
                    grad_x[..., lo + s : hi + s].addcmul_(kv[:, :, j, lo:hi], gs)
                if need_k:
                    gk = grad_k[:, :, j]
                    kernel_grad(gk[..., lo:hi], gs, xf[..., lo + s : hi + s])
                    gk[..., :lo].zero_()
                    gk[..., hi:].zero_()
                    if dx:
                        gk4[:, :, j, :, _cols(dx, w)].zero_()
                    done.add(j)
            if need_x and dx:
                gx4[..., cols_x] = kept
        if need_k:
            for j in set(range(kk)) - done:  # taps with no valid position at all
                grad_k[:, :, j].zero_()
            grad_k = grad_k.view(kernels.shape)
        if need_x:
            grad_x = gx4
        return grad_x, grad_k, None, None


def kernel_modulation(x: Tensor, kernels: Tensor, kernel_size: int = 3) -> Tensor:
    """Filter every pixel of ``x`` with its own ``k x k`` kernel (zero padding).

    ``out[b, c, y, x] = sum_j kernels[b, c*k*k + j, y, x] * x[b, c, y + dy, x + dx]`` with
    ``j = (dy + r) * k + (dx + r)`` and ``r = k // 2`` (the order ``F.unfold`` uses).

    Args:
        x: features to filter.
        kernels: one kernel per pixel and channel, or one per pixel shared by all channels.
        kernel_size: odd kernel size ``k``.

    Returns:
        The filtered features, same shape and dtype as ``x``.

    Shape:
        x: (B, C, H, W); kernels: (B, C*k*k, H, W) or (B, k*k, H, W) -> (B, C, H, W)

    Example:
        >>> x = torch.randn(2, 8, 16, 16)
        >>> k = torch.zeros(2, 8 * 9, 16, 16); k[:, 4::9] = 1.0  # identity kernels
        >>> torch.allclose(kernel_modulation(x, k, 3), x)
        True
    """
    _, shared = _check(x, kernels, kernel_size)
    if kernels.dtype != x.dtype:
        kernels = kernels.to(x.dtype)
    return _KernelModulationFn.apply(x, kernels.contiguous(), kernel_size, shared)


class KernelModulation(nn.Module):
    """Module twin of :func:`kernel_modulation`: ``forward(x, kernels) -> x filtered``.

    Args:
        kernel_size: odd kernel size ``k``.

    Shape:
        x: (B, C, H, W); kernels: (B, C*k*k, H, W) or (B, k*k, H, W) -> (B, C, H, W)
    """

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.kernel_size = kernel_size

    def forward(self, x: Tensor, kernels: Tensor) -> Tensor:
        return kernel_modulation(x, kernels, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
