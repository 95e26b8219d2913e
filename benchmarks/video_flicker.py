"""Video flicker: temporal smoothing of the colour change against frame-by-frame harmonization.

A clip whose ground truth is known, made from the 2048x2048 INR photo of
``../shared/data/iharmony4-sample/INR2k`` (``demo2k``): a ``--crop`` x ``--crop`` window pans
across the photo over ``--frames`` frames (a camera moving over a still scene). The composite
clip shows the composite photo (the shirt recoloured by one fixed colour transform, as the
data set made it); the ground truth is the same window of the real photo. The composite and
a mask clip are encoded as H.264 (CRF 18, 25 fps) into a temporary folder, then harmonized by
:func:`harmonize.video.harmonize_video` twice with the same model: ``--window`` frames
averaged (smoothed) and ``window=1`` (frame by frame). The outputs are decoded and scored
against the real frames:

- ``fMSE``: per-frame foreground MSE (0..255 scale, at the clip's resolution), averaged
  over the frames;
- ``flicker``: the mean frame-to-frame change of the foreground's mean colour beyond the
  ground truth's, ``mean_t || (mu_t - mu_{t-1}) - (nu_t - nu_{t-1}) ||`` (RGB, 0..255),
  ``mu`` the output's and ``nu`` the real frame's (:func:`harmonize.video.flicker`).

Usage::

    python benchmarks/video_flicker.py                     # gknet, 48 frames of 512x512, window 9
    python benchmarks/video_flicker.py --model hdnet --window 15 --json flicker.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "iharmony4-sample" / "INR2k"


def crop_path(frames: int, crop: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners (x, y) of the window: a diagonal pan over the lower half of the photo."""
    x0, x1 = round(0.05 * (size - crop)), round(0.90 * (size - crop))
    y0, y1 = round(0.60 * (size - crop)), round(0.69 * (size - crop))
    return [
        (round(x0 + (x1 - x0) * t / max(1, frames - 1)), round(y0 + (y1 - y0) * t / max(1, frames - 1)))
        for t in range(frames)
    ]


def make_clip(data: Path, frames: int, crop: int):
    """(composite frames, real frames, masks) as (3, crop, crop) uint8 and (1, crop, crop) float."""
    import torch

    from harmonize.data.io import load_image, load_mask

    def u8(x):
        return x.mul(255).round().to(torch.uint8)

    real = u8(load_image(data / "real_images" / "demo2k.jpg"))
    comp = u8(load_image(data / "composite_images" / "demo2k_1_1.jpg"))
    mask = load_mask(data / "masks" / "demo2k_1.png")
    comps, reals, masks = [], [], []
    for x, y in crop_path(frames, crop, real.shape[-1]):
        window = (slice(None), slice(y, y + crop), slice(x, x + crop))
        m = mask[window]
        # Outside the mask the composite is the real photo (the JPEGs differ slightly there).
        comps.append(torch.where(m.bool(), comp[window], real[window]))
        reals.append(real[window])
        masks.append(m)
    return comps, reals, masks


def score(video: Path, reals, masks) -> dict:
    import torch

    from harmonize.metrics import fmse
    from harmonize.video import flicker, foreground_mean
    from harmonize.video.io import iter_frames

    f, pm, gm = [], [], []
    n = 0
    for out, real, m in zip(iter_frames(video), reals, masks):
        f.append(float(fmse(out[None].float() / 255, real[None].float() / 255, m[None])[0]))
        pm.append(foreground_mean(out, m))
        gm.append(foreground_mean(real, m))
        n += 1
    if n != len(reals):
        raise RuntimeError(f"{video}: {n} frames decoded, {len(reals)} expected")
    t = torch.tensor(f)
    return {"fmse": float(t.mean()), "fmse_max": float(t.max()), "flicker": flicker(pm, gm), "per_frame_fmse": f}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the INR2k folder (demo2k triplet)")
    ap.add_argument("--model", default="gknet")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--window", type=int, default=9)
    ap.add_argument("--rate", type=int, default=25)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", type=Path, help="keep the clips in this folder instead of a temporary one")
    args = ap.parse_args()

    import torch

    from harmonize.highres import Harmonizer
    from harmonize.video import harmonize_video
    from harmonize.video.io import write_video

    torch.manual_seed(0)
    comps, reals, masks = make_clip(args.data, args.frames, args.crop)
    ratios = [float(m.mean()) for m in masks]
    h = Harmonizer(args.model, device=args.device)
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        clip, mask_clip = tmp / "composite.mp4", tmp / "mask.mp4"
        write_video(clip, comps, rate=args.rate, crf=18)
        write_video(mask_clip, [(m * 255).to(torch.uint8).expand(3, -1, -1) for m in masks], rate=args.rate, crf=18)
        results["composite (input)"] = score(clip, reals, masks)
        for label, window in (("frame by frame (window 1)", 1), (f"smoothed (window {args.window})", args.window)):
            out = tmp / f"out_w{window}.mp4"
            t0 = time.perf_counter()
            harmonize_video(clip, mask_clip, out, model=h, window=window, progress=sys.stderr.isatty())
            seconds = time.perf_counter() - t0
            results[label] = {**score(out, reals, masks), "seconds": seconds}
            print(f"{label}: {seconds:.0f} s", file=sys.stderr)

    fb, sm = results["frame by frame (window 1)"], results[f"smoothed (window {args.window})"]
    print(f"model {args.model}, {args.frames} frames of {args.crop}x{args.crop} panning over INR2k demo2k "
          f"(foreground {min(ratios):.0%}-{max(ratios):.0%} of the frame), H.264 CRF 18 in and out\n")
    print("| video | mean fMSE | max fMSE | flicker |")
    print("| --- | ---: | ---: | ---: |")
    for label, r in results.items():
        print(f"| {label} | {r['fmse']:.1f} | {r['fmse_max']:.1f} | {r['flicker']:.2f} |")
    print(f"\nsmoothed / frame by frame: flicker x{sm['flicker'] / fb['flicker']:.2f}, mean fMSE x{sm['fmse'] / fb['fmse']:.3f}")
    ok = sm["flicker"] < fb["flicker"] and sm["fmse"] <= fb["fmse"] * 1.01
    print("goal (less flicker, mean fMSE no worse):", "met" if ok else "NOT met")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
