"""Which GPU kernels the layers use: :mod:`harmonize.layers._triton_ops`, for CUDA tensors only.

The Triton kernels are imported on the first CUDA call, never at import and never on the CPU
(importing triton costs seconds). Where triton is missing or fails to import, :func:`triton_ops`
returns ``None`` (one logged warning) and the layers keep their PyTorch path on the GPU.

Set ``HARMONIZE_TRITON=0`` to never use them (read on every call, so a benchmark can compare).
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType

from torch import Tensor

__all__ = ["triton_ops", "enabled", "ENV_VAR"]

logger = logging.getLogger(__name__)

ENV_VAR = "HARMONIZE_TRITON"

_lock = threading.Lock()
_state: dict[str, ModuleType | None] = {}  # "module" once tried


def enabled() -> bool:
    """False when ``HARMONIZE_TRITON`` is 0, false, no or off."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def _load() -> ModuleType | None:
    if "module" in _state:
        return _state["module"]
    with _lock:
        if "module" not in _state:
            try:
                from . import _triton_ops as module
            except Exception as e:  # no triton, or one that cannot work here: PyTorch path
                logger.warning(
                    "Triton kernels unavailable, the layers use their PyTorch path on the GPU "
                    "(%s: %s)",
                    type(e).__name__,
                    str(e).strip().splitlines()[-1] if str(e).strip() else "",
                )
                module = None
            _state["module"] = module
    return _state["module"]


def triton_ops(t: Tensor) -> ModuleType | None:
    """The Triton kernels for ``t``: the module on a CUDA tensor where they are available and
    enabled, else ``None`` (always ``None`` on the CPU, without importing anything)."""
    if t.device.type != "cuda" or not enabled():
        return None
    return _load()
