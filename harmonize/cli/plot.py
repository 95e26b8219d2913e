"""``harmonize plot``: draw a training run's loss, learning rate and eval scores to a PNG, or compare runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = "harmonize plot RUN [RUN ...] [-o OUT.png]"
    p.add_argument("run", metavar="RUN", nargs="+",
                   help="a run folder of harmonize train (holding log.csv, perhaps eval.jsonl); several are compared")
    p.add_argument("-o", "--output", default=None, metavar="OUT.png",
                   help="the PNG to write (default: RUN/plot.png; needed with several runs)")
    p.add_argument("--title", default=None, help="figure title (default: the run's name, last step and loss)")


def main(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..plot import plot_run, plot_runs

    if len(args.run) == 1:
        out = plot_run(Path(args.run[0]), args.output, title=args.title)
    elif args.output is None:
        raise UsageError("comparing several runs needs -o OUT.png")
    else:
        out = plot_runs([Path(r) for r in args.run], args.output, title=args.title)
    print(f"wrote {out}")
    return 0
