"""The ``harmonize`` command.

Each subcommand lives with the code it drives and exposes ``add_arguments(parser)`` and
``main(args) -> int``; this file only wires them. Errors a user can fix are printed as one
line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "CommandError"]

# subcommand -> (module, help)
_COMMANDS = {
    "run": ("harmonize.inference", "harmonize a composite (or folders of them) with its mask"),
    "demo": ("harmonize.demo", "harmonize the bundled samples and write a before/after/real grid"),
    "evaluate": ("harmonize.evaluate", "score a model on iHarmony4-layout data (Table 1 and 2)"),
    "train": ("harmonize.train.cli", "train a model on iHarmony4-layout data"),
    "export": ("harmonize.export", "export a model to ONNX"),
    "list": ("harmonize._list_cmd", "list registered models and pretrained tags"),
}


class CommandError(Exception):
    """A user error: printed as ``harmonize: <message>`` with exit code 2."""


def _parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="harmonize", description="Deep image harmonization.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in _COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue  # not built yet
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from .data.io import ImageReadError

    try:
        return int(modules[args.command].main(args) or 0)
    except (CommandError, ImageReadError, FileNotFoundError, NotADirectoryError, FileExistsError) as e:
        print(f"harmonize {args.command}: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"harmonize {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"harmonize {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the package's own module, so errors raised by subcommands are the classes caught here.
    from harmonize.cli import main as _main

    sys.exit(_main())
