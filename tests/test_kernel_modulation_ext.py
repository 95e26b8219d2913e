"""The compiled CPU kernels of kernel_modulation (harmonize/layers/csrc), and the fallback to the
pure-PyTorch path where they cannot be built. test_kernel_modulation.py runs its tests on both."""

import importlib
import logging
import os
import subprocess
import sys

import pytest
import torch
from test_kernel_modulation import _grads_vs_oracle, unfold_reference  # the unfold oracle

from harmonize.layers import _kmod_ext, kernel_modulation

km = importlib.import_module("harmonize.layers.kernel_modulation")  # the module, not the function


@pytest.fixture
def compiled():
    module = _kmod_ext.load()
    if module is None:
        pytest.skip("compiled kernel_modulation unavailable (no compiler or ninja, or disabled)")
    return module


@pytest.mark.parametrize("k", [3, 5, 7, 9])  # 9: the kernel size the code has no template for
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 70, 90), (1, 2, 3, 4100), (1, 2, 130, 7), (2, 2, 9, 4)])
def test_compiled_chunks_of_rows(compiled, k, shared, shape):
    # Planes of more than 4096 pixels are split into chunks of rows (here 2, 3 and 2 chunks;
    # rows of one pixel's width); the last has planes narrower than k.
    b, c, h, w = shape
    x = torch.randn(shape, dtype=torch.float64)
    kernels = torch.randn(b, (1 if shared else c) * k * k, h, w, dtype=torch.float64)
    _grads_vs_oracle(x, kernels, k)


def test_compiled_two_threads(compiled):
    # Work is handed out item by item to torch's threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(3, 5, 70, 61, dtype=torch.float64)
        _grads_vs_oracle(x, torch.randn(3, 45, 70, 61, dtype=torch.float64), 3)
        _grads_vs_oracle(x, torch.randn(3, 9, 70, 61, dtype=torch.float64), 3)
    finally:
        torch.set_num_threads(threads)


def test_compiled_streaming_stores(compiled):
    # A kernel gradient of 16 MiB or more goes out with non-temporal stores.
    x = torch.randn(1, 64, 96, 96)
    kernels = torch.randn(1, 64 * 9, 96, 96)
    assert kernels.nbytes >= 16 * 2**20
    _grads_vs_oracle(x, kernels, 3, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_low_precision_matches_pytorch_path(compiled, monkeypatch, dtype):
    x = torch.randn(2, 4, 13, 21, dtype=dtype, requires_grad=True)
    kernels = torch.randn(2, 36, 13, 21, dtype=dtype, requires_grad=True)
    g = torch.randn(2, 4, 13, 21, dtype=dtype)
    out = kernel_modulation(x, kernels, 3)
    got = torch.autograd.grad(out, (x, kernels), g)
    monkeypatch.setattr(km, "_compiled", lambda t: None)
    ref = kernel_modulation(x, kernels, 3)
    want = torch.autograd.grad(ref, (x, kernels), g)
    assert out.dtype == got[0].dtype == got[1].dtype == dtype
    # The kernel gradient is one rounded product either way; the sums are rounded once here.
    assert torch.equal(got[1], want[1])
    exact = unfold_reference(x.double(), kernels.double(), 3)
    assert (out.double() - exact).abs().max() <= (ref.double() - exact).abs().max() + 1e-3
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=0.02, atol=0.05)


def test_compiled_is_used_on_cpu(compiled):
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    assert km._compiled(x) is compiled
    out = kernel_modulation(x, torch.randn(1, 18, 5, 5), 3)
    assert out.grad_fn is not None


# ----------------------------------------------------------------- falling back


@pytest.fixture
def fresh_ext_state(monkeypatch):
    """_kmod_ext as before its first load (restored afterwards)."""
    monkeypatch.setattr(_kmod_ext, "_state", {})


def test_fallback_when_the_build_fails(fresh_ext_state, monkeypatch, caplog):
    def no_compiler():
        raise RuntimeError("no C++ compiler ('c++' not on PATH)")

    monkeypatch.delenv(_kmod_ext.ENV_VAR, raising=False)
    monkeypatch.setattr(_kmod_ext, "_build", no_compiler)
    with caplog.at_level(logging.WARNING, logger=_kmod_ext.__name__):
        x, kernels = torch.randn(2, 3, 6, 7), torch.randn(2, 27, 6, 7)
        _grads_vs_oracle(x, kernels, 3, rtol=1e-5, atol=1e-5)
        kernel_modulation(x, kernels, 3)
    assert _kmod_ext.load() is None and not _kmod_ext.available()
    warnings = [r for r in caplog.records if "pure-PyTorch" in r.getMessage()]
    assert len(warnings) == 1 and "not on PATH" in warnings[0].getMessage()


def test_env_var_disables_the_build(fresh_ext_state, monkeypatch):
    monkeypatch.setenv(_kmod_ext.ENV_VAR, "0")
    monkeypatch.setattr(_kmod_ext, "_build", lambda: pytest.fail("built despite the variable"))
    assert _kmod_ext.load() is None
    assert km._compiled(torch.empty(0)) is None


def test_no_compiler_no_ninja_raise_before_compiling(monkeypatch, tmp_path):
    # What a user without a toolchain gets: a clear reason, then the fallback.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing built there
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        _kmod_ext._build()


def test_import_builds_nothing():
    code = (
        "import sys, harmonize, harmonize.layers._kmod_ext as e; "
        "print('torch.utils.cpp_extension' in sys.modules, e._state)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "{}"]
