"""Kernel modulation: shift-and-accumulate with its own backward vs the plain unfold version.

Prints forward and forward+backward time (median) and peak memory of each, and their
ratios, measured in one run at B=4, k=3, (C, H, W) in (256, 32, 32), (128, 64, 64),
(64, 128, 128). Goal: forward+backward at least 3x faster than unfold, and at most half
its peak memory, at every size.

Times are medians over ``--reps`` rounds (after two warm-up rounds); each round runs the
four measurements (shift and unfold, forward and forward+backward) one after the other, so
that both ops see the same machine load. Timings depend on glibc's allocator settings
(``MALLOC_*`` variables, printed in the header): with the defaults, every large new tensor
costs page faults.

Peak memory is the growth of the resident set of a fresh process running one
forward+backward (inputs allocated first; glibc told to map every tensor separately, so
freed memory leaves the resident set), so it counts everything the op allocates,
autograd's saved tensors and the gradients included. That process gets its own allocator
settings, whatever the benchmark itself runs with.

    python benchmarks/kernel_modulation.py [--reps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from harmonize.layers import kernel_modulation

SIZES = [(256, 32, 32), (128, 64, 64), (64, 128, 128)]
B, K = 4, 3


def unfold_modulation(x: torch.Tensor, kernels: torch.Tensor, k: int = K) -> torch.Tensor:
    b, c, h, w = x.shape
    cols = F.unfold(x, k, padding=k // 2).view(b, c, k * k, h, w)
    return (cols * kernels.view(b, c, k * k, h, w)).sum(2)


OPS = {"shift": kernel_modulation, "unfold": unfold_modulation}


def _inputs(c: int, h: int, w: int, grad: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, c, h, w, generator=g).requires_grad_(grad)
    kernels = torch.randn(B, c * K * K, h, w, generator=g).requires_grad_(grad)
    return x, kernels


def time_ops(c: int, h: int, w: int, reps: int) -> dict[tuple[str, bool], float]:
    """Median ms of each (op, backward) pair, measured in interleaved rounds."""
    inputs = {bw: _inputs(c, h, w, bw) for bw in (False, True)}
    grad = torch.randn(B, c, h, w)
    times: dict[tuple[str, bool], list[float]] = {(n, bw): [] for bw in (False, True) for n in OPS}
    for i in range(reps + 2):
        for (name, backward), ts in times.items():
            x, kernels = inputs[backward]
            op = OPS[name]
            t = time.perf_counter()
            if backward:
                x.grad = kernels.grad = None
                op(x, kernels, K).backward(grad)
            else:
                with torch.no_grad():
                    op(x, kernels, K)
            if i >= 2:  # warm-up
                ts.append(time.perf_counter() - t)
    return {key: statistics.median(ts) * 1e3 for key, ts in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(name: str, c: int, h: int, w: int, backward: bool) -> None:
    """Run in a fresh process: print the peak resident-set growth (bytes) of one call."""
    op = OPS[name]
    x, kernels = _inputs(c, h, w, backward)
    grad = torch.randn(B, c, h, w)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark (VmHWM) to the current resident set
    base = _status_kib("VmRSS")
    if backward:
        op(x, kernels, K).backward(grad)
    else:
        with torch.no_grad():
            op(x, kernels, K)
    print(json.dumps({"peak": max(_status_kib("VmHWM") - base, 0) * 1024}))


def peak_memory(name: str, c: int, h: int, w: int, backward: bool) -> float:
    code = f"import sys; sys.path.insert(0, {sys.path[0]!r}); import kernel_modulation as km; km._peak_child({name!r}, {c}, {h}, {w}, {backward})"
    # Small mmap threshold: every tensor is its own mapping, returned to the system when freed,
    # so the resident set follows live memory.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(OMP_NUM_THREADS=str(torch.get_num_threads()), MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"] / 2**20


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    malloc = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")]
    print(f"torch {torch.__version__}, {args.threads} threads, B={B}, k={K}, float32")
    print(f"median of {args.reps} rounds; load average before the run: {os.getloadavg()[0]:.2f}")
    print(f"glibc malloc settings: {' '.join(malloc) or 'defaults'}")
    header = (
        f"{'C, H, W':>14} | {'fwd ms shift/unfold':>20} {'speed-up':>8} | {'fwd+bwd ms shift/unfold':>24} "
        f"{'speed-up':>8} | {'peak MiB shift/unfold':>22} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for c, h, w in SIZES:
        t = time_ops(c, h, w, args.reps)
        (f_s, b_s), (f_u, b_u) = [(t[name, False], t[name, True]) for name in ("shift", "unfold")]
        m_s, m_u = peak_memory("shift", c, h, w, True), peak_memory("unfold", c, h, w, True)
        speed, mem = b_u / b_s, m_s / m_u
        ok &= speed >= 3 and mem <= 0.5
        print(
            f"{f'{c}, {h}, {w}':>14} | {f'{f_s:.1f} / {f_u:.1f}':>20} {f_u / f_s:>7.1f}x | "
            f"{f'{b_s:.1f} / {b_u:.1f}':>24} {speed:>7.1f}x | {f'{m_s:.0f} / {m_u:.0f}':>22} {mem:>6.2f}"
        )
    print("goal (fwd+bwd >= 3x faster, peak <= 0.5x at every size):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
