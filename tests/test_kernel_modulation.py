import importlib

import pytest
import torch
import torch.nn.functional as F

from harmonize.layers import KernelModulation, _kmod_ext, kernel_modulation

km = importlib.import_module("harmonize.layers.kernel_modulation")  # the module, not the function


@pytest.fixture(autouse=True, params=["compiled", "shifted", "windowed"])
def forward_path(request, monkeypatch):
    """Run every test with each implementation: the compiled CPU kernels (skipped where they
    cannot be built), and the pure-PyTorch path with both of its forwards (one flat-shift op
    per tap, taken for large planes, and all taps at once, taken for small ones), whatever the
    plane size."""
    if request.param == "compiled":
        if _kmod_ext.load() is None:
            pytest.skip(
                "compiled kernel_modulation unavailable (no compiler or ninja, or disabled)"
            )
    else:
        monkeypatch.setattr(km, "_compiled", lambda t: None)
        monkeypatch.setattr(km, "_SMALL_PLANE", -1 if request.param == "shifted" else 2**62)
    return request.param


def unfold_reference(x: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """The oracle: build the unfolded copy and take the weighted sum."""
    b, c, h, w = x.shape
    cols = F.unfold(x, k, padding=k // 2).view(b, c, k * k, h, w)
    kv = kernels.view(b, -1, k * k, h, w)
    return (cols * kv).sum(2)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("hw", [(7, 9), (1, 1), (4, 13)])
def test_matches_unfold_oracle(k, shared, hw):
    x = torch.randn(2, 5, *hw)
    kernels = torch.randn(2, (1 if shared else 5) * k * k, *hw)
    torch.testing.assert_close(
        kernel_modulation(x, kernels, k), unfold_reference(x, kernels, k), rtol=1e-5, atol=1e-5
    )


def test_offset_convention():
    # A kernel with a single 1 at index j = (dy + r) * k + (dx + r) reads x[y + dy, x + dx].
    x = torch.arange(25.0).view(1, 1, 5, 5)
    kernels = torch.zeros(1, 9, 5, 5)
    kernels[:, 5] = 1.0  # dy = 0, dx = +1
    out = kernel_modulation(x, kernels, 3)
    assert out[0, 0, 2, 2] == x[0, 0, 2, 3]
    assert out[0, 0, 2, 4] == 0  # zero padding beyond the right edge
    kernels.zero_()
    kernels[:, 1] = 1.0  # dy = -1, dx = 0
    assert kernel_modulation(x, kernels, 3)[0, 0, 2, 2] == x[0, 0, 1, 2]


def test_identity_kernels():
    x = torch.randn(2, 4, 6, 6)
    kernels = torch.zeros(2, 4 * 9, 6, 6)
    kernels[:, 4::9] = 1
    assert torch.equal(kernel_modulation(x, kernels, 3), x)


@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_float64(shared):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(
        2, (1 if shared else 3) * 9, 5, 6, dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(lambda a, b: kernel_modulation(a, b, 3), (x, kernels))


def test_gradients_match_oracle():
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    kernels = torch.randn(2, 4 * 25, 9, 7, requires_grad=True)
    g = torch.randn(2, 4, 9, 7)
    gx, gk = torch.autograd.grad(kernel_modulation(x, kernels, 5), (x, kernels), g)
    rx, rk = torch.autograd.grad(unfold_reference(x, kernels, 5), (x, kernels), g)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gk, rk, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs():
    x = torch.randn(2, 6, 8, 10).transpose(2, 3)  # (2, 6, 10, 8), non-contiguous
    kernels = torch.randn(2, 10, 8, 6 * 9).permute(0, 3, 1, 2)  # non-contiguous
    assert not x.is_contiguous() and not kernels.is_contiguous()
    torch.testing.assert_close(
        kernel_modulation(x, kernels), unfold_reference(x, kernels.contiguous(), 3)
    )
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        kernel_modulation(xc, kernels), unfold_reference(x, kernels.contiguous(), 3)
    )


def test_module_equals_function():
    x, kernels = torch.randn(1, 3, 8, 8), torch.randn(1, 27, 8, 8)
    m = KernelModulation(3)
    assert torch.equal(m(x, kernels), kernel_modulation(x, kernels, 3))
    assert "kernel_size=3" in repr(m)


def test_bfloat16_runs_and_is_close():
    x, kernels = torch.randn(1, 4, 8, 8), torch.randn(1, 36, 8, 8)
    out = kernel_modulation(x.bfloat16(), kernels.bfloat16(), 3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), unfold_reference(x, kernels, 3), rtol=0.05, atol=0.2)


@pytest.mark.parametrize(
    "x_shape,k_shape,k,match",
    [
        ((2, 3, 5, 5), (2, 26, 5, 5), 3, "C\\*k\\*k = 27"),
        ((2, 3, 5, 5), (2, 27, 5, 4), 3, "must match x"),
        ((2, 3, 5, 5), (1, 27, 5, 5), 3, "must match x"),
        ((3, 5, 5), (2, 27, 5, 5), 3, "x must be"),
        ((2, 3, 5, 5), (2, 27, 5, 5), 2, "odd"),
    ],
)
def test_clear_errors(x_shape, k_shape, k, match):
    with pytest.raises(ValueError, match=match):
        kernel_modulation(torch.randn(x_shape), torch.randn(k_shape), k)


def test_memory_backward_saves_only_inputs():
    # The autograd graph keeps x and the kernels, not a k*k-times larger unfolded copy.
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    kernels = torch.randn(1, 8 * 9, 16, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        kernel_modulation(x, kernels, 3).sum().backward()
    assert sum(saved) == x.numel() + kernels.numel()


def _grads_vs_oracle(x, kernels, k, rtol=1e-7, atol=1e-7):
    x = x.clone().requires_grad_(True)
    kernels = kernels.clone().requires_grad_(True)
    g = torch.randn_like(x)
    out = kernel_modulation(x, kernels, k)
    ref = unfold_reference(x, kernels, k)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    got = torch.autograd.grad(out, (x, kernels), g)
    want = torch.autograd.grad(ref, (x, kernels), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("hw", [(1, 6), (6, 1), (2, 2), (3, 2), (2, 5), (5, 3), (4, 4), (1, 1)])
def test_row_edges_of_flat_shifts(k, shared, hw):
    # Each tap is a flat shift over the H*W plane; the entries that wrap across a row edge
    # (W = 1 or 2, W or H below k, single rows and columns) must come out as zero padding.
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    kernels = torch.randn(2, (1 if shared else 3) * k * k, *hw, dtype=torch.float64)
    _grads_vs_oracle(x, kernels, k)


@pytest.mark.parametrize("planes", [1, 2, 3, 5, 10, 100])
@pytest.mark.parametrize("shared", [False, True])
def test_blocks_of_planes(monkeypatch, forward_path, planes, shared):
    # Planes are processed in cache-sized blocks: single planes, channel slices of one
    # batch item (with a ragged last slice), and several whole batch items at a time
    # (with a ragged last block).
    plane = 4 * 6 * 8  # bytes of one float64 plane
    windowed = forward_path == "windowed"
    monkeypatch.setattr(km, "_BLOCK_BYTES", planes * plane * (9 if windowed else 1))
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    kernels = torch.randn(3, (1 if shared else 5) * 9, 4, 6, dtype=torch.float64)
    _grads_vs_oracle(x, kernels, 3)


def test_gradient_for_one_input_only():
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    kernels = torch.randn(2, 27, 5, 6, requires_grad=True)
    g = torch.randn(2, 3, 5, 6)
    rx, rk = torch.autograd.grad(unfold_reference(x, kernels, 3), (x, kernels), g)
    (gx,) = torch.autograd.grad(kernel_modulation(x, kernels.detach(), 3), (x,), g)
    (gk,) = torch.autograd.grad(kernel_modulation(x.detach(), kernels, 3), (kernels,), g)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gk, rk, rtol=1e-5, atol=1e-5)


def test_channels_last_gradients():
    x = torch.randn(2, 6, 7, 5).contiguous(memory_format=torch.channels_last)
    kernels = torch.randn(2, 6 * 9, 7, 5).contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 6, 7, 5).contiguous(
        memory_format=torch.channels_last
    )  # non-contiguous grad_out
    a = [t.clone().requires_grad_(True) for t in (x, kernels)]
    r = [t.contiguous().requires_grad_(True) for t in (x, kernels)]
    got = torch.autograd.grad(kernel_modulation(*a, 3), a, g)
    want = torch.autograd.grad(unfold_reference(*r, 3), r, g)
    for p, q in zip(got, want):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_bfloat16_backward_is_close():
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    kernels = torch.randn(1, 36, 8, 8, requires_grad=True)
    g = torch.randn(1, 4, 8, 8)
    rx, rk = torch.autograd.grad(unfold_reference(x, kernels, 3), (x, kernels), g)
    xb, kb = (
        x.detach().bfloat16().requires_grad_(True),
        kernels.detach().bfloat16().requires_grad_(True),
    )
    gx, gk = torch.autograd.grad(kernel_modulation(xb, kb, 3), (xb, kb), g.bfloat16())
    assert gx.dtype == gk.dtype == torch.bfloat16
    torch.testing.assert_close(gx.float(), rx, rtol=0.05, atol=0.2)
    torch.testing.assert_close(gk.float(), rk, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
def test_empty_inputs(shape):
    b, c, h, w = shape
    x = torch.randn(shape, requires_grad=True)
    kernels = torch.randn(b, c * 9, h, w, requires_grad=True)
    out = kernel_modulation(x, kernels, 3)
    assert out.shape == shape
    out.sum().backward()
    assert x.grad.shape == x.shape and kernels.grad.shape == kernels.shape


def test_autocast_bfloat16_training_step():
    # Under CPU autocast, convolutions hand the op bfloat16 features and kernels.
    conv_x, conv_k = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 36, 1)
    image = torch.randn(2, 3, 9, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, kernels = conv_x(image), conv_k(image)
        out = kernel_modulation(x, kernels, 3)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in conv_k.parameters())
    ref = unfold_reference(x.float(), kernels.float(), 3)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_non_finite_kernels_at_the_border_stay_where_they_belong():
    # A kernel entry whose neighbour is off the plane contributes nothing to the gradient for x,
    # even inf or NaN. (In the forward the oracle multiplies it by a padding zero, the shifted
    # path leaves it out: no promise there.)
    x = torch.randn(1, 2, 5, 6, requires_grad=True)
    kernels = torch.randn(1, 18, 5, 6)
    kernels[0, 2, 2, 5] = float("inf")  # dx = +1 at the last column
    kernels[0, 9 + 6, 4, 0] = float("nan")  # dy = +1, dx = -1 at the bottom-left corner
    kernels.requires_grad_(True)
    g = torch.randn(1, 2, 5, 6)
    out = kernel_modulation(x, kernels, 3)
    ref = unfold_reference(x, kernels, 3)
    (gx,) = torch.autograd.grad(out, (x,), g)
    (rx,) = torch.autograd.grad(ref, (x,), g)
    assert torch.equal(gx.isnan(), rx.isnan())
    torch.testing.assert_close(gx.nan_to_num(), rx.nan_to_num(), rtol=1e-5, atol=1e-5)
