"""ONNX export: a model as an ONNX graph with dynamic batch, height and width.

The graph takes the same inputs as the PyTorch model, ``image`` (B, 3, H, W) in 0..1 and
``mask`` (B, 1, H, W) in {0, 1}, and returns ``harmonized`` (B, 3, H, W), for any B, H
and W: the padding to a multiple of 16 (GKNet) or 8 (HDNet) and the final crop are part of
the graph. After writing the file, :func:`export_onnx` runs it with onnxruntime at a size
it was not traced at (1 x 3 x 200 x 328 by default, not a multiple of 16) and checks that
it matches PyTorch within ``1e-4``.

How: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` then the ONNX translator),
with every axis ``Dim.DYNAMIC``, under :func:`harmonize.exportable` (see
:mod:`harmonize._config`). Three pieces of the models are written for speed or memory in
ways ``torch.export`` cannot keep general; each layer checks :func:`harmonize.is_exportable`
and takes an equivalent made of standard ops (same results to float rounding; the tests
compare them). This module only exports: it patches nothing.

- ``pad_to_multiple`` skips padding when none is needed: a Python ``if`` on the size that
  would freeze the graph to sizes that are (or are not) multiples of 16. Exported, it
  always pads (by zero rows where none are needed).
- GKNet's ``kernel_modulation`` is an ``autograd.Function`` with in-place accumulation;
  exported, it is a sum of shifted slices of the zero-padded input.
- HDNet's Local Dynamic matches foreground to background in chunks of query positions (a
  Python loop over a size-dependent range); exported, all positions are matched at once,
  so its memory grows with ``(H/8 * W/8)^2``: run the graph at the working size (256), as
  :mod:`harmonize.highres` does, and carry the result to full resolution.

Command line (:mod:`harmonize.cli.export`)::

    harmonize export gknet --format onnx -o gknet.onnx
    python -c "import onnxruntime as ort; s = ort.InferenceSession('gknet.onnx'); print(s.get_inputs())"
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._config import exportable
from .errors import HarmonizeError
from .utils.files import atomic_write

__all__ = ["export_onnx", "verify_onnx", "ExportError", "DEFAULT_OPSET"]

_logger = logging.getLogger(__name__)


class ExportError(HarmonizeError, RuntimeError):
    """A model the exporter cannot trace, or whose graph does not match PyTorch."""


DEFAULT_OPSET = 18
_CHECK_SHAPE = (1, 200, 328)  # (batch, height, width) of the check: neither the traced size nor a multiple of 16
INPUT_NAMES = ("image", "mask")
OUTPUT_NAMES = ("harmonized",)


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
    path = Path(path)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    # Batch 2: a size-1 example axis would be specialised to 1.
    image, mask = _example_inputs(2, size, size)
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with atomic_write(path) as tmp:
            with exportable(), torch.no_grad(), warnings.catch_warnings():
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
                    raise ExportError(f"{_model_name(model)} cannot be exported to ONNX: {_gist(e)}") from e
                program.save(str(tmp), external_data=False)
            if verify:
                diff = verify_onnx(model, tmp, _CHECK_SHAPE)
                _logger.info("onnxruntime vs PyTorch at %s: max |difference| %.3g", _CHECK_SHAPE, diff)
                if report is not None:
                    report.update(max_abs_diff=diff, check_shape=(_CHECK_SHAPE[0], 3, *_CHECK_SHAPE[1:]))
                if not diff <= atol:
                    raise ExportError(
                        f"the ONNX graph of {_model_name(model)} differs from PyTorch by {diff:.3g} (> {atol:g}) "
                        "at 1x3x200x328; the file was not written"
                    )
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
