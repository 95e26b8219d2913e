"""Device resolution, written once: every command and class takes ``device`` the same way."""

from __future__ import annotations

import contextlib
import copy
import time

import torch
from torch import nn

from ..errors import UsageError

__all__ = ["resolve_device", "inference_autocast", "memory_format_of", "preferred_memory_format", "cpu_bf16_step_ratio"]


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


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """The layout of ``model``'s first 4-d parameter (contiguous when it has none)."""
    for p in model.parameters():
        if p.dim() == 4:
            cl = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            return torch.channels_last if cl else torch.contiguous_format
    return torch.contiguous_format


def preferred_memory_format(model: nn.Module, device: torch.device) -> torch.memory_format:
    """The layout ``model`` runs fastest in on ``device``: its class's ``cpu_memory_format`` on
    the CPU (``GKNet``: channels-last; the default, contiguous), contiguous elsewhere.

    Measured per model (``docs/benchmarks.md``): GKNet's forward at 256x256 is 1.16x faster
    channels-last in float32 and 1.57x in bfloat16 (AMX Xeon, 2 threads); HDNet's is 1.12x
    slower channels-last (AMD EPYC, float32, 1 thread).
    """
    if device.type != "cpu":
        return torch.contiguous_format
    return getattr(model, "cpu_memory_format", torch.contiguous_format)


def inference_autocast(device: torch.device, enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for inference, or nothing.

    Args:
        device: where the network runs.
        enabled: None (the default): on a CUDA device that has bfloat16, not on the CPU, where
            the network then stays in float32 bit for bit. True: on the CPU too (``gknet`` at
            256x256 1.6x faster on an AMD EPYC with AVX-512 bf16, 1.7x on an Intel Xeon
            with AMX, 1.16x slower on an Intel Xeon with AVX-512 bf16 but no AMX; outputs
            within 1/255 of float32 on 204 photos: ``benchmarks/inference.py``). False: never.

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


def cpu_bf16_step_ratio(model: nn.Module, size: int, channels_last: bool = True) -> float:
    """How long a training step of ``model`` takes in bfloat16 autocast on this CPU, as a
    fraction of float32's time.

    Times a forward and backward pass of a copy of ``model`` (train mode) on one random
    ``(1, 3, size, size)`` image and its mask in each dtype, alternating: one untimed pass
    each, then the best of two. The model, its BatchNorm statistics and the random number
    generators are left as they were. On an Intel Xeon with AMX a bfloat16 step of ``gknet``
    took 0.56x float32's time (``hdnet`` 0.5x); on one with AVX-512 bf16 but no AMX, 1.2x
    (``docs/benchmarks.md``).

    Args:
        model: called as ``model(image, mask)``; its parameters on the CPU.
        size: side of the square input, the run's training size.
        channels_last: time in channels-last layout, as the trainer runs.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = copy.deepcopy(model).train()
        image = torch.rand(1, 3, size, size).contiguous(memory_format=fmt)
        mask = (torch.rand(1, 1, size, size) > 0.7).float().contiguous(memory_format=fmt)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(3):
            for bf16 in (False, True):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = probe(image, mask)
                if out.requires_grad:  # a model without weights has no backward
                    out.float().square().mean().backward()
                probe.zero_grad(set_to_none=True)
                times[bf16].append(time.perf_counter() - start)
    return min(times[True][1:]) / min(times[False][1:])
