"""Harmony kernel modulation (GKNet, Eq. 5-6): a per-pixel, per-channel dynamic filter.

Every output pixel is a weighted sum of its ``k x k`` neighbourhood, with weights that
are predicted for that pixel (and channel). The op is written as shift-and-accumulate
with its own backward, so neither pass builds the ``k*k``-times larger unfolded copy of
the input: memory stays near the size of the kernels themselves. On the CPU it runs
compiled kernels where they can be built (:mod:`harmonize.layers._kmod_ext`, built on first
use), else pure PyTorch. On CUDA it runs Triton kernels (:mod:`harmonize.layers._triton_ops`,
imported on the first CUDA call) where triton is installed, else the same pure PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._config import is_exportable
from . import _kmod_ext
from ._gpu import triton_ops
from ._layout import is_channels_last

__all__ = ["kernel_modulation", "KernelModulation"]


def _check(x: Tensor, kernels: Tensor, kernel_size: int) -> tuple[int, bool]:
    """Validate shapes; return k*k and whether kernels are shared across channels."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if kernels.dim() != 4:
        raise ValueError(
            f"kernels must be (B, C*k*k, H, W) or (B, k*k, H, W), got shape {tuple(kernels.shape)}"
        )
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


# Maps are processed in blocks of planes of about this many bytes, so that what the ops of a
# block revisit stays in the last-level cache: the output and the input that each tap reads
# again, or the k*k-tap temporary of the windowed forward.
_BLOCK_BYTES = 4 * 2**20
# The forward over planes of up to this many pixels takes the windowed path (see _modulate).
_SMALL_PLANE = 32 * 32


def _taps(kernel_size: int, h: int, w: int) -> list[tuple[int, list[tuple[int, int, int, int]]]]:
    """The off-centre taps as flat shifts over a row-major (H*W) plane, grouped by column offset.

    Tap ``j = (dy + r) * k + (dx + r)`` reads ``x[y + dy, x + dx]``, which in the flattened plane
    is ``xf[p + s]`` with ``s = dy * w + dx``. Over the one contiguous range ``lo <= p < hi`` where
    ``p + s`` stays in the plane, every read is the right neighbour except in the ``|dx|`` columns
    whose neighbour falls off the left or right edge and wraps to the previous or next row: the
    caller puts those right. Returns ``[(dx, [(j, s, lo, hi), ...]), ...]``; taps with no valid
    position at all (``|dy| >= h`` or ``|dx| >= w``) are left out.
    """
    r = kernel_size // 2
    groups = []
    for dx in range(-r, r + 1):
        if abs(dx) >= w:
            continue
        taps = []
        for dy in range(-r, r + 1):
            if (dy, dx) == (0, 0) or abs(dy) >= h:
                continue
            s = dy * w + dx
            taps.append(((dy + r) * kernel_size + dx + r, s, max(0, -s), h * w - max(0, s)))
        if taps:
            groups.append((dx, taps))
    return groups


def _cols(dx: int, w: int) -> slice:
    """The columns of an (..., H, W) map whose neighbour at column offset ``dx`` is off the edge."""
    return slice(w - dx, w) if dx > 0 else slice(0, -dx)


