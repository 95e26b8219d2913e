"""Write the model (or EMA) weights of a training checkpoint as a safetensors file.

    python tools/extract_weights.py runs/gknet_a/last.pt runs/gknet_a/step2500_model.safetensors

The file is what a later phase's ``init`` reads. The checkpoint's step is printed, so a file
named after a step can be checked against it.
"""

from __future__ import annotations

import argparse

from safetensors.torch import save_file

from harmonize.train import load_checkpoint_state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a trainer checkpoint (last.pt)")
    p.add_argument("out", help="safetensors file to write")
    p.add_argument("--ema", action="store_true", help="take the EMA weights instead of the model's")
    args = p.parse_args()
    state = load_checkpoint_state(args.checkpoint)  # never runs code from the file
    weights = state["ema"] if args.ema else state["model"]
    if weights is None:
        raise SystemExit(f"{args.checkpoint}: the run kept no EMA weights")
    save_file({k: v.contiguous() for k, v in weights.items()}, args.out)
    print(f"step {state['step']}: {len(weights)} tensors -> {args.out}")


if __name__ == "__main__":
    main()
