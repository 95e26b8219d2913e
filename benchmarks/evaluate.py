"""``harmonize evaluate gknet`` on the LabelMe test list: images per second against 0.1, same scores.

Both sides run the same command in fresh processes, interleaved (``--reps`` rounds): this
checkout and the baseline commit (harmonize 0.1 by default, see ``_baseline.py``), scoring
0.1's default GKNet weights (``gknet.labelme_long``, known to both sides) under the iHarmony4 protocol (256x256). Images per second is the
number of images over the whole command's wall time (start-up and model loading included,
as a user waits for them). The printed score tables of the two sides must be identical.

Goal (issue "Fast from the first keystroke"): at least 2x 0.1's images per second, the same
scores to the last digit printed.

    python benchmarks/evaluate.py [--reps 2] [--limit 200] [--data ../shared/data/labelme-harmony]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _baseline import BASELINE, ROOT, cli_code, extract, load_average, run_python


def _scores(stdout: str) -> list[str]:
    """The score tables' rows (every line with a ``|``), as printed."""
    return [line.rstrip() for line in stdout.splitlines() if "|" in line]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--limit", type=int, default=200, help="images of the test list (200: all of LabelMe's)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "labelme-harmony"))
    p.add_argument("--model", default="gknet.labelme_long", help="the same weights on both sides: 0.1's default gknet")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline", default=BASELINE)
    args = p.parse_args()
    cmd = ["evaluate", args.model, "--data", args.data, "--preset", "iharmony4", "--limit", str(args.limit), "--no-progress"]
    print(f"harmonize {' '.join(cmd)}")
    print(f"{args.threads} threads, {args.reps} rounds; load average before the run: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        base = extract(args.baseline, Path(tmp) / "baseline")
        sides = {"0.1": base, "now": ROOT}
        walls: dict[str, list[float]] = {k: [] for k in sides}
        tables: dict[str, list[str]] = {}
        for _ in range(args.reps):
            for side, path in sides.items():
                wall, _, out = run_python(cli_code(cmd), path, Path(tmp), threads=args.threads)
                walls[side].append(wall)
                tables[side] = _scores(out)
    old, now = statistics.median(walls["0.1"]), statistics.median(walls["now"])
    print(f"{'':6} {'wall s':>8} {'images/s':>9}")
    for side in sides:
        w = statistics.median(walls[side])
        print(f"{side:6} {w:8.1f} {args.limit / w:9.2f}")
    same = tables["0.1"] == tables["now"]
    print(f"images/s now / 0.1: {old / now:.2f}x")
    print("scores (now):")
    print("\n".join(tables["now"]))
    if not same:
        print("scores (0.1):")
        print("\n".join(tables["0.1"]))
    print(f"goal (>= 2x images/s, same scores): {'met' if old / now >= 2 and same else 'NOT met'}"
          f" (speed {old / now:.2f}x, scores {'identical' if same else 'DIFFER'})")


if __name__ == "__main__":
    main()
