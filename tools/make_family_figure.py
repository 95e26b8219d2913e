"""Render one LabelMe photo under every composite family: docs/images/families.png.

    PYTHONPATH=. python tools/make_family_figure.py --data ../shared/data/labelme-harmony

Columns: the real photo (then its mask, then the reference photo whose foreground the
statistics transfers take), and one column per family in :data:`harmonize.data.FAMILIES`;
rows: seeds. Held-out families (the robustness list's) are marked. Pillow only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from harmonize.data import FAMILIES, HELDOUT_FAMILIES, IHarmony4Dataset

REPO = Path(__file__).resolve().parents[1]


def _tile(x: torch.Tensor, size: int) -> Image.Image:
    a = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS)


def _outline(img: Image.Image, mask: torch.Tensor, size: int) -> Image.Image:
    """``img`` with the mask's edge drawn in yellow."""
    m = np.asarray(_tile(mask, size))[..., 0] >= 128
    edge = m ^ np.roll(m, 1, 0) | m ^ np.roll(m, 1, 1)
    a = np.asarray(img).copy()
    a[edge] = (255, 220, 0)
    return Image.fromarray(a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "labelme-harmony"))
    p.add_argument("--photo", default="l100243_1_1", help="training composite whose real photo and mask are shown")
    p.add_argument("--ref", default="l100191_1_1", help="training composite whose real photo is the transfer reference")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--size", type=int, default=160, help="tile size in pixels")
    p.add_argument("--out", default=str(REPO / "docs" / "images" / "families.png"))
    args = p.parse_args()

    torch.set_num_threads(1)
    ds = IHarmony4Dataset(args.data, split="train")
    names = [t.name for t in ds.triplets]
    _, mask, real = ds.load(names.index(args.photo))
    _, ref_mask, ref = ds.load(names.index(args.ref))

    s, pad, head, left = args.size, 4, 34, 0
    cols = 1 + len(FAMILIES)
    sheet = Image.new("RGB", (left + cols * (s + pad) + pad, head + args.seeds * (s + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)

    def put(img: Image.Image, col: int, row: int) -> None:
        sheet.paste(img, (left + pad + col * (s + pad), head + row * (s + pad)))

    def label(text: str, col: int, line: int = 0, fill: str = "black") -> None:
        draw.text((left + pad + col * (s + pad) + 2, 2 + 15 * line), text, fill=fill, font=font)

    label("real / mask / ref", 0)
    put(_tile(real, s), 0, 0)
    if args.seeds > 1:
        put(_outline(_tile(real, s), mask, s), 0, 1)
    if args.seeds > 2:
        put(_outline(_tile(ref, s), ref_mask, s), 0, 2)
    for c, name in enumerate(FAMILIES, start=1):
        held = name in HELDOUT_FAMILIES
        label(name, c)
        label("held out" if held else "training", c, 1, "firebrick" if held else "seagreen")
        for row in range(args.seeds):
            g = torch.Generator().manual_seed(row)
            put(_tile(FAMILIES[name](real, mask, ref, ref_mask, g), s), c, row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    print(f"{out}: {sheet.size[0]}x{sheet.size[1]}, {out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
