"""Table 4 of GKNet under one equal budget: score the runs of ``tools/run_table4.sh``.

Each finished run (``runs/table4/<name>/final``, the EMA weights after the run's steps) is
scored on ``LabelMe_test.txt`` under the iHarmony4 protocol (256x256; ``--size 64`` measures
at the runs' training size instead, the protocol otherwise unchanged) in one pass over the data,
with the composite as a reference row. Printed as a Markdown table with the parameters and the
run's last validation fMSE (at the training size, from ``eval.jsonl``):

    python tools/table4.py [--runs runs/table4] [--data ../shared/data/labelme-harmony] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

import harmonize
from harmonize.data import IHarmony4Dataset, train_val_indices
from harmonize.evaluate import evaluate_models
from harmonize.metrics import PRESETS

ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    "baseline": "baseline (U-Net with attention)",
    "kpb": "+ KPB",
    "kpb_lre": "+ KPB + LRE",
    "kpb_lre_scf": "+ KPB + LRE + SCF (full, softmax kernels)",
    "kpb_lre_scf_free": "full, free kernels (`kernel_norm=\"none\"`)",
    "kpb_lre_scf_free_wd": "full, free kernels, weight decay 5e-4",
    "hdnet": "HDNet (`hdnet`), the same budget",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=str(ROOT / "runs" / "table4"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "labelme-harmony"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="+", choices=list(ROWS), help="score these runs only (default: every finished one)")
    p.add_argument("--size", type=int, default=256,
                   help="measure at this size: 256 is the iHarmony4 protocol; 64, the runs' training size")
    p.add_argument("--train", type=int, default=0, metavar="N",
                   help="also score the listed composites of the first N training photos the runs trained on")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models, info = {"composite": harmonize.create_model("composite")}, {}
    for name in args.only or ROWS:
        final = Path(args.runs) / name / "final"
        if not (final / "model.safetensors").is_file():
            continue
        model = harmonize.create_model(f"local-dir:{final}", pretrained=True).eval()
        models[name] = model
        evals = [json.loads(line) for line in (Path(args.runs) / name / "eval.jsonl").read_text().splitlines()]
        info[name] = (sum(t.numel() for t in model.parameters()) / 1e6, evals[-1]["step"], evals[-1]["overall/fmse"])
    data = IHarmony4Dataset(args.data, ["LabelMe"], split="test")
    preset = dataclasses.replace(PRESETS["iharmony4"], name=f"iharmony4 at {args.size}", size=(args.size, args.size))
    summaries, _ = evaluate_models(models, data, preset=preset, progress=False)
    train = {}
    if args.train:
        photos = IHarmony4Dataset(args.data, ["LabelMe"], split="train")
        trained, _ = train_val_indices(photos.triplets, 100, seed=0)  # the runs' val_size and split
        train, _ = evaluate_models(models, photos, preset=preset, progress=False, indices=trained[: args.train])
    print(f"test list measured at {args.size}x{args.size} (iHarmony4 protocol otherwise)")
    extra = f" train fMSE ({args.train}) |" if train else ""
    print(f"| model | params (M) | steps | val fMSE (64 px) |{extra} test fMSE | MSE | PSNR |")
    print("| --- | ---: | ---: | ---: |" + (" ---: |" if train else "") + " ---: | ---: | ---: |")
    for name, s in summaries.items():
        o = s["overall"]
        tr = f" {train[name]['overall']['fmse']:.2f} |" if train else ""
        if name == "composite":
            print(f"| composite (the input) | | | |{tr} {o['fmse']:.2f} | {o['mse']:.2f} | {o['psnr']:.2f} |")
            continue
        params, steps, val = info[name]
        print(f"| {ROWS[name]} | {params:.2f} | {steps} | {val:.1f} |{tr} {o['fmse']:.2f} | {o['mse']:.2f} | {o['psnr']:.2f} |")


if __name__ == "__main__":
    main()
