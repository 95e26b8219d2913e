"""Start-up: the command line and ``import harmonize``, against harmonize 0.1 and ``import torch``.

Both sides run in one session, interleaved, each in a fresh process (median wall time of
``--reps`` runs). The baseline is harmonize 0.1 as of commit ``14ca5a0`` (the last commit
before the command line became a package), extracted with ``git archive`` into a temporary
folder and put first on ``PYTHONPATH``; the current side is this checkout.

Goals (issue "Fast from the first keystroke"): ``harmonize --help``, ``--version`` and a
subcommand's ``--help`` under 0.5 s; ``import harmonize`` at most 1.2x ``import torch``;
a whole ``harmonize run`` on a 256x256 photo at most half of 0.1's wall time.

    python benchmarks/startup.py [--reps 5] [--baseline 14ca5a0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from _baseline import BASELINE, ROOT, cli_code, extract, run_python

SAMPLE = "harmonize/assets/samples"


def _time(code: str, pythonpath: Path, cwd: Path) -> float:
    return run_python(code, pythonpath, cwd, threads=int(os.environ.get("OMP_NUM_THREADS", "2")))[0]


def _cli(args: list[str]) -> str:
    return cli_code(args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--baseline", default=BASELINE, help="commit of the baseline (harmonize 0.1)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "baseline"
        extract(args.baseline, base)
        out = tmp / "out"
        out.mkdir()
        # a 256x256 photo and its mask: a bundled sample
        samples = ROOT / SAMPLE
        comp = sorted((samples / "composite_images").glob("*.jpg"))[0]
        name, k, _ = comp.stem.rsplit("_", 2)
        mask = samples / "masks" / f"{name}_{k}.png"
        run = ["run", str(comp), str(mask), "--model", "gknet", "--quiet", "--overwrite", "-o"]
        jobs = {
            "harmonize --help": (_cli(["--help"]), True),
            "harmonize --version": (_cli(["--version"]), True),
            "harmonize run --help": (_cli(["run", "--help"]), True),
            "import harmonize": ("import harmonize", True),
            "import torch": ("import torch", False),
            "harmonize run (256x256 photo, gknet)": (None, True),
        }
        times: dict[str, dict[str, list[float]]] = {k: {"0.1": [], "now": []} for k in jobs}
        for rep in range(args.reps):
            for label, (code, compare) in jobs.items():
                sides = [("now", ROOT), ("0.1", base)] if compare else [("now", ROOT)]
                for side, path in sides:
                    if code is None:  # the whole run writes a file: a new name each time
                        c = _cli([*run, str(out / f"{side}{rep}.png")])
                    else:
                        c = code
                    times[label][side].append(_time(c, path, tmp))
        torch_s = statistics.median(times["import torch"]["now"])
        print(f"median wall time of {args.reps} fresh processes, seconds (baseline: commit {args.baseline})")
        print(f"{'':40} {'0.1':>8} {'now':>8} {'now/0.1':>8}")
        for label, t in times.items():
            now = statistics.median(t["now"])
            if t["0.1"]:
                old = statistics.median(t["0.1"])
                print(f"{label:40} {old:8.2f} {now:8.2f} {now / old:8.2f}x")
            else:
                print(f"{label:40} {'':8} {now:8.2f}")
        print(f"import harmonize / import torch (now): {statistics.median(times['import harmonize']['now']) / torch_s:.2f}x")


if __name__ == "__main__":
    main()
