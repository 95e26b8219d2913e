"""Render the before/after figures of the docs from the shipped weights (deterministic, CPU).

    PYTHONPATH=. python tools/make_figures.py --data ../shared/data/labelme-harmony

Writes:

- ``docs/images/before_after.png``: the four bundled LabelMe test samples
  (``harmonize/assets/samples``), columns composite | GKNet (``gknet.labelme_long``) | real; shown at the
  top of README.md and docs/index.md.
- ``docs/images/comparison_grid.jpg``: six LabelMe test composites, every 33rd of the sorted
  test list from the 17th, the bundled four left out (none picked by hand), columns composite | GKNet (``gknet.labelme_long``) |
  HDNet (``hdnet.labelme``) | real, each result with its fMSE against the real photo (0..255 scale,
  256x256, lower is better); shown in docs/comparison.md.

Tiles are 192 pixels; the composite's foreground is outlined in yellow. Each file stays under
600 kB (the larger grid as JPEG, quality 90). Pillow only.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from harmonize.data.io import load_image, load_mask
from harmonize.demo import bundled_samples
from harmonize.highres import Harmonizer
from harmonize.metrics import fmse
from harmonize.utils.files import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "labelme-harmony"
TILE, PAD, HEAD, NOTE = 192, 6, 26, 20
MAX_BYTES = 600_000


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _tile(x: torch.Tensor, mask: torch.Tensor | None = None) -> Image.Image:
    a = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(a).resize((TILE, TILE), Image.Resampling.LANCZOS)
    if mask is not None:
        m = np.asarray(Image.fromarray((mask[0].numpy() * 255).astype(np.uint8)).resize((TILE, TILE))) >= 128
        edge = (m ^ np.roll(m, 1, 0)) | (m ^ np.roll(m, 1, 1))
        b = np.asarray(img).copy()
        b[edge] = (255, 220, 0)
        img = Image.fromarray(b)
    return img


def grid(rows: list[list[Image.Image]], labels: list[str], notes: list[list[str]] | None = None) -> Image.Image:
    """Tiles in rows under a header of column labels, a caption under each tile."""
    cols = len(labels)
    note_h = NOTE if notes else 0
    width = cols * TILE + (cols + 1) * PAD
    height = HEAD + len(rows) * (TILE + note_h + PAD) + PAD
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    head, small = _font(16), _font(13)
    for j, label in enumerate(labels):
        x = PAD + j * (TILE + PAD) + TILE // 2
        draw.text((x, HEAD // 2 + 2), label, fill="black", font=head, anchor="mm")
    for i, row in enumerate(rows):
        top = HEAD + i * (TILE + note_h + PAD)
        for j, tile in enumerate(row):
            left = PAD + j * (TILE + PAD)
            out.paste(tile, (left, top))
            if notes and notes[i][j]:
                draw.text((left + TILE // 2, top + TILE + note_h // 2 + 1), notes[i][j], fill="black", font=small, anchor="mm")
    return out


def save(img: Image.Image, path: Path) -> None:
    """PNG or JPEG (quality 90) by the extension; either must stay under ``MAX_BYTES``."""
    buf = io.BytesIO()
    if path.suffix.lower() == ".png":
        img.save(buf, format="PNG", optimize=True)
    else:  # a large photo grid: a palette PNG bands or speckles, JPEG at 90 does neither
        img.save(buf, format="JPEG", quality=90, optimize=True)
    if buf.tell() > MAX_BYTES:
        raise SystemExit(f"{path.name}: {buf.tell() // 1000} kB, over {MAX_BYTES // 1000} kB; use .jpg or smaller tiles")
    atomic_write_bytes(path, buf.getvalue())
    print(f"wrote {path.relative_to(REPO)} ({img.width}x{img.height}, {buf.tell() // 1000} kB)")


def _fmse(out: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> float:
    return float(fmse(out[None], real[None], mask[None])[0])


def before_after(gknet: Harmonizer, out: Path) -> None:
    samples = bundled_samples()
    comps = [load_image(s.composite) for s in samples]
    masks = [load_mask(s.mask) for s in samples]
    reals = [load_image(s.real) for s in samples]
    outs = gknet.harmonize_many(comps, masks)
    rows = [[_tile(c, m), _tile(o), _tile(r)] for c, m, o, r in zip(comps, masks, outs, reals)]
    notes = [[f"fMSE {_fmse(c, r, m):.0f}", f"fMSE {_fmse(o, r, m):.0f}", "ground truth"]
             for c, m, o, r in zip(comps, masks, outs, reals)]
    save(grid(rows, ["composite (input)", "GKNet (harmonized)", "real photo"], notes), out)


def comparison(gknet: Harmonizer, hdnet: Harmonizer, data: Path, out: Path) -> None:
    bundled = {s.name for s in bundled_samples()}  # shown in before_after.png already
    names = [n for n in sorted((data / "LabelMe_test.txt").read_text().split()) if Path(n).stem not in bundled][16::33][:6]
    rows, notes = [], []
    for name in names:
        stem, k, _ = Path(name).stem.rsplit("_", 2)
        comp = load_image(data / "composite_images" / name)
        mask = load_mask(data / "masks" / f"{stem}_{k}.png")
        real = load_image(data / "real_images" / f"{stem}.jpg")
        g, h = gknet(comp, mask), hdnet(comp, mask)
        rows.append([_tile(comp, mask), _tile(g), _tile(h), _tile(real)])
        notes.append([f"{stem}: fMSE {_fmse(comp, real, mask):.0f}", f"fMSE {_fmse(g, real, mask):.0f}",
                      f"fMSE {_fmse(h, real, mask):.0f}", "ground truth"])
    save(grid(rows, ["composite", "GKNet", "HDNet", "real"], notes), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the labelme-harmony folder")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = ap.parse_args()
    torch.manual_seed(0)
    # the weights the committed pictures show (the default tags when they were made)
    gknet = Harmonizer("gknet.labelme_long", device="cpu")
    hdnet = Harmonizer("hdnet.labelme", device="cpu")
    before_after(gknet, args.out / "before_after.png")
    comparison(gknet, hdnet, args.data, args.out / "comparison_grid.jpg")


if __name__ == "__main__":
    main()
