"""``harmonize list``: registered models and pretrained tags."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("filter", nargs="?", default="", help="wildcard, e.g. 'gknet*'")
    p.add_argument("--pretrained", action="store_true", help="list arch.tag names that have weights")


def main(args: argparse.Namespace) -> int:
    import harmonize

    names = harmonize.list_pretrained(args.filter) if args.pretrained else harmonize.list_models(args.filter)
    print("\n".join(names))
    return 0
