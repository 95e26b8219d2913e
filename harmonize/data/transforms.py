"""Paired transforms: composite, mask and real image move together.

A transform is called as ``t(sample, generator)`` with ``sample`` a dict holding
``composite``, ``mask`` and ``real`` tensors (C, H, W); ``generator`` (a
``torch.Generator`` or ``None`` for the global one) makes random draws reproducible.
Images are resized bilinearly (antialiased when shrinking), masks too and then
binarised at 0.5 unless ``binary_mask=False``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["unit_float", "resize_image", "PairedCompose", "PairedResize", "PairedRandomResizedCrop", "PairedRandomHorizontalFlip"]

_IMAGE_KEYS = ("composite", "real")


def unit_float(x: Tensor) -> Tensor:
    """An image in 0..1: a floating-point tensor as it is, a uint8 one (0..255) as float32 divided by 255."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def resize_image(x: Tensor, size: tuple[int, int], mode: str = "bilinear", max_strip_elems: int = 1 << 22) -> Tensor:
    """Resize (C, H, W) or (B, C, H, W) to ``size`` (H, W); antialiased when shrinking.

    A uint8 image (0..255) comes back as float32 in 0..1, never converted whole: strips of
    at most ``max_strip_elems`` values are converted and resized along the width, then the
    narrow result along the height. For bilinear and bicubic resizing this equals resizing
    ``x.float() / 255`` in one call, bit for bit.
    """
    batched = x.dim() == 4
    xb = x if batched else x[None]
    if x.dtype == torch.uint8:
        rows = max(1, max_strip_elems // max(1, xb[..., :1, :].numel()))
        strips = [_interpolate(unit_float(xb[..., t : t + rows, :]), (min(rows, x.shape[-2] - t), size[1]), mode)
                  for t in range(0, x.shape[-2], rows)]
        y = _interpolate(torch.cat(strips, dim=-2), size, mode)
    elif tuple(x.shape[-2:]) == tuple(size):
        return x
    else:
        y = _interpolate(xb, size, mode)
    if mode == "bicubic":
        y = y.clamp(0, 1)
    return y if batched else y[0]


def _interpolate(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """``F.interpolate`` of (B, C, H, W), antialiased when shrinking; ``x`` itself at its own size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    kwargs = {"antialias": True} if mode in ("bilinear", "bicubic") and shrink else {}
    align = {} if mode in ("nearest", "area") else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **align, **kwargs)


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _rand(g: torch.Generator | None) -> float:
    return torch.rand((), generator=g).item()


class PairedCompose:
    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        for t in self.transforms:
            sample = t(sample, generator)
        return sample


class PairedResize:
    """Resize every image of the sample to ``size``."""

    def __init__(self, size: int | Sequence[int], mode: str = "bilinear", binary_mask: bool = True) -> None:
        self.size, self.mode, self.binary_mask = _size(size), mode, binary_mask

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        out = dict(sample)
        for k in _IMAGE_KEYS:
            if k in out:
                out[k] = resize_image(out[k], self.size, self.mode)
        m = resize_image(out["mask"], self.size, "bilinear")
        out["mask"] = (m >= 0.5).float() if self.binary_mask else m.clamp(0, 1)
        return out


class PairedRandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, resize to ``size``."""

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size, self.scale, self.ratio = _size(size), scale, ratio

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        h, w = sample["real"].shape[-2:]
        for _ in range(10):
            area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * _rand(generator))
            logr = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * _rand(generator)
            ch, cw = int(round(math.sqrt(area / math.exp(logr)))), int(round(math.sqrt(area * math.exp(logr))))
            if 0 < ch <= h and 0 < cw <= w:
                break
        else:
            ch, cw = h, w
        top = int(_rand(generator) * (h - ch + 1))
        left = int(_rand(generator) * (w - cw + 1))
        out = dict(sample)
        for k in (*_IMAGE_KEYS, "mask"):
            if k in out:
                out[k] = out[k][..., top : top + ch, left : left + cw]
        return PairedResize(self.size)(out, generator)


class PairedRandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        if _rand(generator) >= self.p:
            return sample
        out = dict(sample)
        for k in (*_IMAGE_KEYS, "mask"):
            if k in out:
                out[k] = out[k].flip(-1)
        return out