def _blocks(b: int, c: int, plane_bytes: int) -> list[tuple[slice, slice]]:
    """(batch, channel) slices that split the B*C planes into blocks of about ``_BLOCK_BYTES``
    (``plane_bytes`` each); the first block is the largest."""
    per = max(1, _BLOCK_BYTES // plane_bytes)  # planes per block
    if per >= c:
        nb = per // c
        return [(slice(i, i + nb), slice(None)) for i in range(0, b, nb)]
    return [(slice(i, i + 1), slice(j, j + per)) for i in range(b) for j in range(0, c, per)]


def _accumulate(
    acc: Tensor, kv: Tensor, src: Tensor, k: int, h: int, w: int, transposed: bool
) -> None:
    """Sum the k*k shifted products into ``acc``, all maps flattened to (..., H*W).

    ``transposed=False`` (the forward): ``acc[p] = sum_j kv[j, p] * src[p + s_j]``;
    ``transposed=True`` (the gradient for x): ``acc[p + s_j] += kv[j, p] * src[p]``.
    ``kv`` is (..., k*k, H*W). Entries of the columns that a group of taps would reach across a
    row edge are saved before the group and restored after it.
    """
    torch.mul(kv[..., k * k // 2, :], src, out=acc)  # the centre tap covers every pixel
    acc4 = acc.unflatten(-1, (h, w))
    for dx, taps in _taps(k, h, w):
        if dx:
            cols = _cols(-dx if transposed else dx, w)
            kept = acc4[..., cols].clone()
        for j, s, lo, hi in taps:
            if transposed:
                acc[..., lo + s : hi + s].addcmul_(kv[..., j, lo:hi], src[..., lo:hi])
            else:
                acc[..., lo:hi].addcmul_(kv[..., j, lo:hi], src[..., lo + s : hi + s])
        if dx:
            acc4[..., cols] = kept


def _modulate(t: Tensor, kernels: Tensor, k: int, shared: bool, transposed: bool) -> Tensor:
    """The filter over ``t`` (B, C, H, W) as a new (B, C, H, W) map; see :func:`_accumulate`.

    One flat-shift op per tap, block by block; except the forward over small planes, where
    those ops would read each tap's kernels in short strided runs: it takes
    :func:`_modulate_windowed`, which reads them in order.
    """
    b, c, h, w = t.shape
    if t.numel() == 0:
        return torch.empty_like(t, memory_format=torch.contiguous_format)
    if not transposed and h * w <= _SMALL_PLANE:
        return _modulate_windowed(t, kernels, k, shared)
    kv = kernels.view(b, 1 if shared else c, k * k, h * w)
    tf = t.view(b, c, h * w)
    out = torch.empty_like(tf)
    for bs, cs in _blocks(b, c, h * w * t.element_size()):
        _accumulate(
            out[bs, cs], kv[bs, :] if shared else kv[bs, cs], tf[bs, cs], k, h, w, transposed
        )
    return out.view(b, c, h, w)


def _modulate_windowed(x: Tensor, kernels: Tensor, k: int, shared: bool) -> Tensor:
    """The forward as two ops per block of planes: the products for all k*k taps at once,
    ``kernels * windows of x``, into a temporary, then their sum over the taps."""
    b, c, h, w = x.shape
    kv = kernels.view(b, 1 if shared else c, k, k, h, w)
    windows = _windows(x, k)
    out = x.new_empty(b, c, h, w)
    blocks = _blocks(b, c, k * k * h * w * x.element_size())
    tmp = x.new_empty(*out[blocks[0]].shape[:2], k, k, h, w)
    for bs, cs in blocks:
        o = out[bs, cs]
        prod = tmp[: o.shape[0], : o.shape[1]]
        torch.mul(kv[bs, :] if shared else kv[bs, cs], windows[bs, cs], out=prod)
        torch.sum(prod, dim=(2, 3), out=o)
    return out


def _windows(x: Tensor, k: int) -> Tensor:
    """(B, C, H, W) -> (B, C, k, k, H, W): every zero-padded k x k window, as views of one copy."""
    b, c, h, w = x.shape
    r = k // 2
    xp = x.new_zeros(b, c, h + 2 * r, w + 2 * r)
    xp[..., r : r + h, r : r + w] = x
    sb, sc, sy, sx = xp.stride()
    return xp.as_strided((b, c, k, k, h, w), (sb, sc, sy, sx, sy, sx))


def _compiled(t: Tensor):
    """The compiled CPU kernels for ``t`` (see :mod:`harmonize.layers._kmod_ext`), or ``None``:
    on other devices, when they cannot be built, or when ``HARMONIZE_KMOD_EXT=0``."""
    return _kmod_ext.load() if t.device.type == "cpu" else None


class _KernelModulationFn(torch.autograd.Function):
    """Shift-and-accumulate over the k*k taps with its own backward; nothing ``k*k`` times the
    size of ``x`` is made besides the kernel gradient itself.

    On the CPU, where the compiled kernels are available (:func:`_compiled`), the forward and
    the whole backward are one pass each over the kernels, cache-sized chunks of rows at a time.

    Otherwise (pure PyTorch): the forward and the gradient for ``x`` treat each tap as one flat
    shift over whole (H*W) planes (long contiguous runs; the few entries that wrap across a row
    edge are put right per column), in cache-sized blocks of planes; the forward over small
    planes multiplies all taps at once instead. The kernel gradient, ``grad_out * window``, is
    a single op over a view of all k*k windows of a padded copy of ``x``, written out in order.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernels: Tensor, kernel_size: int, shared: bool) -> Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, kernels)
        ctx.kernel_size = kernel_size
        ctx.shared = shared
        ext = _compiled(x)
        ctx.compiled = ext is not None
        if ext is not None:
            return ext.forward(x, kernels, kernel_size, shared)
        return _modulate(x, kernels, kernel_size, shared, transposed=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, kernels = ctx.saved_tensors
        k, shared = ctx.kernel_size, ctx.shared
        grad_out = grad_out.contiguous()
        need_x, need_k = ctx.needs_input_grad[:2]
        if ctx.compiled:
            grad_x, grad_k = _compiled(x).backward(
                x, kernels, grad_out.to(x.dtype), k, shared, need_x, need_k
            )
            return (grad_x if need_x else None), (grad_k if need_k else None), None, None
        grad_x = grad_k = None
        if need_k:
            b, c, h, w = x.shape
            grad_k = kernels.new_empty(b, 1 if shared else c, k, k, h, w)
            if shared:
                windows = _windows(x, k)
                for dy in range(k):
                    for dx in range(k):
                        prod = grad_out * windows[:, :, dy, dx]
                        torch.sum(prod, dim=1, keepdim=True, out=grad_k[:, :, dy, dx])
                del windows
            elif grad_k.numel():
                # Block by block (blocks of about _BLOCK_BYTES of the gradient), so that the
                # padded copy of x is a small temporary, not one more x-sized tensor.
                for bs, cs in _blocks(b, c, k * k * h * w * x.element_size()):
                    torch.mul(
                        grad_out[bs, cs, None, None], _windows(x[bs, cs], k), out=grad_k[bs, cs]
                    )
            grad_k = grad_k.view(kernels.shape)
        if need_x:
            grad_x = _modulate(grad_out, kernels, k, shared, transposed=True)
        return grad_x, grad_k, None, None


def _kernel_modulation_traceable(x: Tensor, kernels: Tensor, k: int, shared: bool) -> Tensor:
    """The same sum as a plain loop over shifted slices of a zero-padded ``x``: what a tracer
    (ONNX, ``torch.export``) can follow, where the custom autograd function is opaque."""
    b, c, h, w = x.shape
    r, kk = k // 2, k * k
    kv = kernels.reshape(b, 1 if shared else c, kk, h, w)
    xp = F.pad(x, (r, r, r, r))
    out = kv[:, :, kk // 2] * x
    j = 0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if j != kk // 2:
                out = out + kv[:, :, j] * xp[:, :, r + dy : r + dy + h, r + dx : r + dx + w]
            j += 1
    return out


def kernel_modulation(x: Tensor, kernels: Tensor, kernel_size: int = 3) -> Tensor:
    """Filter every pixel of ``x`` with its own ``k x k`` kernel (zero padding).

    ``out[b, c, y, x] = sum_j kernels[b, c*k*k + j, y, x] * x[b, c, y + dy, x + dx]`` with
    ``j = (dy + r) * k + (dx + r)`` and ``r = k // 2`` (the order ``F.unfold`` uses).

    Args:
        x: features to filter.
        kernels: one kernel per pixel and channel, or one per pixel shared by all channels.
        kernel_size: odd kernel size ``k``.

    Returns:
        The filtered features, same shape, dtype and memory layout (contiguous or
        channels-last) as ``x``.

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
    if is_exportable() or torch.compiler.is_compiling():  # torch.compile fuses the plain sum itself
        return _kernel_modulation_traceable(x, kernels, kernel_size, shared)
    ops = triton_ops(x)
    if ops is not None:  # CUDA: strided inputs are read in place
        return ops.kernel_modulation(x, kernels, kernel_size, shared)
    out = _KernelModulationFn.apply(x, kernels.contiguous(), kernel_size, shared)
    if is_channels_last(x):  # the compiled and pure-PyTorch paths work on contiguous planes
        out = out.contiguous(memory_format=torch.channels_last)
    return out


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
