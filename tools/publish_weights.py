"""Turn a training run into a shipped pretrained tag: score it, write the Hub folder.

    python tools/publish_weights.py runs/gknet_b/final harmonize/weights/gknet.labelme \
        --data ../shared/data/labelme-harmony --recipe "..." --hardware "..." --hours 2.1 --steps 3300

Scores the weights on the test list (iHarmony4 protocol and the iSSAM convention) and on the
robustness list (the test photos under the held-out families, `RobustnessDataset`, seed 0) and on
the unedited test photos (what the model changes where nothing needs changing), checks
that float16 storage keeps the scores, and writes `config.json`, `model.safetensors` (float16) and the
model card `README.md` with the data, recipe, hardware, hours and scores. The folder is what
`harmonize.push_to_hub` would publish.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import harmonize
from harmonize._registry import get_pretrained_cfg
from harmonize.data import UNEDITED, IHarmony4Dataset, RobustnessDataset
from harmonize.evaluate import evaluate, evaluate_models

_TRAINED_ON = (
    "LabelMe-Harmony train list (1402 photos, 256x256) with composites made on the fly "
    "(Lab / RGB / histogram colour transfer and photographic retouch), 30% listed composites"
)


def score(model, data: str, preset: str) -> dict:
    ds = IHarmony4Dataset(data, ["LabelMe"], split="test")
    summary, _ = evaluate(model.eval(), ds, preset=preset, progress=False)
    return summary


def score_robustness(models: dict, data: str) -> dict:
    """{name: {"all"|family: fMSE}} on the robustness list (iHarmony4 protocol), one pass for all models."""
    summaries, _ = evaluate_models(models, RobustnessDataset(data, seed=0), preset="iharmony4", progress=False)
    return {
        name: {"all": s["overall"]["fmse"], **{k.split("/", 1)[1]: v["fmse"] for k, v in s["subsets"].items()}}
        for name, s in summaries.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_final", help="the run's final/ folder (save_pretrained layout)")
    p.add_argument("out", help="folder to write")
    p.add_argument("--data", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--hardware", required=True)
    p.add_argument("--hours", type=float, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--tag", default="labelme", help="pretrained tag the folder is for")
    p.add_argument("--name", help="the name the model card's command uses (default: ARCH.TAG)")
    p.add_argument("--trained-on", default=_TRAINED_ON, help="the data and composites, for the model card")
    args = p.parse_args()
    model = harmonize.create_model(f"local-dir:{args.run_final}", pretrained=True).eval()
    arch = model.architecture
    known = get_pretrained_cfg(arch)  # the default tag names the paper
    composite = score(harmonize.create_model("composite"), args.data, "iharmony4")["overall"]
    full = {k: score(model, args.data, k)["overall"] for k in ("iharmony4", "issam")}
    with tempfile.TemporaryDirectory() as tmp:
        harmonize.save_pretrained(model, tmp, half=True)
        half_model = harmonize.create_model(f"local-dir:{tmp}", pretrained=True).eval()
        half = score(half_model, args.data, "iharmony4")
    print(json.dumps({"fp32": full, "fp16_iharmony4": half["overall"]}, indent=2))
    drift = abs(half["overall"]["fmse"] - full["iharmony4"]["fmse"]) / full["iharmony4"]["fmse"]
    if not drift < 0.01:
        raise SystemExit(f"float16 storage moves the fMSE by {drift:.2%}: not publishing")
    ov = half["overall"]
    rob = score_robustness({"model": half_model, "composite": harmonize.create_model("composite")}, args.data)
    robust, robust_comp = rob["model"], rob["composite"]
    unedited = evaluate(half_model, RobustnessDataset(args.data, families=[UNEDITED]), preset="iharmony4", progress=False)[0]
    print(json.dumps({"robustness": robust, "unedited": unedited["overall"]["fmse"]}, indent=2))
    model.pretrained_cfg = harmonize.PretrainedCfg(
        architecture=arch,
        tag=args.tag,
        license="apache-2.0",
        paper=known.paper if known else None,
        paper_url=known.paper_url if known else None,
        trained_on=args.trained_on,
        recipe=args.recipe,
        hardware=f"{args.hardware}; {args.hours:.1f} h; {args.steps} steps",
        metrics={
            "LabelMe test fMSE (iHarmony4 protocol, 256x256)": round(ov["fmse"], 2),
            "LabelMe test MSE": round(ov["mse"], 2),
            "LabelMe test PSNR (dB, peak 255)": round(ov["psnr"], 2),
            "LabelMe test fMSE by foreground ratio 0-5% / 5-15% / 15-100%": " / ".join(
                f"{half['fg_ratio'][b]['fmse']:.1f}" for b in ("0-5%", "5-15%", "15-100%") if b in half["fg_ratio"]
            ),
            "composite (input) fMSE / MSE / PSNR on the same list": (
                f"{composite['fmse']:.2f} / {composite['mse']:.2f} / {composite['psnr']:.2f}"
            ),
            "iSSAM convention (bilinear, PSNR peak = target max): fMSE / MSE / PSNR": (
                f"{full['issam']['fmse']:.2f} / {full['issam']['mse']:.2f} / {full['issam']['psnr']:.2f}"
            ),
            f"robustness list fMSE ({len(robust) - 1} held-out families, iHarmony4 protocol), "
            "and the ratio to the composite's": ", ".join(
                f"{k} {v:.2f} ({v / robust_comp[k]:.2f}x)" for k, v in robust.items()
            ),
            "unedited test photos (the composite is the real photo): fMSE of what the model changes": round(
                unedited["overall"]["fmse"], 2
            ),
        },
        notes=f"Measured with `harmonize evaluate {args.name or f'{arch}.{args.tag}'} "
        "--data ../shared/data/labelme-harmony --preset iharmony4` (add `--split robustness` "
        "for the robustness list, `--split unedited` for the unedited photos). "
        "Trained on a small dataset of outdoor photos: expect weaker results on other kinds of images.",
    )
    harmonize.save_pretrained(model, args.out, half=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
