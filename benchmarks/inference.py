"""Default model at 256x256, batch 1: float32 eager against the faster CPU settings, in one run.

On the bundled samples (composites and masks resized to 256x256, shipped weights), each
setting's median forward time under ``torch.inference_mode()`` with ``--threads`` threads,
its ratio to float32 eager, and its largest deviation from float32 eager's output in 1/255
units (the goal allows at most 1). Settings: float32 in contiguous and channels-last layout,
bfloat16 autocast in both layouts. All run interleaved in this one process. The deviation is
also taken over the first ``--limit`` composites of a dev test list (``--data``, the
LabelMe-Harmony folder beside the checkout when there is one; ``--limit 0`` skips it): four
samples understate it (bfloat16 moved them by up to 1.02/255 and 60 test photos by 2.3/255).

Goal (issue "Fast from the first keystroke"): at most 100 ms, outputs within 1/255 of float32.

    python benchmarks/inference.py [--model gknet] [--threads 2] [--reps 15] [--data DIR] [--limit 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import harmonize
from harmonize.data.io import load_image, load_mask

SAMPLES = Path(__file__).resolve().parents[1] / "harmonize" / "assets" / "samples"
DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "labelme-harmony"


def _resized(comp: Path, mask_path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    img = F.interpolate(load_image(comp)[None], size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    mask = F.interpolate(load_mask(mask_path)[None], size=(size, size), mode="bilinear")
    return img, (mask >= 0.5).float()


def _samples(size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for comp in sorted((SAMPLES / "composite_images").glob("*.jpg")):
        name, k, _ = comp.stem.rsplit("_", 2)
        out.append(_resized(comp, SAMPLES / "masks" / f"{name}_{k}.png", size))
    return out


def _test_list(root: Path, size: int, limit: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``limit`` composites of the test list(s) of an iHarmony4-layout folder."""
    lists = sorted(root.glob("*_test.txt")) or sorted(root.glob("*/*_test.txt"))
    out = []
    for lst in lists:
        for line in lst.read_text().split():
            if len(out) == limit:
                return out
            comp = lst.parent / "composite_images" / Path(line).name
            name, k, _ = comp.stem.rsplit("_", 2)
            out.append(_resized(comp, lst.parent / "masks" / f"{name}_{k}.png", size))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gknet")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--data", type=Path, default=DEV_DATA, help="iHarmony4-layout folder for the deviation check")
    p.add_argument("--limit", type=int, default=200, help="test composites for the deviation check (0: none)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = harmonize.create_model(args.model, pretrained=True).eval()
    data = _samples(args.size)
    settings = {
        "float32": (False, None),
        "float32 channels_last": (True, None),
        "bfloat16 autocast": (False, torch.bfloat16),
        "bfloat16 channels_last": (True, torch.bfloat16),
    }

    def forward(cl: bool, dtype: torch.dtype | None, img: torch.Tensor, mask: torch.Tensor) -> tuple[float, torch.Tensor]:
        fmt = torch.channels_last if cl else torch.contiguous_format
        model.to(memory_format=fmt)
        img, mask = img.contiguous(memory_format=fmt), mask.contiguous(memory_format=fmt)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            start = time.perf_counter()
            out = model(img, mask)
            elapsed = time.perf_counter() - start
        return elapsed, out.float().clamp(0, 1)

    reference = [forward(False, None, i, m)[1] for i, m in data]
    times: dict[str, list[float]] = {k: [] for k in settings}
    worst: dict[str, float] = {k: 0.0 for k in settings}
    for _ in range(2):  # warm-up
        for cl, dtype in settings.values():
            forward(cl, dtype, *data[0])
    for rep in range(args.reps):
        for label, (cl, dtype) in settings.items():
            k = rep % len(data)
            t, out = forward(cl, dtype, *data[k])
            times[label].append(t)
            worst[label] = max(worst[label], float((out - reference[k]).abs().max()) * 255)
    checked = ""
    if args.limit and args.data.is_dir():
        photos = _test_list(args.data, args.size, args.limit)
        for img, mask in photos:
            ref = forward(False, None, img, mask)[1]
            for label, (cl, dtype) in settings.items():
                if label != "float32":  # ref itself
                    worst[label] = max(worst[label], float((forward(cl, dtype, img, mask)[1] - ref).abs().max()) * 255)
        checked = f"; max |diff| over the samples and {len(photos)} test composites of {args.data}"
    print(f"{args.model} at {args.size}x{args.size}, batch 1, {args.threads} threads, torch {torch.__version__}; "
          f"median of {args.reps}; load average {os.getloadavg()[0]:.2f}{checked}")
    base = statistics.median(times["float32"])
    print(f"{'setting':24} {'ms':>7} {'ratio':>6} {'max |diff| x255':>16}")
    best = None
    for label in settings:
        ms = 1000 * statistics.median(times[label])
        print(f"{label:24} {ms:7.1f} {ms / 1000 / base:5.2f}x {worst[label]:16.3f}")
        if worst[label] <= 1.0 and (best is None or ms < best[1]):
            best = (label, ms)
    assert best is not None
    print(f"fastest within 1/255: {best[0]}, {best[1]:.1f} ms; goal (<= 100 ms): {'met' if best[1] <= 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
