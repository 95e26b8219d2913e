"""What several commands share: the library's constants written out (so ``--help`` needs no
torch; ``tests/test_layout.py`` checks they equal the library's) and the model options."""

from __future__ import annotations

import argparse
import os
import sys

#: harmonize.highres.METHODS
METHODS = ("affine", "upsample")
#: harmonize.highres.RESIZE_MODES
RESIZE_MODES = ("square", "keep")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint``, ``--device`` and ``--amp``, as every command that harmonizes takes them."""
    p.add_argument("--model", default="gknet", help="registered name, hf-hub:org/repo or local-dir:PATH (default: gknet)")
    p.add_argument("--checkpoint", metavar="FILE", help="safetensors weights for --model")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--amp", action="store_const", const=True, default=None,
                   help="run the network in bfloat16 on the CPU too: about 2x faster, within 1/255 of float32 "
                        "(default: bfloat16 on a CUDA GPU only)")


def passive_threads() -> None:
    """Let torch's idle OpenMP threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``), unless set.

    OpenMP reads it once, when torch loads: call this before the first torch import. When the
    cores are shared (another job on this 2-core machine), a spinning thread waits at every
    barrier for a partner the kernel has preempted: the 256x256 GKNet forward took 1.4-5.4 s
    instead of 0.3-0.4 s, and a whole 12 MP ``harmonize run`` about twice as long.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
