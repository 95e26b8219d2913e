"""The GPU paths on a CUDA machine: the CUDA tests, then the Triton kernels against the PyTorch
path, and GKNet/HDNet in float32 against bfloat16 autocast (inference and training).

1. ``pytest -m cuda tests/test_triton_ops.py``: the Triton kernels equal the CPU path,
   whole models and autocast (skipped with ``--no-tests``).
2. Kernel modulation (B=4, k=3, (C, H, W) in (256, 32, 32), (128, 64, 64), (64, 128, 128)),
   float32 and bfloat16, forward and forward+backward: Triton vs the PyTorch path
   (``HARMONIZE_TRITON=0``); ratio = PyTorch / Triton.
3. Local dynamic (C=256, top_k=1: B=4 at 32x32, HDNet's bottleneck at 256x256 input, and
   B=1 at 96x96), forward: the Triton top-k vs PyTorch's chunked matching.
4. ``gknet`` and ``hdnet`` (untrained weights; speed does not depend on them) at 256x256:
   inference at batch 1 and 8, and a training step (AdamW, L1) at batch 8, float32 vs
   bfloat16 autocast (``harmonize.utils.device.inference_autocast``), Triton on; ratio =
   float32 / autocast. Peak memory of each.

Times are medians over ``--reps`` runs after warm-up (which compiles the Triton kernels),
timed with CUDA events. On a machine without CUDA it prints one line and exits 0.

    python benchmarks/gpu.py [--reps 20] [--no-tests]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KMOD_SIZES = [(256, 32, 32), (128, 64, 64), (64, 128, 128)]
LD_SIZES = [(4, 256, 32, 32), (1, 256, 96, 96)]


@contextlib.contextmanager
def triton(enabled: bool) -> Iterator[None]:
    """The layers' Triton kernels on or off (``HARMONIZE_TRITON`` is read on every call)."""
    from harmonize.layers import _gpu

    previous = os.environ.get(_gpu.ENV_VAR)
    os.environ[_gpu.ENV_VAR] = "1" if enabled else "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_gpu.ENV_VAR)
        else:
            os.environ[_gpu.ENV_VAR] = previous


