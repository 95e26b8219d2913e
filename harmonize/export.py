"""``harmonize export``: a model as an ONNX graph with dynamic batch, height and width.

The graph takes the same inputs as the PyTorch model, ``image`` (B, 3, H, W) in 0..1 and
``mask`` (B, 1, H, W) in {0, 1}, and returns ``harmonized`` (B, 3, H, W), for any B, H
and W: the padding to a multiple of 16 (GKNet) or 8 (HDNet) and the final crop are part of
the graph. After writing the file, :func:`export_onnx` runs it with onnxruntime at a size
it was not traced at (1 x 3 x 200 x 328 by default, not a multiple of 16) and checks that
it matches PyTorch within ``1e-4``.

How: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` then the ONNX translator),
with every axis ``Dim.DYNAMIC``. Three pieces of the models are written for speed or
memory in ways ``torch.export`` cannot keep general, so during export they are swapped for
equivalents made of standard ops (same results to float rounding; the tests compare them):

- ``pad_to_multiple`` skips padding when none is needed: a Python ``if`` on the size that
  would freeze the graph to sizes that are (or are not) multiples of 16. Exported, it
  always pads (by zero rows where none are needed).
- GKNet's ``kernel_modulation`` is an ``autograd.Function`` with in-place accumulation;
  exported, it is a sum of shifted slices of the zero-padded input.
- HDNet's Local Dynamic matches foreground to background in chunks of query positions (a
  Python loop over a size-dependent range); exported, all positions are matched at once,
  so its memory grows with ``(H/8 * W/8)^2``: run the graph at the working size (256), as
  :mod:`harmonize.inference` does, and carry the result to full resolution.

Example::

    harmonize export gknet --format onnx -o gknet.onnx
    python -c "import onnxruntime as ort; s = ort.InferenceSession('gknet.onnx'); print(s.get_inputs())"
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["export_onnx", "verify_onnx", "export_friendly"]

_logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
_CHECK_SHAPE = (1, 200, 328)  # (batch, height, width) of the check: neither the traced size nor a multiple of 16
INPUT_NAMES = ("image", "mask")
OUTPUT_NAMES = ("harmonized",)


# --------------------------------------------------------------------------- export-friendly ops


def _pad_to_multiple_always(x: Tensor, multiple: int) -> Tensor:
    """``pad_to_multiple`` without the shortcut: pads by ``(-size) % multiple``, zero rows included."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate")


