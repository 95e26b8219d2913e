"""High-resolution harmonization: quality, time and peak memory of carrying a 256-pixel result back.

On the full-resolution triplets of ``../shared/data/iharmony4-sample`` (INR2k ``demo2k``,
2048x2048, and HAdobe5k ``a0002``, 2832x4256 = 12 MP), for each method (``affine``: a
per-pixel colour transform fitted at low resolution and applied at full resolution;
``upsample``: bilinear upsampling of the low-resolution output), one fresh child process
per run does what ``harmonize run`` does: read composite and mask, harmonize, write a JPEG
(quality 95). It reports:

- ``fMSE``: foreground MSE at full resolution against the real image (0..255 scale), and
  the composite's own fMSE, the floor to beat;
- ``vs model@full``: with ``--oracle``, the fMSE against the model applied directly at
  full resolution (only sensible for cheap models such as ``reinhard``): how faithfully
  the carried-back result reproduces what the model would do on the whole photo;
- ``time``: wall time of read + harmonize + write, and of harmonize alone;
- ``peak``: the process's peak resident memory during that work (``VmHWM`` after
  ``echo 5 > /proc/self/clear_refs``), which includes the ~0.3 GB of the imported torch.

Usage::

    python benchmarks/highres.py                       # reinhard, affine and upsample
    python benchmarks/highres.py --model gknet         # the shipped GKNet weights (gknet.labelme_long)
    python benchmarks/highres.py --model gknet --checkpoint run/best.safetensors --oracle

The goal checked at the end: the 12-megapixel triplet in under 10 s and under 2 GB, and
the affine method's fMSE below upsampling's on every triplet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "iharmony4-sample"
TRIPLETS = [  # (name, composite, mask, real) relative to the data folder
    ("INR2k/demo2k", "INR2k/composite_images/demo2k_1_1.jpg", "INR2k/masks/demo2k_1.png", "INR2k/real_images/demo2k.jpg"),
    ("HAdobe5k/a0002", "HAdobe5k/composite_images/a0002_1_4.jpg", "HAdobe5k/masks/a0002_1.png", "HAdobe5k/real_images/a0002.jpg"),
]
GOAL_SECONDS, GOAL_GB = 10.0, 2.0


def _status(field: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(cfg: dict) -> dict:
    """One measured run, in a fresh process."""
    import torch

    from harmonize import Harmonizer, load_model
    from harmonize.data.io import load_image, load_mask, save_image
    from harmonize.metrics import fmse

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    model = load_model(cfg["model"], cfg["checkpoint"])
    h = Harmonizer(model, device="cpu", size=cfg["size"], method=cfg["method"], resize=cfg["resize"],
                   radius=cfg["radius"], eps=cfg["eps"])
    rss_before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        x = load_image(cfg["composite"])
        m = load_mask(cfg["mask"], threshold=None)
        t1 = time.perf_counter()
        out = h(x, m)
        t2 = time.perf_counter()
        save_image(out, Path(tmp) / "out.jpg")
        t3 = time.perf_counter()
    peak = _status("VmHWM")
    real = load_image(cfg["real"])
    mb = (m >= 0.5).float()
    res = {
        "triplet": cfg["name"],
        "method": cfg["method"],
        "size": f"{x.shape[-1]}x{x.shape[-2]}",
        "megapixels": x.shape[-1] * x.shape[-2] / 1e6,
        "fmse": float(fmse(out[None], real[None], mb[None])[0]),
        "composite_fmse": float(fmse(x[None], real[None], mb[None])[0]),
        "time_s": t3 - t0,
        "read_s": t1 - t0,
        "harmonize_s": t2 - t1,
        "write_s": t3 - t2,
        "rss_before_gb": rss_before / 2**30,
        "peak_gb": peak / 2**30,
    }
    if cfg["oracle"]:
        with torch.no_grad():
            full = model(x[None], mb[None]).clamp(0, 1)
        full = full * m[None] + x[None] * (1 - m[None])
        res["oracle_fmse"] = float(fmse(out[None], full, mb[None])[0])
    return res


def _run_child(cfg: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"child run failed ({cfg['name']}, {cfg['method']}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="reinhard", help="model name (default: reinhard until GKNet has weights)")
    p.add_argument("--checkpoint", default=None, help="safetensors weights for --model")
    p.add_argument("--methods", nargs="+", default=["affine", "upsample"])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the iharmony4-sample folder")
    p.add_argument("--size", type=int, default=None, help="working resolution (default: the model's, 256)")
    p.add_argument("--resize", default="square", choices=["square", "keep"])
    p.add_argument("--radius", type=int, default=32, help="window radius of the affine fit (default: 32)")
    p.add_argument("--eps", type=float, default=1e-3, help="regularisation of the affine fit (default: 1e-3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--oracle", action="store_true", help="also compare with the model run at full resolution")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    rows = []
    for name, comp, mask, real in TRIPLETS:
        paths = [args.data / comp, args.data / mask, args.data / real]
        if not all(q.is_file() for q in paths):
            print(f"skipping {name}: not found under {args.data}", file=sys.stderr)
            continue
        for method in args.methods:
            cfg = dict(name=name, composite=str(paths[0]), mask=str(paths[1]), real=str(paths[2]), method=method,
                       model=args.model, checkpoint=args.checkpoint, size=args.size, resize=args.resize,
                       radius=args.radius, eps=args.eps, threads=args.threads, oracle=args.oracle)
            rows.append(_run_child(cfg))
    if not rows:
        print("no triplet found", file=sys.stderr)
        return 1

    load = os.getloadavg()[0]
    print(f"model {args.model}, size {args.size or 'model default'}, resize {args.resize}, radius {args.radius}, "
          f"eps {args.eps}; {os.cpu_count()} CPU cores, load average {load:.1f} at the end")
    head = f"{'triplet':<16} {'size':>10} {'method':>9} {'fMSE':>8} {'composite':>9}"
    head += f" {'vs model@full':>13}" if args.oracle else ""
    head += f" {'time s':>7} {'(harm.)':>7} {'peak GB':>7} {'(base)':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['triplet']:<16} {r['size']:>10} {r['method']:>9} {r['fmse']:>8.2f} {r['composite_fmse']:>9.2f}"
        line += f" {r['oracle_fmse']:>13.2f}" if args.oracle else ""
        line += f" {r['time_s']:>7.2f} {r['harmonize_s']:>7.2f} {r['peak_gb']:>7.2f} {r['rss_before_gb']:>6.2f}"
        print(line)

    by = {(r["triplet"], r["method"]): r for r in rows}
    big = [r for r in rows if r["megapixels"] >= 10 and r["method"] == "affine"]
    fast = all(r["time_s"] < GOAL_SECONDS for r in big)
    small = all(r["peak_gb"] < GOAL_GB for r in big)
    pairs = [t for t, _ in by if (t, "affine") in by and (t, "upsample") in by]
    better = all(by[(t, "affine")]["fmse"] < by[(t, "upsample")]["fmse"] for t in pairs)
    print()
    print(f"goal: 12 MP in < {GOAL_SECONDS:.0f} s: {'met' if big and fast else 'NOT met'}; "
          f"< {GOAL_GB:.0f} GB: {'met' if big and small else 'NOT met'}; "
          f"affine fMSE < upsample fMSE: {('met' if better else 'NOT met') if pairs else 'not measured'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
