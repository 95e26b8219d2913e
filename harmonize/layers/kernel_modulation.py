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


def _offsets(kernel_size: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) in F.unfold order: j = (dy + r) * k + (dx + r)."""
    r = kernel_size // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def _valid(d: int, n: int) -> tuple[slice, slice] | None:
    """Output positions whose neighbour at offset ``d`` lies inside ``0..n-1``, and those neighbours."""
    if abs(d) >= n:
        return None
    return slice(max(0, -d), n - max(0, d)), slice(max(0, d), n - max(0, -d))


def _zero_border(t: Tensor, ys: slice, xs: slice) -> None:
    """Zero the rows and columns of ``t`` (..., H, W) outside ``ys`` x ``xs``."""
    t[..., : ys.start, :].zero_()
    t[..., ys.stop :, :].zero_()
    t[..., ys, : xs.start].zero_()
    t[..., ys, xs.stop :].zero_()


class _KernelModulationFn(torch.autograd.Function):
    """Shift-and-accumulate over the k*k offsets; each step touches only the valid window,
    so no padded or unfolded copy of ``x`` is ever made, in either pass."""

    @staticmethod
    def forward(ctx, x: Tensor, kernels: Tensor, kernel_size: int, shared: bool) -> Tensor:
        b, c, h, w = x.shape
        kk = kernel_size * kernel_size
        kv = kernels.view(b, 1 if shared else c, kk, h, w)
        out = torch.mul(kv[:, :, kk // 2], x)  # the centre tap covers every pixel
        for j, (dy, dx) in enumerate(_offsets(kernel_size)):
            vy, vx = _valid(dy, h), _valid(dx, w)
            if j == kk // 2 or vy is None or vx is None:
                continue
            (ys, ys_src), (xs, xs_src) = vy, vx
            out[..., ys, xs].addcmul_(kv[:, :, j, ys, xs], x[..., ys_src, xs_src])
        ctx.save_for_backward(x, kernels)
        ctx.kernel_size = kernel_size
        ctx.shared = shared
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, kernels = ctx.saved_tensors
        k, shared = ctx.kernel_size, ctx.shared
        b, c, h, w = x.shape
        kk = k * k
        kv = kernels.view(b, 1 if shared else c, kk, h, w)
        grad_x = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mul(kv[:, :, kk // 2], grad_out)
            for j, (dy, dx) in enumerate(_offsets(k)):
                vy, vx = _valid(dy, h), _valid(dx, w)
                if j == kk // 2 or vy is None or vx is None:
                    continue
                (ys, ys_src), (xs, xs_src) = vy, vx
                grad_x[..., ys_src, xs_src].addcmul_(kv[:, :, j, ys, xs], grad_out[..., ys, xs])
        if ctx.needs_input_grad[1]:
            grad_k = kernels.new_empty(b, 1 if shared else c, kk, h, w)
            for j, (dy, dx) in enumerate(_offsets(k)):
                vy, vx = _valid(dy, h), _valid(dx, w)
                gk = grad_k[:, :, j]
                if vy is None or vx is None:
                    gk.zero_()
                    continue
                (ys, ys_src), (xs, xs_src) = vy, vx
                _zero_border(gk, ys, xs)
                if shared:
                    prod = grad_out[..., ys, xs] * x[..., ys_src, xs_src]
                    torch.sum(prod, dim=1, keepdim=True, out=gk[..., ys, xs])
                else:
                    torch.mul(grad_out[..., ys, xs], x[..., ys_src, xs_src], out=gk[..., ys, xs])
            grad_k = grad_k.view(kernels.shape)
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
