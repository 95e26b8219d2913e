"""``harmonize evaluate``: score models on iHarmony4-layout data (Table 1 and Table 2)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError

# harmonize.metrics.PRESETS' names, written out so that --help needs no torch.
_PRESETS = ("fullres", "iharmony4", "issam")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="registered name or name.tag, hf-hub:org/repo, local-dir:PATH; several give a row each",
    )
    p.add_argument("--data", required=True, help="iHarmony4-layout folder (of subset folders, or one subset)")
    p.add_argument("--subsets", nargs="+", default=None, metavar="S", help="subsets to score (default: all found)")
    p.add_argument(
        "--split",
        default="test",
        help="list files SUBSET_{split}.txt to read (default: test); 'val': the training photos held out "
        "for choosing checkpoints; 'robustness': the test photos recomposited by families training never sees; "
        "'unedited': the test photos unchanged (what a model alters in a foreground that fits)",
    )
    p.add_argument("--preset", default="issam", choices=_PRESETS, help="measurement convention (default: issam)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: 1 on the CPU, 8 on a GPU; fullres: always 1)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--amp", action="store_const", const=True, default=None,
                   help="score in bfloat16 on the CPU too: faster on CPUs with fast bfloat16 (not on every "
                        "AVX-512 CPU), the scores move in their last digits "
                        "(default: bfloat16 on a CUDA GPU only)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--out", default=None, metavar="DIR", help="write per_image.csv and summary.json here")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="safetensors weights for the (single) MODEL")
    p.add_argument(
        "--model-args",
        default=None,
        metavar="JSON",
        help='constructor arguments the --checkpoint weights need, e.g. \'{"kernel_norm": "softmax"}\'',
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="score only the first N images of each subset")
    p.add_argument("--ssim", action="store_true", help="also compute SSIM")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _model_args(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        args = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--model-args is not JSON: {e}") from None
    if not isinstance(args, dict):
        raise UsageError(f"--model-args must be a JSON object, got {text!r}")
    return args


def _check_args(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.checkpoint and len(args.models) != 1:
        raise UsageError("--checkpoint needs exactly one MODEL")
    if len(set(args.models)) != len(args.models):
        raise UsageError("a MODEL is given twice")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    model_args = _model_args(args.model_args)
    if model_args and not args.checkpoint:
        raise UsageError("--model-args goes with --checkpoint (a tag or folder brings its own)")
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{out}: not a folder (--out names the folder for per_image.csv and summary.json)")
        if any(parent.exists() and not parent.is_dir() for parent in out.parents):
            raise NotADirectoryError(f"{out}: a part of the path is a file, not a folder")
    return model_args


def _dataset(args: argparse.Namespace) -> tuple[Any, list[int] | None]:
    """The items ``--split`` names, and the indices to score (``--limit``)."""
    from ..data import (
        HELDOUT_FAMILIES,
        UNEDITED,
        IHarmony4Dataset,
        RobustnessDataset,
        train_val_indices,
    )
    from ..evaluate import limit_indices

    if args.split in ("robustness", "unedited"):
        families = [UNEDITED] if args.split == "unedited" else HELDOUT_FAMILIES
        dataset = RobustnessDataset(args.data, subsets=args.subsets, families=families)
        per_photo = len(dataset.families)
        indices = None if args.limit is None else list(range(min(len(dataset), args.limit * per_photo)))
        return dataset, indices
    if args.split == "val":
        dataset = IHarmony4Dataset(args.data, subsets=args.subsets, split="train")
        _, val = train_val_indices(dataset.triplets)
        return dataset, val if args.limit is None else val[: args.limit]
    dataset = IHarmony4Dataset(args.data, subsets=args.subsets, split=args.split)
    return dataset, limit_indices(dataset, args.limit)


def main(args: argparse.Namespace) -> int:
    model_args = _check_args(args)  # before any model loads or image is read

    from .._factory import load_model
    from ..evaluate import (
        evaluate_models,
        format_table1,
        format_table2,
        write_results,
    )
    from ..metrics import FG_RATIO_BUCKETS, get_preset

    preset = get_preset(args.preset)
    dataset, indices = _dataset(args)
    models = {}
    for name in args.models:
        label = f"{name} ({Path(args.checkpoint).name})" if args.checkpoint else name
        models[label] = load_model(name, args.checkpoint, model_args)
    summaries, records = evaluate_models(
        models,
        dataset,
        preset,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        num_workers=args.workers,
        ssim=args.ssim,
        amp=args.amp,
        indices=indices,
    )
    for name, summ in summaries.items():
        n = summ["overall"].get("nonfinite_outputs", 0)
        if n:
            print(f"harmonize evaluate: warning: {name} output NaN or infinite values for {n} of "
                  f"{summ['overall']['count']} images; each such value is scored as the worst prediction "
                  "(the column nonfinite of per_image.csv gives their fraction)", file=sys.stderr)
    print(format_table1(summaries))
    print()
    print(format_table2(summaries))
    if args.out:
        meta = {
            "preset": preset.to_dict(),
            "data": str(Path(args.data).resolve()),
            "split": args.split,
            "subsets": getattr(dataset, "subsets", None) or getattr(dataset.base, "subsets", None),
            "limit": args.limit,
            "fg_ratio_buckets": [list(b) for b in FG_RATIO_BUCKETS],
        }
        csv_path, json_path = write_results(args.out, summaries, records, meta)
        print(f"\nwrote {csv_path} and {json_path}")
    return 0