def _kernel_modulation_ops(x: Tensor, kernels: Tensor, kernel_size: int = 3) -> Tensor:
    """:func:`harmonize.layers.kernel_modulation` as a sum of shifted slices (zero padding)."""
    b, c, h, w = x.shape
    k = kernel_size
    r, kk = k // 2, k * k
    shared = kernels.shape[1] == kk and c != 1
    kv = kernels.reshape(b, 1 if shared else c, kk, h, w)
    xp = F.pad(x, (r, r, r, r))
    out = kv[:, :, kk // 2] * x
    j = 0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if j != kk // 2:
                out = out + kv[:, :, j] * xp[:, :, r + dy : r + dy + h, r + dx : r + dx + w]
            j += 1
    return out


def _local_dynamic_unchunked(
    query_feat: Tensor,
    key_feat: Tensor,
    mask: Tensor,
    top_k: int = 1,
    chunk_size: int = 1024,
    value_feat: Tensor | None = None,
) -> Tensor:
    """:func:`harmonize.layers.local_dynamic` with every query position matched at once."""
    from .layers.local_dynamic import _flatten_features, _match, foreground_positions

    value_feat = key_feat if value_feat is None else value_feat
    b, _, h, w = query_feat.shape
    fg = foreground_positions(mask, (h, w)).flatten(1)  # (B, N)
    matched = _match(*_flatten_features(query_feat, key_feat, value_feat), fg, top_k)
    matched = torch.where(fg[..., None], matched, torch.zeros((), dtype=matched.dtype, device=matched.device))
    return matched.transpose(1, 2).reshape(b, -1, h, w)


@contextlib.contextmanager
def export_friendly() -> Iterator[None]:
    """Swap the three size-dependent pieces (see the module docstring) for traceable equivalents."""
    # Modules by full name: harmonize.layers re-exports a *function* called local_dynamic.
    ld_module = importlib.import_module("harmonize.layers.local_dynamic")
    gknet_module = importlib.import_module("harmonize.models.gknet")
    _base = importlib.import_module("harmonize.models._base")

    saved: list[tuple[Any, str, Any]] = []

    def swap(module: Any, name: str, value: Any) -> None:
        saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    try:
        original = _base.pad_to_multiple
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("harmonize.models.") and (
                getattr(module, "pad_to_multiple", None) is original
            ):
                swap(module, "pad_to_multiple", _pad_to_multiple_always)
        swap(gknet_module, "kernel_modulation", _kernel_modulation_ops)
        swap(ld_module, "local_dynamic", _local_dynamic_unchunked)
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


# --------------------------------------------------------------------------- export


def _example_inputs(batch: int, height: int, width: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=g)
    mask = torch.zeros(batch, 1, height, width)
    mask[..., height // 4 : 3 * height // 4, width // 5 : 3 * width // 5] = 1
    return image, mask


def _model_name(model: nn.Module) -> str:
    return getattr(model, "architecture", type(model).__name__)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    size: int = 256,
    verify: bool = True,
    atol: float = 1e-4,
    report: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` to an ONNX file with dynamic batch, height and width axes.

    Args:
        model: a harmonization model, ``forward(image, mask) -> image``.
        path: the ``.onnx`` file to write (atomically; weights inside the file).
        opset: ONNX opset version.
        size: height and width of the example input the graph is traced with.
        verify: run the file with onnxruntime at 1 x 3 x 200 x 328 and raise a
            RuntimeError unless it matches PyTorch within ``atol``.
        atol: largest absolute difference accepted by the check.
        report: a dict that receives ``max_abs_diff`` (the check's result), ``check_shape``
            and ``seconds``.

    Returns:
        The path written.

    Example:
        >>> export_onnx(create_model("test_gknet"), "test_gknet.onnx")
        PosixPath('test_gknet.onnx')
    """
    from .inference import publish

    path = Path(path)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    # Batch 2: a size-1 example axis would be specialised to 1.
    image, mask = _example_inputs(2, size, size)
    axes = {0: "batch", 2: "height", 3: "width"}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        with export_friendly(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations
            try:
                program = torch.onnx.export(
                    model,
                    (image, mask),
                    dynamo=True,
                    dynamic_shapes={"image": axes, "mask": axes},
                    input_names=list(INPUT_NAMES),
                    output_names=list(OUTPUT_NAMES),
                    opset_version=opset,
                    optimize=True,
                    verbose=False,
                )
            except ImportError:
                raise
            except Exception as e:  # the exporter's errors are pages long: keep their gist
                raise RuntimeError(f"{_model_name(model)} cannot be exported to ONNX: {_gist(e)}") from e
            program.save(tmp, external_data=False)
        if verify:
            diff = verify_onnx(model, tmp, _CHECK_SHAPE)
            _logger.info("onnxruntime vs PyTorch at %s: max |difference| %.3g", _CHECK_SHAPE, diff)
            if report is not None:
                report.update(max_abs_diff=diff, check_shape=(_CHECK_SHAPE[0], 3, *_CHECK_SHAPE[1:]))
            if not diff <= atol:
                raise RuntimeError(
                    f"the ONNX graph of {_model_name(model)} differs from PyTorch by {diff:.3g} (> {atol:g}) "
                    "at 1x3x200x328; the file was not written"
                )
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)
    if report is not None:
        report["seconds"] = time.perf_counter() - start
    return path


def _gist(error: BaseException) -> str:
    """One line out of an exporter error: the op without an ONNX translation, or the summary."""
    text = "\n".join(str(e) for e in (error, error.__cause__) if e is not None)
    op = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)'", text) or re.search(
        r"target=torch\.ops\.([\w.]+)", text
    )
    if op:
        return f"no ONNX translation for the operator {op.group(1)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(("-", "["))]
    return lines[-1][:300] if lines else type(error).__name__


def verify_onnx(
    model: nn.Module, path: str | os.PathLike, shape: tuple[int, int, int] = (1, 200, 328), seed: int = 1
) -> float:
    """Max absolute difference between onnxruntime on ``path`` and ``model`` on a random input.

    Args:
        model: the PyTorch model the file was exported from (run as it is, unpatched).
        path: the ONNX file.
        shape: (batch, height, width) of the random input; by default none of the traced sizes.
        seed: seed of the random input.
    """
    import onnxruntime as ort

    image, mask = _example_inputs(*shape, seed=seed)
    with torch.no_grad():
        ref = model.eval()(image, mask).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"image": image.numpy(), "mask": mask.numpy()}
    names = {i.name for i in session.get_inputs()}
    out = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    if out.shape != ref.shape:
        raise RuntimeError(f"the ONNX graph returned shape {out.shape}, PyTorch {ref.shape}")
    return float(abs(out - ref).max())


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="registered name, hf-hub:org/repo or local-dir:PATH")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default: onnx)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset version (default: {DEFAULT_OPSET})")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="safetensors weights for MODEL")
    p.add_argument("--untrained", action="store_true", help="export the architecture with its initial weights")
    p.add_argument("--size", type=int, default=256, help="size of the example input traced (default: 256)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")


def main(args: argparse.Namespace) -> int:
    from .cli import CommandError

    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        raise CommandError(f"{out}: the output of --format onnx must end in .onnx")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    if out.is_dir():
        raise CommandError(f"{out}: is a folder")
    if args.size < 32:
        raise CommandError(f"--size must be at least 32, got {args.size}")
    if args.untrained and args.checkpoint:
        raise CommandError("--untrained and --checkpoint exclude each other")
    if args.untrained:
        from . import create_model
        from ._registry import is_model

        if not is_model(args.model):
            raise CommandError(f"unknown model {args.model!r}; see `harmonize list`")
        model = create_model(args.model, pretrained=False)
    else:
        from .inference import load_model

        model = load_model(args.model, args.checkpoint)
    if not args.no_verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise CommandError("the check needs onnxruntime (pip install 'harmonize[onnx]'), or pass --no-verify") from None
    report: dict[str, Any] = {}
    try:
        export_onnx(model, out, opset=args.opset, size=args.size, verify=not args.no_verify, report=report)
    except ImportError as e:
        raise CommandError(f"ONNX export needs onnx and onnxscript (pip install 'harmonize[onnx]'): {e}") from None
    except RuntimeError as e:
        raise CommandError(str(e)) from None
    mb = out.stat().st_size / 2**20
    print(f"wrote {out} ({mb:.1f} MB, opset {args.opset}, {report['seconds']:.0f} s): inputs image "
          "(batch, 3, height, width) and mask (batch, 1, height, width) -> harmonized (batch, 3, height, width)")
    if not args.no_verify:
        shape = "x".join(str(d) for d in report["check_shape"])
        print(f"onnxruntime vs PyTorch at {shape}: max |difference| = {report['max_abs_diff']:.2e}")
    return 0
