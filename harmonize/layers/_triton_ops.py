"""Triton kernels of kernel modulation and local dynamic matching, for CUDA tensors.

Imported only through :func:`harmonize.layers._gpu.triton_ops`, on the first CUDA call: this
module imports triton. The layers' functions stay the entry points; they send CUDA tensors
here when triton is available and they are not being exported.

- :func:`kernel_modulation`: one program per block of pixels of one (batch, channel) plane;
  each reads its ``k*k`` kernel values and the neighbours once and sums in float32 (float64
  for float64 inputs). The backward is two kernels: the gradient for ``x`` gathers
  ``kernels * grad_out`` at the mirrored offsets (no atomics), the kernel gradient is
  ``grad_out * window``, summed over the channels for shared kernels. Strided inputs are
  read in place (no copy for channels_last or transposed views).
- :func:`local_dynamic_topk`: the ``top_k`` best background keys of every query, a tiled
  ``q @ k`` in float32 with a running top-k per query: the ``N x N`` similarities are never
  stored. What it selects is gathered and averaged by the PyTorch code of
  :func:`harmonize.layers.local_dynamic`, so gradients need no kernel of their own.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the same kernels run on CPU
tensors; the tests use that to check them against the PyTorch paths without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["kernel_modulation", "local_dynamic_topk", "KernelModulationFn"]

_BLOCK = 256  # pixels per program of the forward and of the gradient for x


@triton.jit
def _kmod_kernel(
    src_ptr, k_ptr, out_ptr, C, H, W,
    s_b, s_c, s_h, s_w, k_b, k_c, k_h, k_w,
    K: tl.constexpr, SHARED: tl.constexpr, TRANSPOSED: tl.constexpr,
    BLOCK: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """``TRANSPOSED=False``: ``out[p] = sum_j k[j, p] * src[p + s_j]`` (the forward).
    ``TRANSPOSED=True``: ``out[p] = sum_j k[j, p - s_j] * src[p - s_j]`` (the gradient for x)."""
    pid = tl.program_id(0).to(tl.int64)  # one 1-D grid: CUDA caps the other axes at 65535
    tiles = tl.cdiv(H * W, BLOCK)
    bc = pid // tiles
    b = bc // C
    c = bc % C
    p = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
    inside = p < H * W
    y = p // W
    x = p % W
    src = src_ptr + b * s_b + c * s_c
    if SHARED:
        kern = k_ptr + b * k_b
    else:
        kern = k_ptr + b * k_b + c * (K * K) * k_c
    acc = tl.zeros([BLOCK], dtype=ACC)
    for j in tl.static_range(K * K):
        dy = j // K - K // 2
        dx = j % K - K // 2
        if TRANSPOSED:
            yy = y - dy
            xx = x - dx
        else:
            yy = y + dy
            xx = x + dx
        ok = inside & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        v = tl.load(src + yy * s_h + xx * s_w, mask=ok, other=0.0)
        if TRANSPOSED:
            kv = tl.load(kern + j * k_c + yy * k_h + xx * k_w, mask=ok, other=0.0)
        else:
            kv = tl.load(kern + j * k_c + y * k_h + x * k_w, mask=ok, other=0.0)
        acc += kv.to(ACC) * v.to(ACC)
    tl.store(out_ptr + bc * H * W + p, acc.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _kmod_grad_k_kernel(
    x_ptr, g_ptr, gk_ptr, C, H, W,
    x_b, x_c, x_h, x_w, g_b, g_c, g_h, g_w,
    K: tl.constexpr, SHARED: tl.constexpr, KK_P: tl.constexpr,
    BLOCK: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """``gk[j, p] = sum_c g[c, p] * x[c, p + s_j]``: over one channel, or all for shared kernels."""
    tiles = tl.cdiv(H * W, BLOCK)
    pid = tl.program_id(0).to(tl.int64) // tiles  # b * C + c, or b when shared
    if SHARED:
        b = pid
        c0 = pid * 0
        nc = C
    else:
        b = pid // C
        c0 = pid % C
        nc = 1
    p = (tl.program_id(0).to(tl.int64) % tiles) * BLOCK + tl.arange(0, BLOCK)
    inside = p < H * W
    y = p // W
    x = p % W
    t = tl.arange(0, KK_P)
    yy = y[None, :] + (t // K - K // 2)[:, None]
    xx = x[None, :] + (t % K - K // 2)[:, None]
    tap = (t < K * K)[:, None]
    ok = tap & inside[None, :] & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    acc = tl.zeros([KK_P, BLOCK], dtype=ACC)
    for ci in range(nc):
        c = c0 + ci
        gv = tl.load(g_ptr + b * g_b + c * g_c + y * g_h + x * g_w, mask=inside, other=0.0)
        xv = tl.load(x_ptr + b * x_b + c * x_c + yy * x_h + xx * x_w, mask=ok, other=0.0)
        acc += gv.to(ACC)[None, :] * xv.to(ACC)
    out = gk_ptr + (pid * (K * K) + t[:, None]) * (H * W) + p[None, :]
    tl.store(out, acc.to(gk_ptr.dtype.element_ty), mask=tap & inside[None, :])


def _acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _modulate(src: Tensor, kernels: Tensor, k: int, shared: bool, transposed: bool) -> Tensor:
    """The forward (or, transposed, the gradient for x) as a new contiguous (B, C, H, W) map."""
    b, c, h, w = src.shape
    out = torch.empty((b, c, h, w), dtype=src.dtype, device=src.device)
    if out.numel() == 0:
        return out.zero_()
    grid = (triton.cdiv(h * w, _BLOCK) * b * c,)
    _kmod_kernel[grid](
        src, kernels, out, c, h, w, *src.stride(), *kernels.stride(),
        K=k, SHARED=shared, TRANSPOSED=transposed, BLOCK=_BLOCK, ACC=_acc(src.dtype),
    )  # fmt: skip
    return out


def _grad_kernels(x: Tensor, grad_out: Tensor, k: int, shared: bool) -> Tensor:
    """The kernel gradient, contiguous (B, C*k*k, H, W), or (B, k*k, H, W) when shared."""
    b, c, h, w = x.shape
    groups = 1 if shared else c
    out = torch.empty((b, groups * k * k, h, w), dtype=x.dtype, device=x.device)
    if out.numel() == 0 or c == 0:
        return out.zero_()
    kk_p = triton.next_power_of_2(k * k)
    block = max(16, 4096 // kk_p)
    grid = (triton.cdiv(h * w, block) * b * groups,)
    _kmod_grad_k_kernel[grid](
        x, grad_out, out, c, h, w, *x.stride(), *grad_out.stride(),
        K=k, SHARED=shared, KK_P=kk_p, BLOCK=block, ACC=_acc(x.dtype),
    )  # fmt: skip
    return out


class KernelModulationFn(torch.autograd.Function):
    """Kernel modulation with Triton kernels both ways; saves only ``x`` and the kernels."""

    @staticmethod
    def forward(ctx, x: Tensor, kernels: Tensor, kernel_size: int, shared: bool) -> Tensor:
        ctx.save_for_backward(x, kernels)
        ctx.kernel_size, ctx.shared = kernel_size, shared
        return _modulate(x, kernels, kernel_size, shared, transposed=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, kernels = ctx.saved_tensors
        k, shared = ctx.kernel_size, ctx.shared
        need_x, need_k = ctx.needs_input_grad[:2]
        grad_out = grad_out.to(x.dtype)
        grad_x = _modulate(grad_out, kernels, k, shared, transposed=True) if need_x else None
        grad_k = _grad_kernels(x, grad_out, k, shared) if need_k else None
        return grad_x, grad_k, None, None


def kernel_modulation(x: Tensor, kernels: Tensor, kernel_size: int, shared: bool) -> Tensor:
    """:func:`harmonize.layers.kernel_modulation` on checked inputs of one dtype (any strides).

    Shape:
        x: (B, C, H, W); kernels: (B, C*k*k, H, W), or (B, k*k, H, W) when shared -> (B, C, H, W)
    """
    return KernelModulationFn.apply(x, kernels, kernel_size, shared)


# ----------------------------------------------------------------- local dynamic


@triton.jit
def _topk_kernel(
    q_ptr, k_ptr, fg_ptr, idx_ptr, N, C,
    q_b, q_n, q_c, k_b, k_c, k_n, fg_b,
    TOP_K: tl.constexpr, TOP_K_P: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """For queries ``m`` of one image: the indices of the ``TOP_K`` largest ``<q[m], k[:, n]>``
    over background keys ``n`` (any order; -1 in slots left empty)."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.arange(0, TOP_K_P)
    # Slots past TOP_K hold +inf: never the smallest, so never replaced.
    best_v = tl.where(slot[None, :] < TOP_K, float("-inf"), float("inf")) + tl.zeros(
        [BLOCK_M, TOP_K_P], dtype=tl.float32
    )
    best_i = tl.full([BLOCK_M, TOP_K_P], -1, dtype=tl.int64)
    q_base = q_ptr + b * q_b
    k_base = k_ptr + b * k_b
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        sim = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            qa = tl.load(
                q_base + rows[:, None] * q_n + cc[None, :] * q_c,
                mask=(rows[:, None] < N) & (cc[None, :] < C),
                other=0.0,
            ).to(tl.float32)
            ka = tl.load(
                k_base + cc[:, None] * k_c + cols[None, :] * k_n,
                mask=(cc[:, None] < C) & (cols[None, :] < N),
                other=0.0,
            ).to(tl.float32)
            sim = tl.dot(qa, ka, sim, input_precision="ieee")
        is_fg = tl.load(fg_ptr + b * fg_b + cols, mask=cols < N, other=1)
        sim = tl.where((is_fg == 0)[None, :], sim, float("-inf"))
        for _ in tl.static_range(TOP_K):
            m = tl.max(sim, axis=1)
            a = tl.argmax(sim, axis=1)
            low = tl.min(best_v, axis=1)
            at = tl.argmin(best_v, axis=1)
            put = (m > low)[:, None] & (slot[None, :] == at[:, None])
            best_v = tl.where(put, m[:, None], best_v)
            best_i = tl.where(put, (n0 + a).to(tl.int64)[:, None], best_i)
            sim = tl.where(tl.arange(0, BLOCK_N)[None, :] == a[:, None], float("-inf"), sim)
    out = idx_ptr + (b * N + rows[:, None]) * TOP_K + slot[None, :]
    tl.store(out, best_i, mask=(rows[:, None] < N) & (slot[None, :] < TOP_K))


def local_dynamic_topk(q: Tensor, k: Tensor, fg: Tensor, top_k: int) -> Tensor:
    """The ``top_k`` best background keys of every query, by dot product (any strides).

    Returns:
        Key indices in any order, -1 in slots with no background key left (fewer than
        ``top_k`` background keys); nothing is selected for images without background.

    Shape:
        q (B, N, C), k (B, C, N), fg (B, N) bool, True on foreground keys -> (B, N, top_k) int64
    """
    b, n, c = q.shape
    idx = torch.full((b, n, top_k), -1, dtype=torch.int64, device=q.device)
    if idx.numel() == 0:
        return idx
    fg8 = fg.to(torch.uint8).contiguous()
    block_c = max(16, min(64, triton.next_power_of_2(max(c, 1))))
    block_m = block_n = 64
    grid = (triton.cdiv(n, block_m), b)
    _topk_kernel[grid](
        q, k, fg8, idx, n, c, q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2), fg8.stride(0),
        TOP_K=top_k, TOP_K_P=max(2, triton.next_power_of_2(top_k)),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_C=block_c,
    )  # fmt: skip
    return idx
