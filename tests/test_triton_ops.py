"""The GPU paths: the Triton kernels of kernel modulation and local dynamic, how the layers
pick them, and bfloat16 autocast in inference.

Without a GPU, the kernels run under Triton's interpreter (tests/_triton_interpreted.py, in a
subprocess so that TRITON_INTERPRET=1 reaches nobody else); the tests marked ``cuda`` skip.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_hdnet import _box_mask
from test_kernel_modulation import unfold_reference

import harmonize
from harmonize.evaluate import evaluate_models
from harmonize.highres import Harmonizer
from harmonize.layers import _gpu, kernel_modulation, local_dynamic
from harmonize.utils.device import inference_autocast

REPO = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None  # without importing it
km = importlib.import_module("harmonize.layers.kernel_modulation")
ld = importlib.import_module("harmonize.layers.local_dynamic")


def _interpret(marks: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marks]
    return subprocess.run(
        [*cmd, "tests/_triton_interpreted.py"], cwd=REPO, env=env, capture_output=True, text=True
    )


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernels_interpreted():
    # Forward and both gradients against the unfold oracle (k = 3, 5; shared kernels; odd and
    # multi-block sizes; strided inputs; bf16; empty), local dynamic against its reference.
    out = _interpret("not slow")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernels_interpreted_all():
    # Also: float64 to 1e-12 over every edge case of k = 1..7, gradcheck, whole test models.
    out = _interpret("")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout and "skipped" not in out.stdout


# ----------------------------------------------------------------- dispatch


def test_cpu_paths_never_import_triton():
    code = (
        "import sys, torch, harmonize\n"
        "from harmonize.layers import kernel_modulation, local_dynamic\n"
        "x = torch.randn(1, 2, 5, 5, requires_grad=True)\n"
        "kernel_modulation(x, torch.randn(1, 18, 5, 5), 3).sum().backward()\n"
        "local_dynamic(x, x, torch.ones(1, 1, 5, 5).tril())\n"
        "for name in ('test_gknet', 'test_hdnet'):\n"
        "    harmonize.create_model(name)(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32).tril())\n"
        "harmonize.Harmonizer(harmonize.create_model('test_gknet'), device='cpu')\n"
        "print('triton' in sys.modules, 'harmonize.layers._triton_ops' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_triton_ops_only_for_cuda_tensors(monkeypatch):
    monkeypatch.setattr(_gpu, "_state", {"module": "the kernels"})
    assert _gpu.triton_ops(torch.empty(1)) is None
    assert _gpu.triton_ops(torch.empty(1, device="meta")) is None
    cuda_like = SimpleNamespace(device=torch.device("cuda"))
    assert _gpu.triton_ops(cuda_like) == "the kernels"
    monkeypatch.setenv(_gpu.ENV_VAR, "0")
    assert _gpu.triton_ops(cuda_like) is None


def test_missing_triton_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(_gpu, "_state", {})
    monkeypatch.delenv(_gpu.ENV_VAR, raising=False)
    monkeypatch.setitem(sys.modules, "harmonize.layers._triton_ops", None)  # import fails
    cuda_like = SimpleNamespace(device=torch.device("cuda"))
    with caplog.at_level(logging.WARNING, logger=_gpu.__name__):
        assert _gpu.triton_ops(cuda_like) is None
        assert _gpu.triton_ops(cuda_like) is None
    warnings = [r for r in caplog.records if "PyTorch path" in r.getMessage()]
    assert len(warnings) == 1 and "harmonize.layers._triton_ops" in warnings[0].getMessage()


# ----------------------------------------------------------------- autocast in inference


def test_inference_autocast_on_the_cpu_only_when_asked():
    conv = torch.nn.Conv2d(3, 3, 1)
    for enabled in (None, False):
        with inference_autocast(torch.device("cpu"), enabled):
            out = conv(torch.rand(1, 3, 4, 4))
            assert not torch.is_autocast_enabled("cpu")
        assert out.dtype == torch.float32
    with inference_autocast(torch.device("cpu"), True):
        assert conv(torch.rand(1, 3, 4, 4)).dtype == torch.bfloat16


def test_default_amp_leaves_cpu_results_bit_identical():
    # amp=None (the default) is bfloat16 on CUDA only; amp=True asks for it on the CPU too
    model = harmonize.create_model("test_gknet").eval()
    image, mask = torch.rand(3, 40, 48), _box_mask(1, 40, 48, 8, 8, 30, 36)[0]
    a = Harmonizer(model, device="cpu")(image, mask)
    b = Harmonizer(model, device="cpu", amp=False)(image, mask)
    assert torch.equal(a, b) and a.dtype == torch.float32


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int = 2) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = [
            {
                "composite": torch.rand(3, 32, 32, generator=g),
                "real": torch.rand(3, 32, 32, generator=g),
                "mask": _box_mask(1, 32, 32, 4, 6, 20, 26)[0],
                "name": f"im{i}",
                "subset": "s",
            }
            for i in range(n)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _score(model, device: str, amp: bool | None) -> dict:
    summaries, _ = evaluate_models({"m": model}, _Items(), "issam", device=device, progress=False, amp=amp)
    return summaries["m"]["overall"]


def test_evaluate_default_amp_leaves_cpu_scores_identical():
    model = harmonize.create_model("test_hdnet")
    assert _score(model, "cpu", None) == _score(model, "cpu", False)


# ----------------------------------------------------------------- on a CUDA GPU

cuda = pytest.mark.cuda


def _cuda_grads(fn, inputs, g):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, g))


@cuda
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (2, 16, 67, 45), (1, 64, 128, 128)])
def test_cuda_kernel_modulation_equals_cpu(k, shared, shape):
    b, c, h, w = shape
    x, kernels = torch.randn(shape), torch.randn(b, (1 if shared else c) * k * k, h, w)
    g = torch.randn(shape)
    want = _cuda_grads(lambda a, q: kernel_modulation(a, q, k), (x, kernels), g)
    dev = [t.cuda() for t in (x, kernels, g)]
    got = _cuda_grads(lambda a, q: kernel_modulation(a, q, k), dev[:2], dev[2])
    assert type(got[0].grad_fn).__name__ == "KernelModulationFnBackward"  # the Triton function
    for a, r in zip(got, want):
        torch.testing.assert_close(a.cpu(), r, rtol=1e-4, atol=1e-4)


@cuda
def test_cuda_kernel_modulation_strided_and_bf16():
    x = torch.randn(2, 8, 33, 20, device="cuda").contiguous(memory_format=torch.channels_last)
    kernels = torch.randn(2, 20, 33, 72, device="cuda").permute(0, 3, 2, 1)  # (2, 72, 33, 20)
    ref = unfold_reference(x.contiguous(), kernels.contiguous(), 3)
    torch.testing.assert_close(kernel_modulation(x, kernels, 3), ref, rtol=1e-4, atol=1e-4)
    out = kernel_modulation(x.bfloat16(), kernels.bfloat16(), 3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.2)


@cuda
@pytest.mark.parametrize("top_k", [1, 3])
def test_cuda_local_dynamic_equals_cpu(top_k):
    f, v = torch.randn(2, 32, 40, 37), torch.randn(2, 8, 40, 37)
    mask = _box_mask(2, 80, 74, 10, 12, 60, 50)
    g = torch.randn(2, 8, 40, 37)
    want = _cuda_grads(lambda b: local_dynamic(f, f, mask, top_k, value_feat=b), (v,), g)
    fc, mc = f.cuda(), mask.cuda()
    got = _cuda_grads(lambda b: local_dynamic(fc, fc, mc, top_k, value_feat=b), (v.cuda(),), g.cuda())
    assert "harmonize.layers._triton_ops" in sys.modules
    for a, r in zip(got, want):
        torch.testing.assert_close(a.cpu(), r, rtol=1e-4, atol=1e-4)


@cuda
@pytest.mark.parametrize("name", ["test_gknet", "test_hdnet"])
def test_cuda_models_equal_cpu_and_amp_is_close(monkeypatch, name):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions
    model = harmonize.create_model(name).eval()
    image, mask = torch.rand(3, 64, 64), _box_mask(1, 64, 64, 16, 12, 44, 50)[0]
    cpu = Harmonizer(model, device="cpu")(image, mask)
    fp32 = Harmonizer(model, device="cuda", amp=False)(image.cuda(), mask.cuda())
    amp = Harmonizer(model, device="cuda", amp=True)(image.cuda(), mask.cuda())
    assert fp32.dtype == amp.dtype == torch.float32
    torch.testing.assert_close(fp32.cpu(), cpu, rtol=1e-4, atol=1e-4)
    assert float((amp.cpu() - cpu).abs().max()) < 0.05 and 0 <= float(amp.min()) <= float(amp.max()) <= 1


@cuda
def test_cuda_evaluate_with_amp_scores_close():
    model = harmonize.create_model("test_hdnet")
    cpu, amp = _score(model, "cpu", False), _score(model, "cuda", True)
    assert abs(amp["mse"] - cpu["mse"]) <= 0.05 * cpu["mse"] + 1.0


@cuda
def test_cuda_training_step_with_autocast():
    model = harmonize.create_model("test_gknet").cuda().train()
    image, mask = torch.rand(2, 3, 64, 64, device="cuda"), _box_mask(2, 64, 64, 8, 8, 40, 48).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = (model(image, mask).float() - image).square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and bool(g.isfinite().all()) for g in grads)
