"""The Triton kernels (harmonize/layers/_triton_ops.py) run by Triton's interpreter on CPU
tensors, against the PyTorch paths and the unfold oracle.

Not collected on its own (no ``test_`` prefix): test_triton_ops.py runs it in a subprocess
with ``TRITON_INTERPRET=1``, which must be set before triton is imported and must not leak
into other tests. ``python -m pytest tests/_triton_interpreted.py`` without it skips.
"""

import importlib
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run with TRITON_INTERPRET=1 (test_triton_ops.py does)", allow_module_level=True)
pytest.importorskip("triton")

from test_hdnet import _box_mask, _local_dynamic_reference  # noqa: E402  the oracles
from test_kernel_modulation import unfold_reference  # noqa: E402

import harmonize  # noqa: E402
from harmonize.layers import _triton_ops, kernel_modulation, local_dynamic  # noqa: E402

km = importlib.import_module("harmonize.layers.kernel_modulation")
ld = importlib.import_module("harmonize.layers.local_dynamic")


@pytest.fixture
def triton_path(monkeypatch):
    """The layers' functions take their CUDA branch, the Triton kernels, on CPU tensors."""
    monkeypatch.setattr(km, "triton_ops", lambda t: _triton_ops)
    monkeypatch.setattr(ld, "triton_ops", lambda t: _triton_ops)


def _grads(fn, inputs, g):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, g))


def _check_kmod(x, kernels, k, g=None, rtol=1e-5, atol=1e-5):
    """The Triton op (forward, gradient for x and kernels) equals the unfold oracle."""
    shared = kernels.shape[1] == k * k and x.shape[1] != 1
    g = torch.randn(x.shape, dtype=x.dtype) if g is None else g
    got = _grads(lambda a, b: _triton_ops.kernel_modulation(a, b, k, shared), (x, kernels), g)
    want = _grads(lambda a, b: unfold_reference(a.contiguous(), b.contiguous(), k), (x, kernels), g)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ----------------------------------------------------------------- kernel modulation


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("shared", [False, True])
def test_kmod_matches_oracle(k, shared):
    x = torch.randn(2, 2, 7, 9)  # odd sizes, below one block of pixels
    _check_kmod(x, torch.randn(2, (1 if shared else 2) * k * k, 7, 9), k)


def test_kmod_several_blocks_of_pixels():
    x = torch.randn(1, 2, 23, 13)  # 299 pixels: two blocks of 256, the last ragged
    _check_kmod(x, torch.randn(1, 18, 23, 13), 3)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("hw", [(1, 1), (1, 6), (6, 1), (2, 5), (4, 13), (17, 16)])
def test_kmod_matches_oracle_float64(k, shared, hw):
    # Row and column edges: planes narrower and shorter than k, single rows and columns.
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    kernels = torch.randn(2, (1 if shared else 3) * k * k, *hw, dtype=torch.float64)
    _check_kmod(x, kernels, k, rtol=1e-12, atol=1e-12)


def test_kmod_non_contiguous_inputs_and_gradient():
    x = torch.randn(1, 3, 8, 5).transpose(2, 3)  # (1, 3, 5, 8)
    kernels = torch.randn(1, 5, 8, 3 * 9).permute(0, 3, 1, 2)
    g = torch.randn(1, 5, 8, 3).permute(0, 3, 1, 2)
    assert not (x.is_contiguous() or kernels.is_contiguous() or g.is_contiguous())
    _check_kmod(x, kernels, 3, g)
    cl = torch.channels_last
    _check_kmod(x.contiguous(memory_format=cl), kernels.contiguous(memory_format=cl), 3, g)
    _check_kmod(x, torch.randn(1, 9, 8, 5).transpose(2, 3), 3)  # shared, transposed view


@pytest.mark.slow
def test_kmod_identity_and_offset_convention(triton_path):
    x = torch.randn(2, 4, 6, 7)
    kernels = torch.zeros(2, 4 * 9, 6, 7)
    kernels[:, 4::9] = 1
    assert torch.equal(kernel_modulation(x, kernels, 3), x)
    kernels.zero_()
    kernels[:, 5::9] = 1  # dy = 0, dx = +1: the right neighbour, zero past the edge
    out = kernel_modulation(x, kernels, 3)
    assert torch.equal(out[..., :-1], x[..., 1:]) and not out[..., -1].any()


def test_kmod_through_the_public_function(triton_path):
    # Dtype cast of the kernels, shape checks and the autograd graph: the CUDA branch.
    x = torch.randn(1, 3, 5, 6, requires_grad=True)
    kernels = torch.randn(1, 27, 5, 6, dtype=torch.float64)
    out = kernel_modulation(x, kernels, 3)
    assert type(out.grad_fn).__name__ == "KernelModulationFnBackward"
    torch.testing.assert_close(out, unfold_reference(x, kernels.float(), 3))
    with pytest.raises(ValueError, match="C\\*k\\*k = 27"):
        kernel_modulation(x, kernels[:, :26], 3)


