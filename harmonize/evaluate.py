"""Score models on iHarmony4-layout data: Table 1 (per subset) and Table 2 (by foreground ratio).

Python::

    from harmonize import create_model
    from harmonize.data import IHarmony4Dataset
    from harmonize.evaluate import evaluate, format_table1

    data = IHarmony4Dataset("/data/iHarmony4", split="test")
    summary, records = evaluate(create_model("reinhard"), data, preset="issam")
    print(format_table1({"reinhard": summary}))

Command line (:mod:`harmonize.cli.evaluate`)::

    harmonize evaluate composite reinhard --data /data/labelme-harmony --preset iharmony4 --out runs/eval

Each composite, mask and real image is brought to the preset's size first
(:func:`harmonize.metrics.prepare`); the model runs on the prepared composite and its
output is measured against the prepared real image. With the ``fullres`` preset the model
runs on the whole image, one image per batch.

On the CPU the models run one image at a time in channels-last layout: on a 2-core CPU GKNet
at 256x256 takes about 1.8x as long per image in a batch of 8 as in a batch of 1 (the
activations leave the caches), and channels-last convolutions are about 1.2x faster, while
float32 keeps the scores identical (``benchmarks/evaluate.py``). On a GPU batches of 8 pay.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .errors import UsageError
from .metrics import (
    HarmonizationMetrics,
    Preset,
    get_preset,
    prepare_image,
    prepare_mask,
)
from .utils.device import (
    inference_autocast,
    memory_format_of,
    preferred_memory_format,
    resolve_device,
)
from .utils.files import atomic_write_text

__all__ = [
    "evaluate",
    "evaluate_models",
    "default_batch_size",
    "format_table1",
    "format_table2",
    "write_results",
    "limit_indices",
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


def default_batch_size(device: torch.device) -> int:
    """Images per batch that score fastest on ``device``: 1 on the CPU, 8 on a GPU."""
    return 1 if device.type == "cpu" else 8


@contextlib.contextmanager
def _fastest_layouts(models: dict[str, nn.Module], device: torch.device) -> Iterator[None]:
    """Run each of ``models`` in its fastest layout on ``device`` (``preferred_memory_format``),
    then give each back the layout it had."""
    before = {name: memory_format_of(m) for name, m in models.items()}
    try:
        for m in models.values():
            m.to(memory_format=preferred_memory_format(m, device))
        yield
    finally:
        for name, m in models.items():
            m.to(memory_format=before[name])


def evaluate_models(
    models: dict[str, nn.Module],
    dataset: Dataset,
    preset: str | Preset = "issam",
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    num_workers: int = 0,
    ssim: bool = False,
    indices: Sequence[int] | None = None,
    amp: bool | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Score several models in one pass over the data (each batch is read once).

    Args:
        models: row name -> model (``forward(image, mask) -> image``).
        dataset: items with ``composite``, ``mask``, ``real`` (full resolution, no transform),
            ``name`` and ``subset``, e.g. :class:`~harmonize.data.IHarmony4Dataset`.
        preset: a name in :data:`harmonize.metrics.PRESETS` or a :class:`~harmonize.metrics.Preset`.
        batch_size: images per batch (always 1 for full-resolution presets); None:
            :func:`default_batch_size` of the device. The scores do not depend on it.
        device: ``"cpu"``, ``"cuda"``, ... (``None``/``"auto"``: CUDA when there is one).
        progress: show a tqdm bar on stderr.
        num_workers: DataLoader workers reading and resizing images.
        ssim: also compute SSIM.
        indices: score only these items of ``dataset``.
        amp: bfloat16 autocast (outputs cast to float32 and clamped): None on a CUDA GPU that
            has it, not on the CPU (float32, bit for bit); True on the CPU too (scores change
            slightly); False never.

    Returns:
        ``({name: summary}, {name: records})``, summary as
        :meth:`~harmonize.metrics.HarmonizationMetrics.compute`, records one dict per image.
    """
    p = get_preset(preset)
    dev = resolve_device(device)
    data = _PreparedDataset(dataset, p, indices)
    if batch_size is None:
        batch_size = default_batch_size(dev)
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
        with _fastest_layouts(models, dev), torch.inference_mode():  # layouts first: parameters stay normal tensors, fit to train
            for batch in loader:
                comp, mask, real = (batch[k].to(dev) for k in ("composite", "mask", "real"))
                for name, model in models.items():
                    fmt = memory_format_of(model)
                    with inference_autocast(dev, amp):
                        pred = model(comp.contiguous(memory_format=fmt), mask.contiguous(memory_format=fmt))
                    pred = pred.float().clamp(0, 1)
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
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    num_workers: int = 0,
    ssim: bool = False,
    indices: Sequence[int] | None = None,
    amp: bool | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score one model: ``(summary, records)``; see :func:`evaluate_models` for the arguments.

    Examples:
        >>> summary, records = evaluate(create_model("composite"), IHarmony4Dataset(root, split="test"))
        >>> summary["overall"]["fmse"], len(records)
    """
    name = getattr(model, "architecture", type(model).__name__)
    summaries, records = evaluate_models(
        {name: model}, dataset, preset, batch_size, device, progress, num_workers, ssim, indices, amp
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


def _json_safe(x: Any) -> Any:
    """NaN and infinities become ``null`` (strict JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


_CSV_FIELDS = [
    "model", "subset", "name", "fg_ratio", "mse", "fmse", "psnr", "fpsnr", "ssim", "composite_mse", "composite_fmse",
    "nonfinite",
]


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
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "per_image.csv", out / "summary.json"
    atomic_write_text(csv_path, buf.getvalue())
    from . import __version__

    doc = {"harmonize_version": __version__, **(meta or {}), "models": summaries}
    atomic_write_text(json_path, json.dumps(_json_safe(doc), indent=2) + "\n")
    return csv_path, json_path


def limit_indices(dataset: Any, limit: int | None) -> list[int] | None:
    """Indices of the first ``limit`` items of each subset of an iHarmony4-layout dataset (None: all)."""
    if limit is None:
        return None
    if limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}")
    taken: dict[str, int] = {}
    out = []
    for i, t in enumerate(dataset.triplets):
        if taken.get(t.subset, 0) < limit:
            taken[t.subset] = taken.get(t.subset, 0) + 1
            out.append(i)
    return out
