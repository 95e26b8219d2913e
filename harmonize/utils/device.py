"""Device resolution, written once: every command and class takes ``device`` the same way."""

from __future__ import annotations

import contextlib

import torch

from ..errors import UsageError

__all__ = ["resolve_device", "inference_autocast"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None or ``"auto"``: CUDA when there is one, else the CPU.

    Raises:
        UsageError: a device name torch does not know, or a device this machine lacks.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {str(device)!r}: CUDA is not available on this machine")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise UsageError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {str(device)!r}: MPS is not available on this machine")
    return d


def inference_autocast(device: torch.device, enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for inference, or nothing.

    Args:
        device: where the network runs.
        enabled: None (the default): on a CUDA device that has bfloat16, not on the CPU, where
            the network then stays in float32 bit for bit. True: on the CPU too (about 2x faster
            at 256x256 on a CPU with AVX-512 bf16, outputs within 1/255 of float32:
            ``benchmarks/inference.py``). False: never.

    bfloat16 keeps float32's range, so nothing overflows; float16 (the only choice on GPUs
    without bfloat16) could, and is not used. Callers cast the output to float32 and clamp it.
    """
    if enabled is None:
        enabled = device.type == "cuda"
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
