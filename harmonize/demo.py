"""The demo: harmonize the bundled samples, write a before/after/real grid and the scores.

The package ships four LabelMe composites with their masks and real photographs
(``harmonize/assets/samples``, see its README). The demo harmonizes them with a model and
writes, into ``-o DIR`` (default ``./harmonize-demo``):

- ``demo_grid.png``: a row per sample, columns composite | mask | harmonized | real;
- ``demo_metrics.json``: per-sample fMSE, MSE and PSNR of the composite and of the result
  (iHarmony4 conventions: 256x256, 0..255 scale), and their means.

It prints the same numbers as a table. Re-running the demo replaces its own two files.

Example::

    harmonize demo                      # GKNet with its pretrained weights
    harmonize demo --model reinhard -o /tmp/demo
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from .data.io import load_image, load_mask
from .utils.files import atomic_write_bytes

__all__ = ["Sample", "bundled_samples", "samples_dir", "run_demo", "make_grid", "format_table"]

_COLUMNS = ("composite", "mask", "harmonized", "real")


@dataclass
class Sample:
    """One bundled triplet."""

    name: str
    composite: Path
    mask: Path
    real: Path


def samples_dir() -> Path:
    """The folder of the bundled samples (inside the installed package)."""
    return Path(str(resources.files("harmonize") / "assets" / "samples"))


def bundled_samples() -> list[Sample]:
    """The bundled composites, each with its mask (``NAME_K.png``) and real image (``NAME.jpg``)."""
    root = samples_dir()
    out = []
    for comp in sorted((root / "composite_images").glob("*.jpg")):
        name, k, _ = comp.stem.rsplit("_", 2)
        out.append(Sample(comp.stem, comp, root / "masks" / f"{name}_{k}.png", root / "real_images" / f"{name}.jpg"))
    if not out:
        raise FileNotFoundError(f"{root}: no bundled samples (is the package installed with its assets?)")
    return out


def _tile(x: torch.Tensor) -> Image.Image:
    """(C, H, W) in 0..1 (C = 1 or 3) -> RGB PIL image."""
    a = x.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    if a.shape[0] == 1:
        a = a.expand(3, -1, -1)
    return Image.fromarray(a.permute(1, 2, 0).numpy())


def make_grid(
    rows: list[list[torch.Tensor]], labels: list[str] | None = None, notes: list[str] | None = None, tile: int = 256
) -> Image.Image:
    """A grid image: one row per sample, one column per tensor, a header row of ``labels``.

    Args:
        rows: per row, (C, H, W) tensors in 0..1 (resized to ``tile`` x ``tile``).
        labels: column titles.
        notes: a line written under each row.
        tile: size of each cell in pixels.
    """
    cols = max(len(r) for r in rows)
    head = 22 if labels else 0
    note_h = 18 if notes else 0
    pad = 4
    width = cols * tile + (cols + 1) * pad
    height = head + len(rows) * (tile + note_h + pad) + pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(labels or []):
        draw.text((pad + j * (tile + pad) + 4, 5), label, fill="black")
    for i, row in enumerate(rows):
        top = head + pad + i * (tile + note_h + pad)
        for j, x in enumerate(row):
            grid.paste(_tile(x).resize((tile, tile), Image.BILINEAR), (pad + j * (tile + pad), top))
        if notes:
            draw.text((pad + 4, top + tile + 3), notes[i], fill="black")
    return grid


def run_demo(
    model: Any = "gknet",
    out_dir: str | os.PathLike = "harmonize-demo",
    device: str | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Harmonize the bundled samples; write ``demo_grid.png`` and ``demo_metrics.json``.

    Args:
        model: a registered name (with its pretrained weights) or an ``nn.Module``.
        out_dir: the folder to write into (created if needed).
        device: ``"cpu"``, ``"cuda"``... (None: CUDA when there is one).
        checkpoint: weights file for a model given by name.

    Returns:
        The metrics document written to ``demo_metrics.json``, with ``grid`` and
        ``metrics`` paths added.
    """
    from . import __version__
    from .highres import Harmonizer
    from .metrics import fmse, mse, psnr

    samples = bundled_samples()
    harmonizer = Harmonizer(model, device=device, checkpoint=checkpoint)
    comps = [load_image(s.composite) for s in samples]
    masks = [load_mask(s.mask) for s in samples]
    reals = [load_image(s.real) for s in samples]
    outs = harmonizer.harmonize_many(comps, masks)

    records, rows, notes = [], [], []
    for s, c, m, r, o in zip(samples, comps, masks, reals, outs):
        c4, m4, r4, o4 = c[None], m[None], r[None], o[None]
        rec = {
            "sample": s.name,
            "fg_ratio": float(m.mean()),
            "composite_fmse": float(fmse(c4, r4, m4)[0]),
            "fmse": float(fmse(o4, r4, m4)[0]),
            "composite_mse": float(mse(c4, r4)[0]),
            "mse": float(mse(o4, r4)[0]),
            "composite_psnr": float(psnr(c4, r4)[0]),
            "psnr": float(psnr(o4, r4)[0]),
        }
        records.append(rec)
        rows.append([c, m, o, r])
        notes.append(f"{s.name}: fMSE {rec['composite_fmse']:.0f} -> {rec['fmse']:.0f}, "
                     f"PSNR {rec['composite_psnr']:.1f} -> {rec['psnr']:.1f} dB")
    keys = [k for k in records[0] if k not in ("sample",)]
    mean = {k: sum(r[k] for r in records) / len(records) for k in keys}
    name = model if isinstance(model, str) else getattr(model, "architecture", type(model).__name__)
    doc = {
        "harmonize_version": __version__,
        "model": name,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "device": str(harmonizer.device),
        "metric_notes": "fMSE and MSE on the 0..255 scale, PSNR in dB (peak 255), at 256x256",
        "samples": records,
        "mean": mean,
    }
    out = Path(out_dir)
    grid = make_grid(rows, labels=[c for c in _COLUMNS], notes=notes)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    grid_path, json_path = out / "demo_grid.png", out / "demo_metrics.json"
    atomic_write_bytes(grid_path, buf.getvalue())
    atomic_write_bytes(json_path, (json.dumps(doc, indent=2) + "\n").encode())
    return {**doc, "grid": str(grid_path), "metrics": str(json_path)}


def format_table(doc: dict[str, Any]) -> str:
    """The per-sample table ``harmonize demo`` prints."""
    head = f"{'sample':<14} {'fMSE comp':>10} {'fMSE harm':>10} {'PSNR comp':>10} {'PSNR harm':>10}"
    lines = [f"model {doc['model']} on {len(doc['samples'])} bundled samples (256x256; fMSE lower, PSNR higher is better)",
             head, "-" * len(head)]
    for r in [*doc["samples"], {"sample": "mean", **doc["mean"]}]:
        lines.append(
            f"{r['sample']:<14} {r['composite_fmse']:>10.1f} {r['fmse']:>10.1f} "
            f"{r['composite_psnr']:>10.2f} {r['psnr']:>10.2f}"
        )
    return "\n".join(lines)
