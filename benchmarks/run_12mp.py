"""A whole ``harmonize run`` on a 12-megapixel photo: this checkout against harmonize 0.1.

The HAdobe5k triplet ``a0002`` of ``../shared/data/iharmony4-sample`` (2832x4256), GKNet, the
default settings, written as JPEG: each run is a fresh process (``python -m harmonize run ...
--quiet``), the two sides interleaved in every round (their order alternating), so both see the
same machine. The baseline is commit ``14ca5a0`` (harmonize 0.1 as issue #14 measured it; see
``_baseline.py``; ``--baseline ef124fa`` is the code just before the 12 MP work), the current
side this checkout. Both get the same environment (``OMP_WAIT_POLICY`` and
``OMP_NUM_THREADS`` as the caller has them).

For each side: the median wall time of ``--reps`` runs, the peak resident memory of each run
(``ru_maxrss`` of that child; the largest is printed) and the fMSE of its
output file against the real photo (full resolution, 0..255 scale, the mask binarised at 0.5).

Goals (issue #14, "12 megapixels"): at most 0.5x the baseline's wall time, under 1 GB
(10^9 bytes) peak resident memory, the fMSE within 1% of the baseline's.

    python benchmarks/run_12mp.py [--reps 3] [--baseline 14ca5a0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _baseline import BASELINE, ROOT, cli_code, extract, run_python

DATA = ROOT.parent / "shared" / "data" / "iharmony4-sample" / "HAdobe5k"
COMPOSITE, MASK, REAL = "composite_images/a0002_1_4.jpg", "masks/a0002_1.png", "real_images/a0002.jpg"
GOAL_RATIO, GOAL_BYTES, GOAL_FMSE = 0.5, 10**9, 0.01


def _run(pythonpath: Path, data: Path, out: Path, model: str, cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak resident bytes of one fresh ``harmonize run``."""
    args = ["run", str(data / COMPOSITE), str(data / MASK), "-o", str(out), "--model", model, "--quiet", "--overwrite"]
    wall, peak_gb, _ = run_python(cli_code(args), pythonpath, cwd, threads=None)
    return wall, int(peak_gb * 1e9)


def _fmse(path: Path, data: Path) -> float:
    sys.path.insert(0, str(ROOT))  # this checkout's harmonize, whatever is installed
    from harmonize.data.io import load_image, load_mask
    from harmonize.metrics import fmse

    real = load_image(data / REAL)
    mask = (load_mask(data / MASK, threshold=None) >= 0.5).float()
    return float(fmse(load_image(path)[None], real[None], mask[None])[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--baseline", default=BASELINE, help=f"commit of the baseline (default: {BASELINE}, harmonize 0.1)")
    p.add_argument("--model", default="gknet.labelme_long", help="the same weights on both sides: 0.1's default gknet")
    p.add_argument("--data", type=Path, default=DATA, help="the HAdobe5k folder of iharmony4-sample")
    args = p.parse_args()
    if not all((args.data / f).is_file() for f in (COMPOSITE, MASK, REAL)):
        print(f"the a0002 triplet is not under {args.data}", file=sys.stderr)
        return 1
    sides = {"baseline": None, "now": ROOT}
    runs: dict[str, list[tuple[float, int]]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sides["baseline"] = tmp / "baseline"
        extract(args.baseline, sides["baseline"])
        load = os.getloadavg()[0]
        for rep in range(args.reps):
            for side in (["now", "baseline"] if rep % 2 == 0 else ["baseline", "now"]):
                runs[side].append(_run(sides[side], args.data, tmp / f"{side}.jpg", args.model, tmp))
        scores = {side: _fmse(tmp / f"{side}.jpg", args.data) for side in sides}

    env = {k: os.environ.get(k, "unset") for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    print(f"harmonize run, {args.model}, HAdobe5k a0002 (2832x4256, 12 MP): median of {args.reps} fresh processes, "
          f"interleaved; baseline commit {args.baseline}")
    print(f"{os.cpu_count()} CPU cores, load average {load:.1f} before and {os.getloadavg()[0]:.1f} after; "
          + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(f"{'':10} {'wall s':>8} {'(runs)':>24} {'peak MB':>8} {'fMSE':>9}")
    stats = {}
    for side, rs in runs.items():
        wall, peak = statistics.median(t for t, _ in rs), max(m for _, m in rs)
        stats[side] = (wall, peak, scores[side])
        each = " ".join(f"{t:.1f}" for t, _ in rs)
        print(f"{side:10} {wall:8.2f} {each:>24} {peak / 1e6:8.0f} {scores[side]:9.3f}")
    (bw, bp, bf), (nw, np_, nf) = stats["baseline"], stats["now"]
    ratio, drift = nw / bw, abs(nf - bf) / bf
    print(f"{'now/base':10} {ratio:7.2f}x {'':>24} {np_ / bp:7.2f}x {nf / bf:8.4f}x")
    print()
    print(f"goal: wall time <= {GOAL_RATIO}x the baseline's: {'met' if ratio <= GOAL_RATIO else 'NOT met'} ({ratio:.2f}x); "
          f"peak < 1 GB: {'met' if np_ < GOAL_BYTES else 'NOT met'} ({np_ / 1e9:.2f} GB); "
          f"fMSE within 1%: {'met' if drift <= GOAL_FMSE else 'NOT met'} ({100 * drift:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
