"""Compose, then harmonize: a cutout (an image with transparency) pasted onto a background.

People rarely hold a finished composite and its mask; they hold a cutout (a PNG whose
alpha channel says where the object is) and a background photo. :func:`paste` places the
cutout on the background and returns the composite and its mask (the cutout's alpha,
soft edges kept); :func:`compose` does that and harmonizes the composite at full
resolution with :class:`~harmonize.highres.Harmonizer`.

**Placement.** ``at=(x, y)`` is a point of the background in pixels (x to the right, y
down from the top-left corner); ``anchor`` names the point of the (scaled) cutout that is
put there: ``"center"`` (default), ``"top-left"``, ``"top"``, ``"top-right"``,
``"left"``, ``"right"``, ``"bottom-left"``, ``"bottom"``, ``"bottom-right"``. Without
``at`` the anchor goes to the same point of the background: by default the cutout is
centred, ``anchor="bottom"`` stands it on the middle of the bottom edge. The cutout may
hang over the background's edges (it is cropped), but some of its opaque pixels must land
on the background. ``scale`` resizes the cutout first (antialiased, with premultiplied
alpha so that its edges take no dark or light fringe).

The composite is ``alpha * cutout + (1 - alpha) * background``: every pixel outside the
cutout's alpha is the background's, bit for bit, and stays so after harmonization.

Example:
    >>> from PIL import Image
    >>> import harmonize
    >>> out = harmonize.compose("person.png", "beach.jpg", at=(800, 1200), anchor="bottom", scale=0.5)
    >>> out.save("harmonized.jpg", quality=95)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .data.io import _open, _read_png16, image_to_tensor, load_image, to_uint8_hwc
from .errors import InvalidInputError, UsageError
from .highres import Harmonizer

__all__ = ["compose", "paste", "placement", "cutout_to_tensor", "Placement", "ANCHORS"]

#: anchor name -> its point of the cutout, as fractions of (width, height)
ANCHORS = {
    "center": (0.5, 0.5),
    "top-left": (0.0, 0.0),
    "top": (0.5, 0.0),
    "top-right": (1.0, 0.0),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "bottom-left": (0.0, 1.0),
    "bottom": (0.5, 1.0),
    "bottom-right": (1.0, 1.0),
}
#: A scaled cutout may have at most this many times the background's pixels.
MAX_SCALED_AREA = 16


@dataclass(frozen=True)
class Placement:
    """Where the scaled cutout goes: its top-left corner (x, y) on the background and its size."""

    x: int
    y: int
    width: int
    height: int


def _round(v: float) -> int:
    return math.floor(v + 0.5)  # half up, as a browser's Math.round: the web page previews the same pixels


def placement(
    cutout_size: tuple[int, int],
    background_size: tuple[int, int],
    at: tuple[float, float] | None = None,
    scale: float = 1.0,
    anchor: str = "center",
) -> Placement:
    """The pixel rectangle a cutout of ``(width, height)`` takes on a background of ``(width, height)``.

    See the module's docstring for ``at``, ``scale`` and ``anchor``. The rectangle may
    reach past the background's edges; :func:`paste` crops it.
    """
    if anchor not in ANCHORS:
        raise UsageError(f"anchor must be one of {', '.join(ANCHORS)}; got {anchor!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UsageError(f"scale must be a positive number, got {scale!r}")
    (cw, ch), (bw, bh) = cutout_size, background_size
    w, h = max(1, _round(cw * scale)), max(1, _round(ch * scale))
    if w * h > MAX_SCALED_AREA * bw * bh and w * h > 4096 * 4096:
        raise UsageError(f"scale {scale:g} makes the {cw}x{ch} cutout {w}x{h}, far larger than the {bw}x{bh} background")
    fx, fy = ANCHORS[anchor]
    if at is None:
        x, y = fx * bw, fy * bh
    else:
        if len(at) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in at):
            raise UsageError(f"at must be two numbers (x, y), got {at!r}")
        x, y = at
    return Placement(_round(x - fx * w), _round(y - fy * h), w, h)


# --------------------------------------------------------------------------- inputs


def _name(obj: Any, what: str) -> str:
    return str(obj) if isinstance(obj, (str, os.PathLike)) else what


def _pil_has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def cutout_to_tensor(cutout: Any, name: str | None = None) -> Tensor:
    """A cutout -> (4, H, W) float32 in 0..1: RGB and alpha (not premultiplied).

    Args:
        cutout: a file path, a PIL image with transparency (RGBA, LA, or a palette or RGB
            image with a transparent colour), a numpy array (H, W, 4) or (H, W, 2) (grey
            and alpha) of uint8, uint16 or float in 0..1, or a tensor (4, H, W) in 0..1
            (uint8: 0..255).
        name: what error messages call it (default: the path, or "the cutout").

    Raises:
        InvalidInputError: the cutout has no alpha channel.
        ImageReadError: a file that is missing or cannot be read.
    """
    name = name or _name(cutout, "the cutout")
    no_alpha = (
        f"{name} has no transparency (alpha channel): a cutout is an image whose alpha says where the "
        "object is, such as a PNG saved with a transparent background (a composite with a separate "
        "mask is harmonized as it is, without pasting)"
    )
    if isinstance(cutout, (str, os.PathLike)):
        wide = _read_png16(cutout)  # a 16-bit RGBA PNG, at full precision
        if wide is not None:
            if wide.shape[2] != 4:
                raise InvalidInputError(no_alpha)
            cutout = wide
        else:
            cutout = _open(cutout)
    if isinstance(cutout, Image.Image):
        if not _pil_has_alpha(cutout):
            raise InvalidInputError(no_alpha)
        a = np.asarray(cutout.convert("RGBA"), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    if isinstance(cutout, np.ndarray):
        if cutout.ndim != 3 or cutout.shape[2] not in (2, 4):
            raise InvalidInputError(f"{no_alpha}; got an array of shape {cutout.shape}, expected (H, W, 4) or (H, W, 2)")
        if cutout.dtype == np.uint8:
            a = cutout.astype(np.float32) / 255.0
        elif cutout.dtype == np.uint16:
            a = cutout.astype(np.float32) / 65535.0
        elif np.issubdtype(cutout.dtype, np.floating):
            a = cutout.astype(np.float32).clip(0, 1)
        else:
            raise InvalidInputError(f"{name}: arrays of {cutout.dtype} are not images; use uint8, uint16 or float in 0..1")
        if a.shape[2] == 2:
            a = np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    if isinstance(cutout, Tensor):
        if cutout.dim() != 3 or cutout.shape[0] != 4:
            raise InvalidInputError(f"{no_alpha}; got a tensor of shape {tuple(cutout.shape)}, expected (4, H, W)")
        t = cutout.detach().cpu()
        return (t.float() if t.is_floating_point() else t.float() / 255.0).clamp(0, 1)
    raise TypeError(f"cutout must be a path, a PIL image, a numpy array or a tensor, got {type(cutout).__name__}")


def _background_to_tensor(background: Any) -> Tensor:
    if isinstance(background, (str, os.PathLike)):
        return load_image(background)
    if isinstance(background, (Image.Image, np.ndarray)):
        return image_to_tensor(background)
    if isinstance(background, Tensor):
        if background.dim() != 3 or background.shape[0] != 3:
            raise InvalidInputError(f"background tensor must be (3, H, W), got {tuple(background.shape)}")
        t = background.detach()
        return t.float() if t.is_floating_point() else t.float() / 255.0
    raise TypeError(f"background must be a path, a PIL image, a numpy array or a tensor, got {type(background).__name__}")


# --------------------------------------------------------------------------- paste


def _resize_premultiplied(rgba: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize (4, h, w) RGBA to ``size`` (H, W); returns premultiplied (4, H, W): RGB * alpha and alpha."""
    pre = torch.cat([rgba[:3] * rgba[3:], rgba[3:]])
    if tuple(pre.shape[-2:]) == tuple(size):
        return pre
    # Bilinear with antialiasing: non-negative weights, so a pixel whose neighbours are all
    # transparent stays exactly 0 and the background around the cutout stays untouched.
    out = F.interpolate(pre[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    out = out.clamp_(0, 1)
    out[:3] = torch.minimum(out[:3], out[3:])  # premultiplied colour never exceeds its alpha
    return out


def paste(
    cutout: Any,
    background: Any,
    at: tuple[float, float] | None = None,
    scale: float = 1.0,
    anchor: str = "center",
    *,
    name: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Paste a cutout onto a background: the composite and its mask, both at the background's size.

    Args:
        cutout: an image with transparency (see :func:`cutout_to_tensor`).
        background: a path, PIL image, numpy array (H, W, 3) or tensor (3, H, W) in 0..1.
        at: the point (x, y) of the background, in pixels, where the cutout's ``anchor`` goes;
            None: the same anchor point of the background (centred by default).
        scale: resize factor of the cutout (1: its own pixels).
        anchor: which point of the cutout ``at`` names (see :data:`ANCHORS`).
        name: what error messages call the cutout (default: its path, or "the cutout").

    Returns:
        ``(composite, mask)``: (3, H, W) and (1, H, W) float32 tensors in 0..1. The mask is
        the cutout's alpha (soft edges kept) placed on the background, 0 elsewhere; the
        composite equals the background bit for bit wherever the mask is 0.

    Raises:
        InvalidInputError: the cutout has no alpha, is fully transparent, or lands entirely
            off the background.
        UsageError: a bad ``anchor``, ``scale`` or ``at``.

    Shape:
        background (3, H, W) -> composite (3, H, W), mask (1, H, W)
    """
    name = name or _name(cutout, "the cutout")
    rgba = cutout_to_tensor(cutout, name)
    if not bool((rgba[3] > 0).any()):
        raise InvalidInputError(f"{name} is fully transparent: its alpha channel is 0 everywhere, so there is nothing to paste")
    bg = _background_to_tensor(background)
    bh, bw = bg.shape[-2:]
    p = placement((rgba.shape[-1], rgba.shape[-2]), (bw, bh), at, scale, anchor)
    where = f"a {p.width}x{p.height} cutout with its top-left corner at ({p.x}, {p.y})"
    x0, y0, x1, y1 = max(p.x, 0), max(p.y, 0), min(p.x + p.width, bw), min(p.y + p.height, bh)
    if x0 >= x1 or y0 >= y1:
        raise InvalidInputError(f"{name} lands entirely off the {bw}x{bh} background ({where}); check the placement (at, anchor, scale)")
    pre = _resize_premultiplied(rgba, (p.height, p.width)).to(bg.device)
    pre = pre[:, y0 - p.y : y1 - p.y, x0 - p.x : x1 - p.x]
    if not bool((pre[3] > 0).any()):
        raise InvalidInputError(f"no opaque pixel of {name} lands on the {bw}x{bh} background ({where}); check the placement (at, anchor, scale)")
    composite = bg.clone()
    mask = torch.zeros((1, bh, bw), dtype=torch.float32, device=bg.device)
    region = composite[:, y0:y1, x0:x1]
    alpha = pre[3:]
    # Where alpha is 0 the background is kept as it is (not recomputed), so it stays bit for bit.
    composite[:, y0:y1, x0:x1] = torch.where(alpha > 0, pre[:3] + (1 - alpha) * region, region)
    mask[:, y0:y1, x0:x1] = alpha
    return composite, mask


# --------------------------------------------------------------------------- compose


def _like(result: Tensor, background: Any) -> Any:
    """The harmonized (3, H, W) tensor as the kind of thing the background was."""
    if isinstance(background, Tensor):
        return result.to(background.device, background.dtype) if background.is_floating_point() else result
    if isinstance(background, np.ndarray):
        out = result.permute(1, 2, 0).cpu().numpy()
        if background.dtype == np.uint8:
            return np.rint(out * 255.0).clip(0, 255).astype(np.uint8)
        if background.dtype == np.uint16:
            return np.rint(out * 65535.0).clip(0, 65535).astype(np.uint16)
        return out.astype(background.dtype if np.issubdtype(background.dtype, np.floating) else np.float32)
    return Image.fromarray(to_uint8_hwc(result))  # a path or a PIL image: an RGB PIL image


def compose(
    cutout: Any,
    background: Any,
    at: tuple[float, float] | None = None,
    scale: float = 1.0,
    anchor: str = "center",
    model: str | nn.Module | Harmonizer = "gknet",
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> Any:
    """Paste a cutout onto a background, then harmonize it at full resolution.

    Args:
        cutout: an image with transparency: a path, a PIL image (RGBA, LA, ...), a numpy
            array (H, W, 4) or a tensor (4, H, W); its alpha is the mask (soft edges stay soft).
        background: a path, PIL image, numpy array (H, W, 3) or tensor (3, H, W) in 0..1.
        at: where the cutout goes, ``(x, y)`` in background pixels (see :func:`paste`);
            None: centred (or the background's own ``anchor`` point).
        scale: resize factor of the cutout.
        anchor: the point of the cutout that ``at`` names: ``"center"``, ``"top-left"``,
            ``"bottom"``, ... (:data:`ANCHORS`).
        model: a registered name (loaded once with its weights, then cached), an
            ``nn.Module``, or a ready :class:`~harmonize.highres.Harmonizer`.
        device: ``"cpu"``, ``"cuda"``... (None: CUDA when there is one); ignored for a Harmonizer.
        **kwargs: further :class:`~harmonize.highres.Harmonizer` arguments (``size``,
            ``method``, ``resize``...).

    Returns:
        The harmonized image at the background's size, of the background's kind: a PIL RGB
        image for a path or a PIL image, a numpy array of its dtype, or a tensor. Pixels
        outside the cutout's alpha are the background's.

    Example:
        >>> out = compose("cutout.png", "background.jpg", at=(120, 300), anchor="bottom", model="reinhard")
    """
    composite, mask = paste(cutout, background, at=at, scale=scale, anchor=anchor)
    if isinstance(model, Harmonizer):
        if kwargs:
            raise UsageError(f"Harmonizer arguments ({', '.join(kwargs)}) go to the Harmonizer, not to compose()")
        harmonizer = model
    else:
        harmonizer = Harmonizer(model, device=device, **kwargs)
    result = harmonizer(composite, mask)
    return _like(result, background)

