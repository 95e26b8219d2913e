"""Global switches the layers read: ``set_exportable()`` / ``is_exportable()``.

Some ops have a fast eager path that a tracer cannot follow (a shortcut that depends on
the input's size, a Python loop over chunks, a custom autograd function). When exporting
(:func:`harmonize.export.export_onnx` sets the flag, and ``torch.export`` is detected by
itself) each such layer takes its traceable path instead. A new layer with such a path
checks :func:`is_exportable` too; nothing else has to know about it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["set_exportable", "is_exportable", "exportable"]

_EXPORTABLE = False


def set_exportable(enable: bool = True) -> None:
    """Make every layer take its traceable (ONNX/``torch.export``-friendly) path."""
    global _EXPORTABLE
    _EXPORTABLE = bool(enable)


def is_exportable() -> bool:
    """True while exporting: :func:`set_exportable` was called, or ``torch.export`` is tracing."""
    if _EXPORTABLE:
        return True
    compiler = getattr(torch, "compiler", None)
    is_exporting = getattr(compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False


@contextlib.contextmanager
def exportable(enable: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_exportable`; restores the previous value."""
    global _EXPORTABLE
    previous = _EXPORTABLE
    _EXPORTABLE = bool(enable)
    try:
        yield
    finally:
        _EXPORTABLE = previous
