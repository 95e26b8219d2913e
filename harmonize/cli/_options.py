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
                   help="run the network in bfloat16 on the CPU too: 1.6x-1.7x faster on CPUs with fast bfloat16 "
                        "(an AMD EPYC; Xeons with AMX), slower on an AVX-512 Xeon without AMX; outputs within "
                        "1/255 of float32 (default: bfloat16 on a CUDA GPU only)")


def busy_cores() -> bool:
    """Whether other work already keeps every core busy (the 1-minute load average)."""
    try:
        return os.getloadavg()[0] >= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return False


def passive_threads() -> None:
    """On a busy machine, let torch's idle OpenMP threads sleep rather than spin
    (``OMP_WAIT_POLICY=PASSIVE``), unless the environment sets the policy.

    OpenMP reads it once, when torch loads: call this before the first torch import. When the
    cores are shared (another job on this 2-core machine), a spinning thread waits at every
    barrier for a partner the kernel has preempted: the 256x256 GKNet forward took 1.4-5.4 s
    instead of 0.3-0.4 s, and a whole 12 MP ``harmonize run`` about twice as long. On an idle
    machine spinning is faster (the same forward: 145 ms spinning, 180-220 ms passive), so the
    policy is left alone there. Every command calls it before it imports torch.
    """
    if "torch" not in sys.modules and busy_cores():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
