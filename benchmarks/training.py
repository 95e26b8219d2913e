"""Trainer throughput at 256x256, batch 4, on the default model: this checkout against 0.1.

Both sides train the same network (GKNet as shipped: widths 24..160, softmax kernels; 0.1
called it ``gknet_small`` with ``kernel_norm="softmax"``) from the same seed on the LabelMe
training list, with the trainer's defaults for the CPU (``amp="auto"``, channels-last), one
data-loader worker and no evaluation, in fresh processes, interleaved (``--reps`` rounds).
0.1's ``auto`` always trained in bf16 autocast on the CPU; this checkout's times a step in both
and keeps bf16 only where it pays (``cpu_bf16_step_ratio``), and the row ``now, bf16`` forces it,
to show what the choice is worth on the machine at hand.
Images per second is read from each run's ``log.csv`` over the steps after the first
``--warmup`` ones; the mean loss over those steps is printed for both sides (equal within
noise: the same data order and initialisation), with the precision each run trained in (from
its checkpoint) and the whole command's wall time (start-up, the probe, every step).

Goal (issue "Fast from the first keystroke"): at least 1.5x 0.1's images per second.

    python benchmarks/training.py [--reps 2] [--steps 40] [--warmup 10]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

from _baseline import BASELINE, ROOT, cli_code, extract, load_average, run_python

from harmonize.train import load_checkpoint_state


def _config(model: str, model_args: dict, data: str, steps: int, log_every: int, amp: str = "auto") -> dict:
    return {
        "model": model, "model_args": model_args, "data": data, "subsets": ["LabelMe"], "size": 256,
        "batch_size": 4, "steps": steps, "lr": 1e-4, "schedule": "constant", "warmup_steps": 0, "grad_clip": 1.0,
        "ema_decay": 0.998, "amp": amp, "workers": 1, "synthetic": 0.7, "eval_split": "none",
        "ckpt_every": steps, "log_every": log_every, "seed": 0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10, help="first steps left out of the timing")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "labelme-harmony"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline", default=BASELINE)
    args = p.parse_args()
    print(f"256x256, batch 4, {args.steps} steps (the first {args.warmup} untimed), {args.threads} threads, "
          f"{args.reps} rounds; load average before the run: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = extract(args.baseline, tmp / "baseline")
        sides = {
            "0.1": (base, _config("gknet_small", {"kernel_norm": "softmax"}, args.data, args.steps, args.warmup)),
            "now": (ROOT, _config("gknet", {}, args.data, args.steps, args.warmup)),
            "now, bf16": (ROOT, _config("gknet", {}, args.data, args.steps, args.warmup, amp="bf16")),
        }
        speed: dict[str, list[float]] = {k: [] for k in sides}
        loss: dict[str, list[float]] = {k: [] for k in sides}
        first: dict[str, list[float]] = {k: [] for k in sides}
        wall: dict[str, list[float]] = {k: [] for k in sides}
        amp: dict[str, set[str]] = {k: set() for k in sides}
        for rep in range(args.reps):
            for side, (path, cfg) in sides.items():
                out = tmp / f"{side.replace(', ', '_')}{rep}"
                conf = tmp / f"{side.replace(', ', '_')}.json"
                conf.write_text(json.dumps(cfg))
                seconds, _, _ = run_python(cli_code(["train", "--config", str(conf), "--out", str(out), "--no-progress"]), path, tmp,
                           threads=args.threads)
                wall[side].append(seconds)
                amp[side].add(load_checkpoint_state(out / "last.pt").get("amp", "bf16"))
                all_rows = list(csv.DictReader((out / "log.csv").open()))
                first[side].append(args.warmup * 4 / float(all_rows[0]["images_per_s"]))
                rows = [r for r in all_rows if int(r["step"]) > args.warmup]
                speed[side].append(statistics.mean(float(r["images_per_s"]) for r in rows))
                loss[side].append(statistics.mean(float(r["loss"]) for r in rows))
    print(f"{'':14} {'images/s':>9} {'s/step':>7} {'ratio':>6} {'loss (timed steps)':>19} {'first steps s':>14} {'command s':>10} {'amp':>5}")
    old = statistics.median(speed["0.1"])
    for side in sides:
        s = statistics.median(speed[side])
        print(f"{side:14} {s:9.2f} {4 / s:7.2f} {s / old:5.2f}x {statistics.mean(loss[side]):19.4f} "
              f"{statistics.median(first[side]):14.1f} {statistics.median(wall[side]):10.1f} {'/'.join(sorted(amp[side])):>5}")
    for side in sides:
        print(f"{side:14} images/s by round: {', '.join(f'{v:.2f}' for v in speed[side])}")
    best = max((k for k in sides if k != "0.1"), key=lambda k: statistics.median(speed[k]))
    ratio = statistics.median(speed[best]) / old
    print(f"fastest: {best}, {ratio:.2f}x 0.1's images/s; goal (>= 1.5x): {'met' if ratio >= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
