"""A whole ``Harmonizer`` call per bundled 256x256 sample: each model in its fastest CPU layout
(what ``Harmonizer(name)``, ``harmonize run`` and ``evaluate`` now use,
``harmonize.utils.device.preferred_memory_format``) against the contiguous layout (what they
used before; ``Harmonizer(module)`` keeps a passed module's own layout).

Both sides hold the same shipped weights, run in this one process, interleaved, float32 and
``amp=True`` (bfloat16 autocast); the median per photo over ``--reps`` rounds after one untimed
round, and the ratio. The outputs are compared too (largest difference).

    python benchmarks/harmonizer_layout.py [--models gknet hdnet] [--threads 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import harmonize
from harmonize.data.io import load_image, load_mask
from harmonize.highres import Harmonizer

SAMPLES = Path(harmonize.__file__).parent / "assets" / "samples"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["gknet", "hdnet"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    comps = sorted((SAMPLES / "composite_images").iterdir())
    pairs = [(load_image(c), load_mask(SAMPLES / "masks" / (c.name.rsplit("_", 1)[0] + ".png"))) for c in comps]
    print(f"{len(pairs)} bundled samples at 256x256, {args.threads} threads, median of {args.reps} interleaved rounds")
    print(f"{'model':8} {'precision':9} {'fastest ms':>11} {'contiguous ms':>14} {'speed-up':>9} {'max |diff|':>11}")
    for arch in args.models:
        for amp in (None, True):
            sides = {
                "fastest": Harmonizer(arch, amp=amp),
                "contiguous": Harmonizer(harmonize.create_model(arch, pretrained=True), amp=amp),
            }
            times: dict[str, list[float]] = {k: [] for k in sides}
            outs: dict[str, list[torch.Tensor]] = {}
            for i in range(args.reps + 1):
                for name in list(sides) if i % 2 == 0 else list(sides)[::-1]:
                    start = time.perf_counter()
                    outs[name] = [sides[name](img, m) for img, m in pairs]
                    if i:
                        times[name].append((time.perf_counter() - start) / len(pairs) * 1000)
            fast, plain = statistics.median(times["fastest"]), statistics.median(times["contiguous"])
            diff = max(float((a - b).abs().max()) for a, b in zip(outs["fastest"], outs["contiguous"]))
            print(f"{arch:8} {'bfloat16' if amp else 'float32':9} {fast:11.1f} {plain:14.1f} {plain / fast:8.2f}x {diff:11.2e}")


if __name__ == "__main__":
    main()
