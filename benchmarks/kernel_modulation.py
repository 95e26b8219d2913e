"""Kernel modulation: our op (shift-and-accumulate with its own backward) vs the plain unfold version.

Prints forward and forward+backward time (median) and peak memory of each, and their
ratios, measured in one run at B=4, k=3, (C, H, W) in (256, 32, 32), (128, 64, 64),
(64, 128, 128). Goal: forward+backward at most 0.25x the unfold version's time at every
size, under both allocator settings, and peak memory at most output plus gradients
(``bound``: the bytes of the output, of x and of the kernels).

Our op runs its compiled CPU kernels where they can be built (``compiled``; see
``harmonize/layers/_kmod_ext.py``), else its pure-PyTorch path (``pytorch``, which
``--impl pytorch`` or ``both`` also measures, as a user without a compiler gets it).

Times are medians over ``--reps`` rounds (after two warm-up rounds); each round runs every
measurement (our op and unfold, forward and forward+backward) one after the other, so that
both see the same machine load (with ``--impl both``, each of ours in rounds of its own). Timings depend on glibc's allocator settings: with the defaults, every
large new tensor costs page faults. ``--allocator both`` (the default) runs the benchmark
twice in fresh processes: with glibc's defaults and with the tuned settings of
docs/training.md (``MALLOC_*``, printed in each header).

Peak memory is the growth of the resident set of a fresh process running one
forward+backward (inputs allocated first, and the op run once on small inputs, so that
loading the compiled kernels is not counted; glibc told to map every tensor separately, so
freed memory leaves the resident set), so it counts everything the op allocates,
autograd's saved tensors and the gradients included. That process gets its own allocator
settings, whatever the benchmark itself runs with.

    python benchmarks/kernel_modulation.py [--reps 10] [--threads 2] [--allocator both]
        [--impl compiled|pytorch|both]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from harmonize.layers import kernel_modulation

km = importlib.import_module("harmonize.layers.kernel_modulation")  # the module, not the function

SIZES = [(256, 32, 32), (128, 64, 64), (64, 128, 128)]
B, K = 4, 3
GOAL = 0.25  # fwd+bwd time of ours / unfold's, at most
# The tuned allocator of docs/training.md.
TUNED = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "8589934592",
    "MALLOC_TOP_PAD_": "536870912",
}


def unfold_modulation(x: torch.Tensor, kernels: torch.Tensor, k: int = K) -> torch.Tensor:
    b, c, h, w = x.shape
    cols = F.unfold(x, k, padding=k // 2).view(b, c, k * k, h, w)
    return (cols * kernels.view(b, c, k * k, h, w)).sum(2)


@contextlib.contextmanager
def _pure_pytorch():
    """Our op without its compiled kernels, as where they cannot be built."""
    saved = km._compiled
    km._compiled = lambda t: None
    try:
        yield
    finally:
        km._compiled = saved


def pytorch_modulation(x: torch.Tensor, kernels: torch.Tensor, k: int = K) -> torch.Tensor:
    with _pure_pytorch():
        return kernel_modulation(x, kernels, k)


OPS = {"compiled": kernel_modulation, "pytorch": pytorch_modulation, "unfold": unfold_modulation}


def _inputs(c: int, h: int, w: int, grad: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, c, h, w, generator=g).requires_grad_(grad)
    kernels = torch.randn(B, c * K * K, h, w, generator=g).requires_grad_(grad)
    return x, kernels


def time_ops(names: list[str], c: int, h: int, w: int, reps: int) -> dict[tuple[str, bool], float]:
    """Median ms of each (op, backward) pair, measured in interleaved rounds."""
    inputs = {bw: _inputs(c, h, w, bw) for bw in (False, True)}
    grad = torch.randn(B, c, h, w)
    times: dict[tuple[str, bool], list[float]] = {
        (n, bw): [] for bw in (False, True) for n in names
    }
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
    warm = torch.randn(1, 1, 4, 4, requires_grad=True), torch.randn(1, K * K, 4, 4)
    op(*warm, K).sum().backward()  # loads the compiled kernels (once per process)
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


def bound_mib(c: int, h: int, w: int) -> float:
    """Output plus gradients: the bytes of the output, of x and of the kernels (float32)."""
    return 4 * B * (c + c + c * K * K) * h * w / 2**20


def run(args: argparse.Namespace) -> bool:
    torch.set_num_threads(args.threads)
    ours = ["compiled", "pytorch"] if args.impl == "both" else [args.impl]
    if "compiled" in ours and km._compiled(torch.empty(0)) is None:
        print("compiled kernels unavailable (see the log above): measuring the pytorch path")
        ours = ["pytorch"]
    malloc = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")]
    print(f"torch {torch.__version__}, {args.threads} threads, B={B}, k={K}, float32")
    print(f"median of {args.reps} rounds; load average before the run: {os.getloadavg()[0]:.2f}")
    print(f"glibc malloc settings: {' '.join(malloc) or 'defaults'}")
    header = (
        f"{'C, H, W':>14} {'ours':>8} | {'fwd ms ours/unfold':>19} {'ratio':>6} | "
        f"{'fwd+bwd ms ours/unfold':>23} {'ratio':>6} | {'peak MiB ours/bound/unfold':>27}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for c, h, w in SIZES:
        m_u = peak_memory("unfold", c, h, w, True)
        bound = bound_mib(c, h, w)
        for name in ours:
            # Each of ours against unfold in rounds of its own: the pure-PyTorch path's seconds
            # of churn under load would otherwise disturb the compiled kernels' milliseconds.
            t = time_ops([name, "unfold"], c, h, w, args.reps)
            f_u, b_u = t["unfold", False], t["unfold", True]
            f_s, b_s = t[name, False], t[name, True]
            m_s = peak_memory(name, c, h, w, True)
            ratio = b_s / b_u
            if name == ours[0]:
                ok &= ratio <= GOAL and m_s <= bound * 1.02  # 2%: the resident set's own noise
            print(
                f"{f'{c}, {h}, {w}':>14} {name:>8} | {f'{f_s:.1f} / {f_u:.1f}':>19} {f_s / f_u:>5.2f}x | "
                f"{f'{b_s:.1f} / {b_u:.1f}':>23} {ratio:>5.2f}x | {f'{m_s:.0f} / {bound:.0f} / {m_u:.0f}':>27}"
            )
    print(
        f"goal ({ours[0]}: fwd+bwd <= {GOAL}x unfold's time, peak <= output + gradients, at every size):",
        "met" if ok else "NOT met",
    )
    return ok


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--allocator", choices=["both", "default", "tuned", "inherit"], default="both")
    p.add_argument("--impl", choices=["compiled", "pytorch", "both"], default="compiled")
    args = p.parse_args()
    if args.allocator == "inherit":  # this process as started
        sys.exit(0 if run(args) else 1)
    if "compiled" in (args.impl, "both"):
        km._compiled(torch.empty(0))  # build once here, not in each child
    ok = True
    for setting in ["default", "tuned"] if args.allocator == "both" else [args.allocator]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        if setting == "tuned":
            env.update(TUNED)
        argv = [a for a in sys.argv[1:] if not a.startswith("--allocator")]
        argv = [a for i, a in enumerate(argv) if i == 0 or argv[i - 1] != "--allocator"]
        print(flush=True)
        ok &= (
            subprocess.run(
                [sys.executable, __file__, *argv, "--allocator", "inherit"], env=env
            ).returncode
            == 0
        )
    print(
        f"\ngoal under {'both allocator settings' if args.allocator == 'both' else args.allocator}:",
        "met" if ok else "NOT met",
    )


if __name__ == "__main__":
    main()
