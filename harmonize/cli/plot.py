"""``harmonize plot``: draw a training run's loss, learning rate and eval scores to a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = "harmonize plot RUN [-o OUT.png]"
    p.add_argument("run", metavar="RUN", help="a run folder of harmonize train (holding log.csv, perhaps eval.jsonl)")
    p.add_argument("-o", "--output", default=None, metavar="OUT.png", help="the PNG to write (default: RUN/plot.png)")
    p.add_argument("--title", default=None, help="figure title (default: the run's name, last step and loss)")


def main(args: argparse.Namespace) -> int:
    from ..plot import plot_run

    out = plot_run(Path(args.run), args.output, title=args.title)
    print(f"wrote {out}")
    return 0