def timed(fn: Callable[[], object], reps: int, warmup: int = 3) -> tuple[float, float]:
    """(median ms, peak MiB allocated) of ``fn`` on the current CUDA device."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20


def run_tests() -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_triton_ops.py"]
    print("$", " ".join(cmd[1:]), flush=True)
    env = {**os.environ, "HARMONIZE_KMOD_EXT": "0"}  # the CPU reference: no C++ build first
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    print("\n".join((out.stdout + out.stderr).strip().splitlines()[-15:]), flush=True)
    return out.returncode


def bench_kernel_modulation(reps: int) -> None:
    from harmonize.layers import kernel_modulation

    print("\n## kernel modulation, B=4, k=3 (ms; ratio = PyTorch path / Triton)")
    print(f"{'dtype':9} {'C, H, W':14} {'pass':8} {'Triton':>8} {'PyTorch':>8} {'ratio':>6}")
    for dtype in (torch.float32, torch.bfloat16):
        for c, h, w in KMOD_SIZES:
            x = torch.randn(4, c, h, w, device="cuda", dtype=dtype, requires_grad=True)
            kernels = torch.randn(4, c * 9, h, w, device="cuda", dtype=dtype, requires_grad=True)
            g = torch.randn_like(x)

            def fwd(x: torch.Tensor = x, kernels: torch.Tensor = kernels) -> object:
                with torch.no_grad():
                    return kernel_modulation(x, kernels, 3)

            def fwd_bwd(
                x: torch.Tensor = x, kernels: torch.Tensor = kernels, g: torch.Tensor = g
            ) -> object:
                return torch.autograd.grad(kernel_modulation(x, kernels, 3), (x, kernels), g)

            for name, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                with triton(True):
                    t_on, _ = timed(fn, reps)
                with triton(False):
                    t_off, _ = timed(fn, reps)
                size = f"{c}, {h}, {w}"
                print(
                    f"{str(dtype)[6:]:9} {size:14} {name:8} {t_on:8.3f} {t_off:8.3f} {t_off / t_on:6.2f}"
                )


def bench_local_dynamic(reps: int) -> None:
    from harmonize.layers import local_dynamic

    print(
        "\n## local dynamic, C=256, top_k=1, forward (ms, peak MiB; ratio = PyTorch path / Triton)"
    )
    for b, c, h, w in LD_SIZES:
        f = torch.randn(b, c, h, w, device="cuda")
        mask = torch.zeros(b, 1, h, w, device="cuda")
        mask[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
        with torch.no_grad():
            with triton(True):
                t_on, m_on = timed(lambda f=f, mask=mask: local_dynamic(f, f, mask, 1), reps)
            with triton(False):
                t_off, m_off = timed(lambda f=f, mask=mask: local_dynamic(f, f, mask, 1), reps)
        print(
            f"B={b} {h}x{w}: Triton {t_on:.3f} ms ({m_on:.0f} MiB), "
            f"PyTorch {t_off:.3f} ms ({m_off:.0f} MiB), ratio {t_off / t_on:.2f}"
        )


def bench_models(reps: int) -> None:
    import harmonize
    from harmonize.utils.device import inference_autocast

    dev = torch.device("cuda")
    print("\n## models at 256x256, Triton on (ms, peak MiB; ratio = float32 / bf16 autocast)")
    for name in ("gknet", "hdnet"):
        model = harmonize.create_model(name).to(dev)
        for batch in (1, 8):
            image = torch.rand(batch, 3, 256, 256, device=dev)
            mask = torch.zeros(batch, 1, 256, 256, device=dev)
            mask[..., 64:192, 48:200] = 1
            model.eval()
            res = {}
            for amp in (False, True):

                def infer(
                    model: torch.nn.Module = model,
                    image: torch.Tensor = image,
                    mask: torch.Tensor = mask,
                    amp: bool = amp,
                ) -> object:
                    with torch.no_grad(), inference_autocast(dev, amp):
                        return model(image, mask).float().clamp(0, 1)

                res[amp] = timed(infer, reps)
            print(
                f"{name} inference batch {batch}: fp32 {res[False][0]:.2f} ms ({res[False][1]:.0f} MiB), "
                f"amp {res[True][0]:.2f} ms ({res[True][1]:.0f} MiB), ratio {res[False][0] / res[True][0]:.2f}"
            )
        model.train()
        image = torch.rand(8, 3, 256, 256, device=dev)
        mask = torch.zeros(8, 1, 256, 256, device=dev)
        mask[..., 64:192, 48:200] = 1
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        res = {}
        for amp in (False, True):

            def step(
                model: torch.nn.Module = model,
                image: torch.Tensor = image,
                mask: torch.Tensor = mask,
                amp: bool = amp,
                opt: torch.optim.Optimizer = opt,
            ) -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    loss = (model(image, mask).float() - image).abs().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            res[amp] = timed(step, max(3, reps // 4), warmup=2)
        print(
            f"{name} training step batch 8: fp32 {res[False][0]:.1f} ms ({res[False][1]:.0f} MiB), "
            f"amp {res[True][0]:.1f} ms ({res[True][1]:.0f} MiB), ratio {res[False][0] / res[True][0]:.2f}"
        )
        del model, opt
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="timed runs per measurement")
    parser.add_argument("--no-tests", action="store_true", help="skip the CUDA tests")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU on this machine, nothing to measure")
        return 0
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    failed = 0 if args.no_tests else run_tests()
    torch.backends.cudnn.benchmark = True
    bench_kernel_modulation(args.reps)
    bench_local_dynamic(args.reps)
    bench_models(args.reps)
    if failed:
        print(f"\nthe CUDA tests FAILED (pytest exit code {failed}); the figures above are suspect")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
