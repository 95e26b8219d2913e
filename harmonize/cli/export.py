"""``harmonize export``: a model as an ONNX graph with dynamic batch, height and width."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UsageError

# harmonize.export.DEFAULT_OPSET, written out so that --help needs no torch.
DEFAULT_OPSET = 18
#: Opsets the exporter writes (torch.onnx's dynamo exporter needs 18 or newer).
OPSETS = range(18, 24)
#: harmonize.highres.MAX_NETWORK_SIZE: the largest example input traced.
MAX_SIZE = 2048


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="registered name, hf-hub:org/repo or local-dir:PATH")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default: onnx)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset version, {OPSETS[0]}-{OPSETS[-1]} (default: {DEFAULT_OPSET})")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="safetensors weights for MODEL")
    p.add_argument("--untrained", action="store_true", help="export the architecture with its initial weights")
    p.add_argument("--size", type=int, default=256, help="size of the example input traced (default: 256)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")


def _check_args(args: argparse.Namespace) -> Path:
    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"{out}: the output of --format onnx must end in .onnx")
    if out.is_dir():
        raise IsADirectoryError(f"{out}: is a folder")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    if any(parent.exists() and not parent.is_dir() for parent in out.parents):
        raise NotADirectoryError(f"{out}: a part of the path is a file, not a folder")
    if args.opset not in OPSETS:
        raise UsageError(f"--opset must be between {OPSETS[0]} and {OPSETS[-1]}, got {args.opset}")
    if not 32 <= args.size <= MAX_SIZE:
        raise UsageError(f"--size must be between 32 and {MAX_SIZE}, got {args.size} (the graph takes any size; "
                         "this is only the example traced)")
    if args.untrained and args.checkpoint:
        raise UsageError("--untrained and --checkpoint exclude each other")
    if not args.no_verify:
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            raise UsageError("the check needs onnxruntime (pip install 'harmonize[onnx]'), or pass --no-verify")
    return out


def main(args: argparse.Namespace) -> int:
    out = _check_args(args)  # before any model loads

    from .._factory import create_model, load_model
    from .._registry import is_model
    from ..export import export_onnx

    if args.untrained:
        if not is_model(args.model):
            raise UsageError(f"unknown model {args.model!r}; see `harmonize list`")
        model = create_model(args.model, pretrained=False)
    else:
        model = load_model(args.model, args.checkpoint)
    report: dict[str, Any] = {}
    try:
        export_onnx(model, out, opset=args.opset, size=args.size, verify=not args.no_verify, report=report)
    except ImportError as e:
        raise UsageError(f"ONNX export needs onnx and onnxscript (pip install 'harmonize[onnx]'): {e}") from None
    mb = out.stat().st_size / 2**20
    print(f"wrote {out} ({mb:.1f} MB, opset {args.opset}, {report['seconds']:.0f} s): inputs image "
          "(batch, 3, height, width) and mask (batch, 1, height, width) -> harmonized (batch, 3, height, width)")
    if not args.no_verify:
        shape = "x".join(str(d) for d in report["check_shape"])
        print(f"onnxruntime vs PyTorch at {shape}: max |difference| = {report['max_abs_diff']:.2e}")
    return 0
