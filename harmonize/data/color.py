"""Colour space conversions on tensors: sRGB <-> CIE Lab (D65)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rgb_to_lab", "lab_to_rgb"]

_RGB2XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def _srgb_to_linear(x: Tensor) -> Tensor:
    return torch.where(x > 0.04045, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)


def _linear_to_srgb(x: Tensor) -> Tensor:
    return torch.where(x > 0.0031308, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * x)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in 0..1 -> Lab (L in 0..100, a and b roughly -128..127).

    Shape:
        (..., 3, H, W) -> (..., 3, H, W)
    """
    lin = _srgb_to_linear(rgb.clamp(0, 1))
    m = _RGB2XYZ.to(rgb)
    xyz = torch.einsum("ij,...jhw->...ihw", m, lin) / _WHITE.to(rgb)[:, None, None]
    eps = 216 / 24389
    f = torch.where(xyz > eps, xyz.clamp(min=eps) ** (1 / 3), (24389 / 27 * xyz + 16) / 116)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Lab -> sRGB, clamped to 0..1.

    Shape:
        (..., 3, H, W) -> (..., 3, H, W)
    """
    lum, a, b = lab.unbind(-3)
    fy = (lum + 16) / 116
    fx = fy + a / 500
    fz = fy - b / 200
    f = torch.stack([fx, fy, fz], dim=-3)
    eps = 6 / 29
    xyz = torch.where(f > eps, f**3, 3 * eps**2 * (f - 4 / 29)) * _WHITE.to(lab)[:, None, None]
    lin = torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_RGB2XYZ).to(lab), xyz)
    return _linear_to_srgb(lin.clamp(0, 1)).clamp(0, 1)
