"""Size and speed of the zoo's models at 256x256: parameters, FLOPs and CPU latency.

For each model, on one real composite of the bundled samples (its mask resized to the input
size), this measures:

- ``params``: parameters, in millions;
- ``GFLOPs``: floating-point operations of one forward pass, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matrix products, attention; a
  multiply-add is 2) plus kernel modulation's multiply-adds, counted from its shapes because
  it is not a matrix product. Elementwise work (activations, normalisation, blending) is not
  counted, as in the papers' tables. HDNet's Local Dynamic matches foreground against
  background positions, so its count depends on the mask: the mask's foreground share is printed;
- ``latency``: median wall time of a batch-1 forward pass under ``torch.no_grad()`` with
  ``--threads`` CPU threads, after warm-up, and its ratio to the fastest learned model of the
  run (all timed in this one process, one after the other).

Usage::

    python benchmarks/models.py                       # the default models, 1 thread
    python benchmarks/models.py --threads 2 --reps 30
    python benchmarks/models.py --models gknet hdnet --size 512

Time it on an idle machine: other processes on the cores change the latencies.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import harmonize
from harmonize.data.io import load_image, load_mask
from harmonize.demo import bundled_samples
from harmonize.models import gknet as gknet_module

DEFAULT_MODELS = ["reinhard", "gknet", "gknet_large", "hdnet", "hdnet_large"]


def sample(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first bundled composite and its mask, resized to ``size`` x ``size``."""
    first = bundled_samples()[0]
    image = F.interpolate(load_image(first.composite)[None], size=(size, size), mode="bilinear", antialias=True)
    mask = (F.interpolate(load_mask(first.mask)[None], size=(size, size), mode="bilinear") > 0.5).float()
    return image, mask


def count_flops(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor) -> float:
    """FLOPs of one forward pass: the counter's, plus kernel modulation's multiply-adds."""
    modulation = 0
    original = gknet_module.kernel_modulation

    def counted(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
        nonlocal modulation
        modulation += 2 * x.numel() * kernel_size * kernel_size
        return original(x, kernels, kernel_size)

    gknet_module.kernel_modulation = counted
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image, mask)
    finally:
        gknet_module.kernel_modulation = original
    return float(counter.get_total_flops() + modulation)


def latency(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor, reps: int) -> float:
    """Median seconds of a forward pass, after 3 warm-up passes."""
    times = []
    with torch.no_grad():
        for i in range(reps + 3):
            t = time.perf_counter()
            model(image, mask)
            if i >= 3:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image, mask = sample(args.size)
    print(
        f"input {args.size}x{args.size}, foreground {mask.mean().item():.1%} of the image, "
        f"{args.threads} thread(s), median of {args.reps} passes, torch {torch.__version__}"
    )
    rows = []
    for name in args.models:
        model = harmonize.create_model(name).eval()
        params = sum(p.numel() for p in model.parameters())
        rows.append((name, params / 1e6, count_flops(model, image, mask) / 1e9, latency(model, image, mask, args.reps)))
    learned = [r[3] for r in rows if r[1] > 0]
    fastest = min(learned) if learned else min(r[3] for r in rows)
    print("\n| model | params (M) | GFLOPs | latency (ms) | vs fastest learned |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, params, gflops, secs in rows:
        print(f"| {name} | {params:.2f} | {gflops:.2f} | {secs * 1e3:.1f} | {secs / fastest:.2f}x |")


if __name__ == "__main__":
    main()
