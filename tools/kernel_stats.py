"""How large GKNet's harmony kernels and BatchNorm statistics are: the kernel_norm study.

For each weights source (a training run's ``last.pt``, a safetensors file or a registered
``name.tag``) this runs the model on ``--n`` validation composites of the LabelMe training
list (the photos held out for choosing checkpoints) and prints, for each modulated level,
the kernels' mean and largest L1 gain (sum of |taps|: how much a kernel can amplify a
feature) and their mean DC gain (sum of taps), then the largest running variance of any
BatchNorm layer of the model.

    python tools/kernel_stats.py runs/table4/kpb_lre_scf/last.pt runs/table4/kpb_lre_scf_free/last.pt
    python tools/kernel_stats.py gknet.labelme_long --size 256
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

import harmonize
from harmonize.data import IHarmony4Dataset, PairedResize, train_val_indices
from harmonize.train.trainer import load_checkpoint_state

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "labelme-harmony"


def _load(source: str) -> tuple[nn.Module, str]:
    if source.endswith(".pt"):
        state = load_checkpoint_state(source)
        cfg = state["config"]
        model = harmonize.create_model(cfg["model"], **cfg.get("model_args", {}))
        model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        return model, f"{source} (step {state['step']}, {json.dumps(cfg.get('model_args', {}))}, EMA)"
    if source.endswith(".safetensors"):
        raise SystemExit("give a run's last.pt or a registered name.tag")
    return harmonize.create_model(source, pretrained=True), source


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--data", default=str(DATA))
    args = p.parse_args()
    ds = IHarmony4Dataset(args.data, ["LabelMe"], split="train", transform=PairedResize(args.size))
    _, val = train_val_indices(ds.triplets, 100, seed=0)
    batch = [ds[i] for i in val[: args.n]]
    comp = torch.stack([b["composite"] for b in batch])
    mask = torch.stack([b["mask"] for b in batch])
    for source in args.sources:
        model, title = _load(source)
        model.eval()
        print(title)
        if not getattr(model, "use_kpb", False):
            print("  no harmony kernels (use_kpb=False)")
        else:
            with torch.inference_mode():
                x = torch.cat([comp * 2 - 1, mask], dim=1)
                feats = [model.stem(x)]
                for down in model.down:
                    feats.append(down(feats[-1]))
                kernels = model.predict_kernels(feats)
            k2 = model.kernel_size**2
            for level, k in enumerate(kernels):
                taps = k.unflatten(1, (-1, k2))  # (B, C, k*k, H, W)
                l1 = taps.abs().sum(dim=2)
                print(f"  level {level}: L1 gain mean {l1.mean():.3g}, max {l1.max():.3g}; "
                      f"DC gain mean {taps.sum(dim=2).mean():.3g}")
        bn = [(n, m.running_var.max().item()) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        name, var = max(bn, key=lambda t: t[1])
        print(f"  largest BatchNorm running variance: {var:.3g} ({name})")


if __name__ == "__main__":
    main()
