"""How much of what a model changes in unedited photos is one colour cast over the foreground.

    python tools/unedited_shift.py gknet.labelme_families hdnet.labelme_families_long [--every 10]

For every ``--every``-th LabelMe test photo, unchanged (the composite is the real photo,
``RobustnessDataset(families=[UNEDITED])``), at 256x256 (iHarmony4 protocol): the model's fMSE
against the photo, the part of it that is a uniform shift (the squared mean difference over the
foreground, per channel) and the part that is smooth (the difference averaged over 15x15 pixels).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import harmonize
from harmonize.data import UNEDITED, RobustnessDataset
from harmonize.metrics import fmse, prepare_image, prepare_mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="names as harmonize.load_model takes them")
    p.add_argument("--data", default="../shared/data/labelme-harmony")
    p.add_argument("--every", type=int, default=10, help="score every N-th photo")
    args = p.parse_args()
    ds = RobustnessDataset(args.data, families=[UNEDITED])
    for name in args.models:
        model = harmonize.create_model(name, pretrained=True).eval()
        total = shift = smooth = 0.0
        n = 0
        with torch.inference_mode():
            for i in range(0, len(ds), args.every):
                item = ds[i]
                real = prepare_image(item["real"], "iharmony4")[None]
                mask = prepare_mask(item["mask"], "iharmony4")[None]
                out = model(real, mask).clamp(0, 1)
                d = (out - real) * 255 * mask
                k = mask.sum()
                mean = d.sum((2, 3), keepdim=True) / k
                local = F.avg_pool2d(d, 15, 1, 7) / F.avg_pool2d(mask, 15, 1, 7).clamp_min(1e-3) * mask
                total += float(fmse(out, real, mask))
                shift += float((mean**2).sum() / 3)
                smooth += float((local**2).sum() / (3 * k))
                n += 1
        print(f"{name}: {n} photos, fMSE {total / n:.1f}, uniform shift {shift / n:.1f}, smooth part {smooth / n:.1f}")


if __name__ == "__main__":
    main()
