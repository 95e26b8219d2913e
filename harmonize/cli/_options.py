"""What several commands share: the library's constants written out (so ``--help`` needs no
torch; ``tests/test_layout.py`` checks they equal the library's) and the model options."""

from __future__ import annotations

import argparse

#: harmonize.highres.METHODS
METHODS = ("affine", "upsample")
#: harmonize.highres.RESIZE_MODES
RESIZE_MODES = ("square", "keep")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint`` and ``--device``, as every command that harmonizes takes them."""
    p.add_argument("--model", default="gknet", help="registered name, hf-hub:org/repo or local-dir:PATH (default: gknet)")
    p.add_argument("--checkpoint", metavar="FILE", help="safetensors weights for --model")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
