"""The ``harmonize`` command: parse first, import torch only when a command runs.

Each command is a module of this package with ``add_arguments(parser)`` and
``main(args) -> int``; the modules import nothing heavy at their top, so ``harmonize
--help`` and ``harmonize COMMAND --help`` answer at once. Errors a user can fix (every
:class:`~harmonize.errors.HarmonizeError`, and missing or existing files) print as one
line on stderr with exit code 2; Ctrl-C exits with 130; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .. import __version__
from ..errors import HarmonizeError, UsageError

__all__ = ["main", "one_line", "CommandError", "COMMANDS", "USER_ERRORS"]

#: command -> (module in this package, one-line help)
COMMANDS = {
    "run": ("run", "harmonize a composite (or folders of them) with its mask"),
    "compose": ("compose", "paste a cutout (an image with transparency) onto a background, then harmonize"),
    "demo": ("demo", "harmonize the bundled samples and write a before/after/real grid"),
    "evaluate": ("evaluate", "score a model on iHarmony4-layout data (Table 1 and 2)"),
    "train": ("train", "train a model on iHarmony4-layout data"),
    "export": ("export", "export a model to ONNX"),
    "list": ("list", "list registered models and pretrained tags"),
    "serve": ("serve", "open the web page: drop, paint or place, harmonize, compare, download"),
    "video": ("video", "harmonize a video clip with its masks, the colour change smoothed over time"),
    "plot": ("plot", "plot a training run's loss, learning rate and eval scores to a PNG"),
}


#: What a user can fix: printed as one line, exit code 2.
USER_ERRORS = (HarmonizeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)
#: The name harmonize 0.1 gave a user error of the command line.
CommandError = UsageError


def build_parser() -> argparse.ArgumentParser:
    """The whole parser; importing the command modules costs no torch."""
    parser = argparse.ArgumentParser(prog="harmonize", description="Deep image harmonization.")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 done, 2 user error, 130 interrupted)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("harmonize: interrupted", file=sys.stderr)
        return 130
    _configure_logging(args.verbose)
    if not args.command:
        parser.print_help()
        return 2
    from ._options import passive_threads

    passive_threads()  # before any command imports torch
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print(f"harmonize {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, USER_ERRORS):
            raise
        print(f"harmonize {args.command}: {one_line(e)}", file=sys.stderr)
        return 2


def _configure_logging(verbose: bool) -> None:
    """Print harmonize's own log records (INFO with ``-v``), message only.

    Only the ``harmonize`` logger gets a handler: the root logger is left alone, so libraries
    that print through their own handler are not printed twice. huggingface_hub's warnings
    (a line per retry while the Hub cannot be reached) show with ``-v`` or ``HF_HUB_VERBOSITY``
    only: what went wrong reaches the user as the command's one-line error.
    """
    os.environ.setdefault("HF_HUB_VERBOSITY", "info" if verbose else "error")  # read when huggingface_hub is imported
    log = logging.getLogger("harmonize")
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    if not any(getattr(h, "_harmonize_cli", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._harmonize_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)


def one_line(e: BaseException) -> str:
    """The message of a user error as one line.

    An error raised in a DataLoader worker reaches this process with the worker's whole
    traceback in its message ("Caught ImageReadError in DataLoader worker process 0.
    Original Traceback ..."); its last line holds the original message, which is kept.
    """
    text = str(e).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(e).__name__}: "
        text = last.split(prefix, 1)[1] if prefix in last else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
