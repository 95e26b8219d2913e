"""Score models on iHarmony4-layout data: Table 1 (per subset) and Table 2 (by foreground ratio).

Python::

    from harmonize import create_model
    from harmonize.data import IHarmony4Dataset
    from harmonize.evaluate import evaluate, format_table1

    data = IHarmony4Dataset("/data/iHarmony4", split="test")
    summary, records = evaluate(create_model("reinhard"), data, preset="issam")
    print(format_table1({"reinhard": summary}))

Command line::

    harmonize evaluate composite reinhard --data /data/labelme-harmony --preset iharmony4 --out runs/eval

Each composite, mask and real image is brought to the preset's size first
(:func:`harmonize.metrics.prepare`); the model runs on the prepared composite and its
output is measured against the prepared real image. With the ``fullres`` preset the model
runs on the whole image, one image per batch.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .metrics import (
    FG_RATIO_BUCKETS,
    HarmonizationMetrics,
    Preset,
    get_preset,
    prepare_image,
    prepare_mask,
)

__all__ = [
    "add_arguments",
    "evaluate",
    "evaluate_models",
    "format_table1",
    "format_table2",
    "main",
    "write_results",
]

_logger = logging.getLogger(__name__)


class _PreparedDataset(Dataset):
    """Items of an iHarmony4-layout dataset brought to a preset's size."""

    def __init__(self, dataset: Dataset, preset: Preset, indices: Sequence[int] | None = None) -> None:
        self.dataset, self.preset = dataset, preset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.dataset[self.indices[i]]
        return {
            "composite": prepare_image(s["composite"], self.preset),
            "real": prepare_image(s["real"], self.preset),
            "mask": prepare_mask(s["mask"], self.preset),
            "name": s.get("name", str(self.indices[i])),
            "subset": s.get("subset", "default"),
        }


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def evaluate_models(
    models: dict[str, nn.Module],
    dataset: Dataset,
    preset: str | Preset = "issam",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
    num_workers: int = 0,
    ssim: bool = False,
    indices: Sequence[int] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Score several models in one pass over the data (each batch is read once).

    Args:
        models: row name -> model (``forward(image, mask) -> image``).
        dataset: items with ``composite``, ``mask``, ``real`` (full resolution, no transform),
            ``name`` and ``subset``, e.g. :class:`~harmonize.data.IHarmony4Dataset`.
        preset: a name in :data:`harmonize.metrics.PRESETS` or a :class:`~harmonize.metrics.Preset`.
        batch_size: images per batch (1 for full-resolution presets).
        device: ``"cpu"``, ``"cuda"``, ... (``None``/``"auto"``: CUDA when there is one).
        progress: show a tqdm bar on stderr.
        num_workers: DataLoader workers reading and resizing images.
        ssim: also compute SSIM.
        indices: score only these items of ``dataset``.

    Returns:
        ``({name: summary}, {name: records})``, summary as
        :meth:`~harmonize.metrics.HarmonizationMetrics.compute`, records one dict per image.
    """
    p = get_preset(preset)
    dev = _resolve_device(device)
    data = _PreparedDataset(dataset, p, indices)
    loader = DataLoader(
        data,
        batch_size=1 if p.size is None else max(1, batch_size),
        shuffle=False,
        num_workers=num_workers,
    )
    metrics = {name: HarmonizationMetrics(p, ssim=ssim) for name in models}
    was_training = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.to(dev).eval()
    bar = tqdm(total=len(data), unit="img", desc=f"evaluate ({p.name})", file=sys.stderr, disable=not progress)
    try:
        with torch.inference_mode():
            for batch in loader:
                comp, mask, real = (batch[k].to(dev) for k in ("composite", "mask", "real"))
                for name, model in models.items():
                    pred = model(comp, mask).clamp(0, 1)
                    metrics[name].update(
                        pred, real, mask, composite=comp, subsets=batch["subset"], names=batch["name"]
                    )
                bar.update(comp.shape[0])
    finally:
        bar.close()
        for name, m in models.items():
            m.train(was_training[name])
    summaries = {name: {"model": name, **mt.compute()} for name, mt in metrics.items()}
    records = {name: mt.records for name, mt in metrics.items()}
    return summaries, records


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    preset: str | Preset = "issam",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
    num_workers: int = 0,
    ssim: bool = False,
    indices: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score one model: ``(summary, records)``; see :func:`evaluate_models` for the arguments.

    Examples:
        >>> summary, records = evaluate(create_model("composite"), IHarmony4Dataset(root, split="test"))
        >>> summary["overall"]["fmse"], len(records)
    """
    name = getattr(model, "architecture", type(model).__name__)
    summaries, records = evaluate_models(
        {name: model}, dataset, preset, batch_size, device, progress, num_workers, ssim, indices
    )
    return summaries[name], records[name]


# --------------------------------------------------------------------------- tables


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


def _rows(summaries: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if "overall" in summaries:  # a single summary
        return {summaries.get("model", "model"): summaries}
    return summaries


def _table(title: str, groups: list[tuple[str, list[str]]], rows: list[tuple[str, list[list[str]]]]) -> str:
    """Plain-text table: a header row of column groups, a row of column names, data rows."""
    name_w = max([len("Model")] + [len(r[0]) for r in rows])
    widths = []
    for gi, (gname, cols) in enumerate(groups):
        col_w = [max([len(c)] + [len(r[1][gi][ci]) for r in rows]) for ci, c in enumerate(cols)]
        inner = sum(col_w) + 2 * (len(cols) - 1)
        if len(gname) > inner:
            col_w[-1] += len(gname) - inner
        widths.append(col_w)
    lines = [title]
    head1 = " " * name_w
    head2 = "Model".ljust(name_w)
    for (gname, cols), col_w in zip(groups, widths):
        inner = sum(col_w) + 2 * (len(cols) - 1)
        head1 += " | " + gname.center(inner)
        head2 += " | " + "  ".join(c.rjust(w) for c, w in zip(cols, col_w))
    lines += [head1, head2, "-" * len(head2)]
    for rname, cells in rows:
        line = rname.ljust(name_w)
        for gcells, col_w in zip(cells, widths):
            line += " | " + "  ".join(c.rjust(w) for c, w in zip(gcells, col_w))
        lines.append(line)
    return "\n".join(lines)


def format_table1(summaries: dict[str, Any]) -> str:
    """Table 1 of the papers: PSNR / MSE / fMSE per subset and over all images, a row per model.

    Args:
        summaries: ``{row name: summary}`` or a single summary (from :func:`evaluate`).
    """
    rows_in = _rows(summaries)
    first = next(iter(rows_in.values()))
    subsets = list(first["subsets"])
    keys = [(s, first["subsets"][s]["count"]) for s in subsets]
    if len(subsets) != 1:
        keys.append(("ALL", first["overall"]["count"]))
    groups = [(f"{s} (n={n})", ["PSNR", "MSE", "fMSE"]) for s, n in keys]
    rows = []
    for rname, summ in rows_in.items():
        cells = []
        for s, _ in keys:
            d = summ["overall"] if s == "ALL" else summ["subsets"].get(s, {})
            cells.append([_fmt(d.get("psnr")), _fmt(d.get("mse")), _fmt(d.get("fmse"))])
        rows.append((rname, cells))
    preset = first.get("preset", "")
    return _table(f"Table 1: PSNR (dB, higher is better), MSE and fMSE (lower is better); preset {preset}", groups, rows)


def format_table2(summaries: dict[str, Any]) -> str:
    """Table 2 of the papers: MSE / fMSE by foreground ratio (0-5%, 5-15%, 15-100%, all)."""
    rows_in = _rows(summaries)
    first = next(iter(rows_in.values()))
    labels = list(first["fg_ratio"]) + ["0-100%"]

    def part(summ: dict[str, Any], label: str) -> dict[str, Any]:
        return summ["overall"] if label == "0-100%" else summ["fg_ratio"].get(label, {})

    groups = [(f"{lb} (n={part(first, lb).get('count', 0)})", ["MSE", "fMSE"]) for lb in labels]
    rows = [
        (rname, [[_fmt(part(s, lb).get("mse")), _fmt(part(s, lb).get("fmse"))] for lb in labels])
        for rname, s in rows_in.items()
    ]
    preset = first.get("preset", "")
    return _table(f"Table 2: MSE and fMSE by foreground ratio; preset {preset}", groups, rows)


# --------------------------------------------------------------------------- files


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(x: Any) -> Any:
    """NaN and infinities become ``null`` (strict JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


_CSV_FIELDS = ["model", "subset", "name", "fg_ratio", "mse", "fmse", "psnr", "fpsnr", "ssim", "composite_mse", "composite_fmse"]


def write_results(
    out_dir: str | os.PathLike,
    summaries: dict[str, dict[str, Any]],
    records: dict[str, list[dict[str, Any]]],
    meta: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``per_image.csv`` (a row per model and image) and ``summary.json``, atomically.

    Returns:
        the two paths.
    """
    out = Path(out_dir)
    rows = [{"model": name, **r} for name, recs in records.items() for r in recs]
    fields = [f for f in _CSV_FIELDS if any(f in r for r in rows)] or _CSV_FIELDS[:8]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    csv_path, json_path = out / "per_image.csv", out / "summary.json"
    _atomic_write_text(csv_path, buf.getvalue())
    from . import __version__

    doc = {"harmonize_version": __version__, **(meta or {}), "models": summaries}
    _atomic_write_text(json_path, json.dumps(_json_safe(doc), indent=2) + "\n")
    return csv_path, json_path


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .metrics import PRESETS

    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="registered name or name.tag, hf-hub:org/repo, local-dir:PATH; several give a row each",
    )
    p.add_argument("--data", required=True, help="iHarmony4-layout folder (of subset folders, or one subset)")
    p.add_argument("--subsets", nargs="+", default=None, metavar="S", help="subsets to score (default: all found)")
    p.add_argument("--split", default="test", help="list files SUBSET_{split}.txt to read (default: test)")
    p.add_argument(
        "--preset", default="issam", choices=sorted(PRESETS), help="measurement convention (default: issam)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (fullres: always 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
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


def load_model_for_eval(
    name: str, checkpoint: str | None = None, model_args: dict[str, Any] | None = None
) -> nn.Module:
    """The model ``harmonize evaluate NAME`` scores: with its weights, or an error saying there are none.

    ``model_args`` (only with ``checkpoint``) are the constructor arguments the weights were
    trained with, such as ``kernel_norm``, which no weight shape reveals.
    """
    from . import create_model
    from ._registry import get_pretrained_cfg, is_model, split_model_name_tag
    from .cli import CommandError
    from .inference import load_model

    if model_args and not checkpoint:
        raise CommandError("--model-args goes with --checkpoint (a tag or folder brings its own)")
    if checkpoint:
        try:
            return load_model(name, checkpoint, model_args)
        except TypeError as e:  # an argument the architecture does not take
            raise CommandError(f"--model-args {json.dumps(model_args)} do not fit {name}: {e}") from None
    if name.startswith(("hf-hub:", "local-dir:")):
        return create_model(name, pretrained=True)
    if not is_model(name):
        raise CommandError(f"unknown model {name!r}; see `harmonize list`")
    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.has_weights:
        return create_model(name, pretrained=True)
    model = create_model(name, pretrained=False)
    if getattr(model, "needs_weights", True):
        arch = split_model_name_tag(name)[0]
        raise CommandError(
            f"{name} has no pretrained weights; pass --checkpoint FILE or local-dir:PATH "
            f"(a save_pretrained folder of {arch}); models with weights: `harmonize list --pretrained`"
        )
    return model


def _limit_indices(dataset: Any, limit: int | None) -> list[int] | None:
    if limit is None:
        return None
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    taken: dict[str, int] = {}
    out = []
    for i, t in enumerate(dataset.triplets):
        if taken.get(t.subset, 0) < limit:
            taken[t.subset] = taken.get(t.subset, 0) + 1
            out.append(i)
    return out


def main(args: argparse.Namespace) -> int:
    from .cli import CommandError
    from .data import IHarmony4Dataset

    if args.checkpoint and len(args.models) != 1:
        raise CommandError("--checkpoint needs exactly one MODEL")
    if len(set(args.models)) != len(args.models):
        raise CommandError("a MODEL is given twice")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    model_args = None
    if args.model_args is not None:
        try:
            model_args = json.loads(args.model_args)
        except json.JSONDecodeError as e:
            raise CommandError(f"--model-args is not JSON: {e}") from None
        if not isinstance(model_args, dict):
            raise CommandError(f"--model-args must be a JSON object, got {args.model_args!r}")
    preset = get_preset(args.preset)
    dataset = IHarmony4Dataset(args.data, subsets=args.subsets, split=args.split)
    indices = _limit_indices(dataset, args.limit)
    models = {}
    for name in args.models:
        label = f"{name} ({Path(args.checkpoint).name})" if args.checkpoint else name
        models[label] = load_model_for_eval(name, args.checkpoint, model_args)
    summaries, records = evaluate_models(
        models,
        dataset,
        preset,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        num_workers=args.workers,
        ssim=args.ssim,
        indices=indices,
    )
    print(format_table1(summaries))
    print()
    print(format_table2(summaries))
    if args.out:
        meta = {
            "preset": preset.to_dict(),
            "data": str(Path(args.data).resolve()),
            "split": args.split,
            "subsets": dataset.subsets,
            "limit": args.limit,
            "fg_ratio_buckets": [list(b) for b in FG_RATIO_BUCKETS],
        }
        csv_path, json_path = write_results(args.out, summaries, records, meta)
        print(f"\nwrote {csv_path} and {json_path}")
    return 0
