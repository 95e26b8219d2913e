"""``torch.compile`` against eager on the CPU: the evaluation forward and the training step.

Two measurements, each in this one process, eager and compiled alternating:

- ``infer``: the channels-last float32 forward of ``gknet.labelme_long`` (what ``harmonize
  evaluate`` runs), batch 1 at 256x256, compiled with inductor's freezing (BatchNorm folded
  into the convolutions, weights prepacked for oneDNN), and the largest output difference;
- ``train``: a training step of ``gknet`` (channels-last, batch 4 of random 256x256 images,
  the trainer's loss, fused Adam, grad-clip 1.0), float32 or bfloat16 autocast, the model
  compiled in inductor's default mode, and the losses of both sides.

The compile time (the first call) is printed apart; the timings are the median over
``--reps`` rounds after it. Neither is used by the library: they record why.

    python benchmarks/compile.py [--what infer train] [--dtype bf16] [--threads 1] [--reps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import harmonize
from harmonize.losses import foreground_mse_loss

CL = torch.channels_last


def _inputs(batch: int, n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        comp = torch.rand(batch, 3, 256, 256, generator=g).contiguous(memory_format=CL)
        mask = (torch.rand(batch, 1, 256, 256, generator=g) > 0.6).float().contiguous(memory_format=CL)
        real = torch.rand(batch, 3, 256, 256, generator=g).contiguous(memory_format=CL)
        out.append((comp, mask, real))
    return out


def _alternate(eager: Callable[[int], object], compiled: Callable[[int], object], reps: int) -> tuple[float, float]:
    """Median seconds of each side, calls alternating, after one untimed call of each."""
    eager(0), compiled(0)
    te, tc = [], []
    for i in range(reps):
        t = time.perf_counter()
        eager(i)
        te.append(time.perf_counter() - t)
        t = time.perf_counter()
        compiled(i)
        tc.append(time.perf_counter() - t)
    return statistics.median(te), statistics.median(tc)


def bench_infer(reps: int) -> None:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    model = harmonize.create_model("gknet.labelme_long", pretrained=True).eval().to(memory_format=CL)
    xs = _inputs(1, 4)
    fast = torch.compile(model)
    diff = 0.0
    with torch.inference_mode():
        t = time.perf_counter()
        fast(*xs[0][:2])
        print(f"infer: compiling took {time.perf_counter() - t:.1f} s")

        def run(m: Callable, i: int) -> torch.Tensor:
            return m(*xs[i % len(xs)][:2])

        for c, k, _ in xs:
            diff = max(diff, (model(c, k) - fast(c, k)).abs().max().item())
        te, tc = _alternate(lambda i: run(model, i), lambda i: run(fast, i), reps)
    print(f"infer float32, batch 1: eager {te * 1e3:.1f} ms, frozen compiled {tc * 1e3:.1f} ms, "
          f"time ratio {tc / te:.2f}x, max |diff| {diff * 255:.2e}/255")


def bench_train(dtype: str, reps: int) -> None:
    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        m = harmonize.create_model("gknet").to(memory_format=CL).train()
        return m, torch.optim.Adam(m.parameters(), lr=1e-4, fused=True)

    batches = _inputs(4, 4)
    sides = {"eager": make(), "compiled": make()}
    forwards = {"eager": sides["eager"][0], "compiled": torch.compile(sides["compiled"][0])}
    losses: dict[str, list[float]] = {k: [] for k in sides}

    def step(side: str, i: int) -> float:
        model, opt = sides[side]
        comp, mask, real = batches[i % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            pred = forwards[side](comp, mask)
        loss = foreground_mse_loss(pred.float(), real, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses[side].append(loss.item())
        return losses[side][-1]

    t = time.perf_counter()
    step("compiled", 0)
    print(f"train: compiling (and one step) took {time.perf_counter() - t:.1f} s")
    step("eager", 0)
    te, tc = _alternate(lambda i: step("eager", i + 1), lambda i: step("compiled", i + 1), reps)
    print(f"train {dtype}, batch 4: eager {te * 1e3:.0f} ms, compiled {tc * 1e3:.0f} ms a step, "
          f"speed-up {te / tc:.2f}x; last losses {losses['eager'][-1]:.5f} / {losses['compiled'][-1]:.5f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", nargs="+", choices=["infer", "train"], default=["infer", "train"])
    p.add_argument("--dtype", choices=["float32", "bf16"], default="bf16", help="the training step's precision")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, median of {args.reps} alternating rounds")
    if "infer" in args.what:
        bench_infer(args.reps)
    if "train" in args.what:
        bench_train(args.dtype, args.reps)


if __name__ == "__main__":
    main()
