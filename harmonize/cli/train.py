"""``harmonize train``: build a run from the command line and/or a config file, and train it.

Every flag is a field of :class:`harmonize.train.RunConfig` (``--batch-size`` is
``batch_size``); the command line wins over ``--config``, which wins over the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

# RunConfig's SCHEDULES and AMP_MODES, written out so that --help needs no torch.
_SCHEDULES = ("constant", "cosine")
_AMP_MODES = ("auto", "bf16", "fp16", "none")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON or TOML file with any of the options below (the command line wins)")
    p.add_argument("--model", help="registered model name, e.g. gknet")
    p.add_argument("--data", help="iHarmony4-layout root (a subset folder or a folder of subsets)")
    p.add_argument("--subsets", nargs="+", help="subset names (default: all found)")
    p.add_argument("--size", type=int, help="training resolution (square), default 256")
    p.add_argument("--batch-size", type=int, help="images per step per process, default 16")
    p.add_argument("--steps", type=int, help="optimizer steps, default 1000")
    p.add_argument("--stop-at", type=int, help="end after this step, keeping the learning-rate schedule of --steps (0 = run to --steps)")
    p.add_argument("--lr", type=float, help="learning rate, default 1e-4 (the paper's)")
    p.add_argument("--schedule", choices=_SCHEDULES, help="learning-rate schedule, default constant")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off")
    p.add_argument("--ema-decay", type=float, help="EMA of weights, 0 = off")
    p.add_argument("--amp", choices=_AMP_MODES, help="mixed precision; auto (the default): bf16 on GPUs that have it, "
                   "else fp16; on the CPU bf16 where a timed probe step finds it faster, else float32")
    p.add_argument("--workers", type=int, help="data loader processes")
    p.add_argument("--synthetic", type=float, help="fraction of samples whose composite is made on the fly")
    p.add_argument("--crop-scale", type=float, help="smallest area fraction of the random resized crop")
    p.add_argument("--eval-split", help="what the run is scored on: 'val' (default: --val-size training photos held out of training), a list name such as 'test', or 'none'")
    p.add_argument("--val-size", type=int, help="training photos held out for --eval-split val, default 100")
    p.add_argument("--families", nargs="+", metavar="F", help="composite families drawn on the fly (harmonize.data.FAMILIES; default: 0.1's synthesizer)")
    p.add_argument("--mild", type=float, help="with --families: fraction of composites scaled towards the real photo by a uniform factor, default 0")
    p.add_argument("--identity", type=float, help="with --families: fraction of composites that are the real photo itself, default 0")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N images only (0 = all)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (0 = at the end)")
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    p.add_argument("--log-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--init", help="start from these weights (safetensors file or save_pretrained folder)")
    p.add_argument("--model-args", metavar="JSON", help="constructor arguments on top of the model's, as a JSON object")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, final weights")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")


#: flags that are not fields of the run configuration
_NOT_OPTIONS = {"config", "out", "resume", "device", "no_progress", "command", "verbose", "_main"}


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options: the config file's, then the flags given on the command line."""
    from ..errors import UsageError
    from ..train.config import read_options

    opts: dict[str, Any] = read_options(args.config) if args.config else {}
    opts = {k.replace("-", "_"): v for k, v in opts.items()}
    for k, v in vars(args).items():
        if k in _NOT_OPTIONS or v is None:
            continue
        if k == "model_args":
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise UsageError(f"--model-args is not JSON: {e}") from None
        opts[k] = v
    if args.no_progress:
        opts["progress"] = False
    return opts


def main(args: argparse.Namespace) -> int:
    from ..train import RunConfig, train

    config = RunConfig.from_dict(options(args), source=args.config or "the command line")
    if args.device is not None:
        from ..utils.device import resolve_device

        resolve_device(args.device)
    result = train(config, args.out, resume=args.resume, device=args.device)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return 0
    if result:
        print(json.dumps(result.get("overall", result), indent=2, default=str))
    print(f"weights: {Path(args.out) / 'final'}")
    return 0
