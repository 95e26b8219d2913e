"""``harmonize list``: registered models and pretrained tags."""

from __future__ import annotations

import argparse

from ..errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("filter", nargs="?", default="", help="wildcard, e.g. 'gknet*'")
    p.add_argument("--pretrained", action="store_true", help="list arch.tag names that have weights")


def main(args: argparse.Namespace) -> int:
    import harmonize

    names = harmonize.list_pretrained(args.filter) if args.pretrained else harmonize.list_models(args.filter)
    if not names:
        what = "pretrained tag" if args.pretrained else "registered model"
        raise UsageError(f"no {what} matches {args.filter!r}; 'harmonize list' shows them all")
    print("\n".join(names))
    return 0
