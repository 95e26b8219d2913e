"""``harmonize demo``: harmonize the bundled samples, write a before/after/real grid and the scores."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="harmonize-demo", metavar="DIR",
                   help="folder for demo_grid.png and demo_metrics.json (default: ./harmonize-demo)")
    p.add_argument("--model", default="gknet", help="model name with pretrained weights (default: gknet)")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="safetensors weights for --model")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")


def main(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: not a folder")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint file")
    from ..demo import format_table, run_demo

    doc = run_demo(args.model, out, device=args.device, checkpoint=args.checkpoint)
    print(format_table(doc))
    print(f"\nwrote {doc['grid']} and {doc['metrics']}")
    return 0