def test_kmod_gradient_for_one_input_and_border_non_finite():
    x = torch.randn(1, 2, 5, 6, requires_grad=True)
    kernels = torch.randn(1, 18, 5, 6)
    kernels[0, 2, 2, 5] = float("inf")  # dx = +1 at the last column: its neighbour is padding
    kernels[0, 9 + 6, 4, 0] = float("nan")  # dy = +1, dx = -1 at the bottom-left corner
    g = torch.randn(1, 2, 5, 6)
    (gx,) = torch.autograd.grad(_triton_ops.kernel_modulation(x, kernels, 3, False), (x,), g)
    (rx,) = torch.autograd.grad(unfold_reference(x, kernels, 3), (x,), g)
    assert torch.equal(gx.isnan(), rx.isnan())
    torch.testing.assert_close(gx.nan_to_num(), rx.nan_to_num(), rtol=1e-5, atol=1e-5)
    kernels = torch.randn(1, 18, 5, 6, requires_grad=True)
    (gk,) = torch.autograd.grad(_triton_ops.kernel_modulation(x.detach(), kernels, 3, False), (kernels,), g)
    (rk,) = torch.autograd.grad(unfold_reference(x.detach(), kernels, 3), (kernels,), g)
    torch.testing.assert_close(gk, rk)


@pytest.mark.slow
def test_kmod_bfloat16_close():
    x, kernels = torch.randn(1, 4, 8, 8), torch.randn(1, 36, 8, 8)
    out = _triton_ops.kernel_modulation(x.bfloat16(), kernels.bfloat16(), 3, False)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), unfold_reference(x, kernels, 3), rtol=0.05, atol=0.2)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4)])
def test_kmod_empty_inputs(shape):
    b, c, h, w = shape
    x = torch.randn(shape, requires_grad=True)
    kernels = torch.randn(b, c * 9, h, w, requires_grad=True)
    _triton_ops.kernel_modulation(x, kernels, 3, False).sum().backward()
    assert x.grad.shape == x.shape and kernels.grad.shape == kernels.shape


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True])
def test_kmod_gradcheck_float64(shared):
    x = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(1, (1 if shared else 2) * 9, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _triton_ops.kernel_modulation(a, b, 3, shared), (x, kernels))


# ----------------------------------------------------------------- local dynamic


@pytest.mark.slow
@pytest.mark.parametrize("top_k", [1, 3])
def test_local_dynamic_matches_reference(triton_path, top_k):
    q, k = torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7)
    mask = _box_mask(2, 12, 14, 2, 3, 9, 10)
    out = local_dynamic(q, k, mask, top_k=top_k)
    torch.testing.assert_close(out, _local_dynamic_reference(q, k, mask, top_k), rtol=1e-6, atol=1e-6)
    assert out.abs().sum() > 0


@pytest.mark.parametrize("top_k", [1, 5])
def test_local_dynamic_several_blocks_equals_pytorch_path(monkeypatch, top_k):
    # 99 positions: two blocks of queries and of keys; 70 channels: two blocks of channels.
    f, v = torch.randn(2, 70, 9, 11), torch.randn(2, 3, 9, 11)
    mask = _box_mask(2, 9, 11, 1, 2, 7, 8)
    g = torch.randn(2, 3, 9, 11)
    want = _grads(lambda b: local_dynamic(f, f, mask, top_k, chunk_size=16, value_feat=b), (v,), g)
    monkeypatch.setattr(ld, "triton_ops", lambda t: _triton_ops)
    got = _grads(lambda b: local_dynamic(f, f, mask, top_k, chunk_size=16, value_feat=b), (v,), g)
    assert want[0].abs().sum() > 0
    for a, b in zip(got, want):  # the output and the gradient for the values
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_local_dynamic_few_or_no_background(triton_path):
    f = torch.randn(2, 4, 4, 4)
    mask = torch.ones(2, 1, 4, 4)
    mask[0, :, 0, :2] = 0  # image 0: two background positions only; image 1: none
    out = local_dynamic(f, f, mask, top_k=5)
    bg = mask[0, 0] == 0
    assert torch.equal(out[0][:, bg], torch.zeros(4, 2))
    torch.testing.assert_close(out[0][:, ~bg], f[0][:, bg].mean(dim=1)[:, None].expand(4, 14))
    assert torch.equal(out[1], torch.zeros(4, 4, 4))


@pytest.mark.slow
def test_local_dynamic_non_contiguous(triton_path):
    f = torch.randn(2, 6, 7, 5).transpose(2, 3)
    mask = _box_mask(2, 5, 7, 1, 1, 4, 4)
    torch.testing.assert_close(local_dynamic(f, f, mask), _local_dynamic_reference(f, f, mask, 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_gknet", "test_hdnet"])
def test_models_equal_the_pytorch_path(monkeypatch, name):
    model = harmonize.create_model(name).eval()
    image, mask = torch.rand(1, 3, 64, 64), _box_mask(1, 64, 64, 16, 12, 44, 50)
    with torch.no_grad():
        want = model(image, mask)
        monkeypatch.setattr(km, "triton_ops", lambda t: _triton_ops)
        monkeypatch.setattr(ld, "triton_ops", lambda t: _triton_ops)
        got = model(image, mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
