"""Harmonize any photo at any size: :func:`harmonize` and :class:`Harmonizer`.

A harmonization network works at the size it was trained at (256 x 256). A photo of any
other size goes through three steps:

1. **Downscale** the composite and its mask to the working size (antialiased bilinear).
   By default the network sees a square ``size x size`` copy (``resize="square"``, the
   shape it was trained on); ``resize="keep"`` keeps the aspect ratio instead (long side
   ``size``). The mask given to the network is binarised at 0.5.
2. **Run** the network on the small copy.
3. **Carry the colour change back** to full resolution (``method``):

   - ``"affine"`` (default): fit, at low resolution, a per-pixel affine colour transform
     ``out = A(p) rgb + b(p)`` (3 x 4 coefficients) mapping the network's input to its
     output by weighted local linear regression over a ``(2r+1)^2`` window, as a guided
     filter does, regularised towards the transform fitted over the whole foreground
     (:func:`fit_color_transform`). The coefficients are smooth, so they are upsampled
     bilinearly and applied to the *full-resolution* composite, in row strips
     (:func:`apply_color_transform`): every full-resolution detail is kept, only its colour
     changes. This is how the high-resolution harmonization methods (CDTNet, PCT-Net,
     Harmonizer, DCCF) carry a low-resolution prediction to large images; fitting the
     transform after the fact works for every model without retraining.
   - ``"upsample"``: bilinear upsampling of the low-resolution output, the baseline. The
     foreground comes back as blurred as the 256-pixel copy.

Finally the result is blended with the full-resolution mask, ``m * harmonized + (1 - m) *
composite``: soft mask edges blend softly and the background comes back bit for bit.

An image whose long side is at most ``size`` is given to the network as it is (no
resampling); pixels of a soft mask below the network's 0.5 threshold take the fitted
transform so that soft edges still blend. An empty mask returns the image unchanged with a
warning.

Example:
    >>> from PIL import Image
    >>> import harmonize
    >>> out = harmonize.harmonize(Image.open("composite.jpg"), Image.open("mask.png"), model="reinhard")
    >>> out.save("harmonized.jpg", quality=95)
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .._factory import load_model
from ..data.io import check_unit_range, image_to_tensor, load_image, load_mask
from ..data.transforms import resize_image, unit_float
from ..errors import InvalidInputError, NonFiniteError, UsageError
from ..utils.checks import check_image_mask
from ..utils.device import (
    inference_autocast,
    memory_format_of,
    preferred_memory_format,
    resolve_device,
)
from .color_transform import apply_color_transform, fit_color_transform, upsample_blend
from .convert import mask_from_any, to_uint8_hwc

__all__ = [
    "harmonize",
    "Harmonizer",
    "clean_mask",
    "mask_is_empty",
    "METHODS",
    "RESIZE_MODES",
    "MASK_SNAP",
    "EMPTY_MASK",
    "MAX_NETWORK_SIZE",
]

_logger = logging.getLogger(__name__)

#: Ways to carry the low-resolution result back to full resolution.
METHODS = ("affine", "upsample")
#: What the network sees: a square ``size x size`` copy, or the aspect ratio kept.
RESIZE_MODES = ("square", "keep")
#: The warning an empty mask gives.
EMPTY_MASK = "the mask is empty (no foreground); the image is returned unchanged"
#: Mask values this close to 0 or 1 are taken as 0 or 1 (the noise of a JPEG-compressed mask).
MASK_SNAP = 4 / 255
#: The largest working resolution of the network (``size``): 8 times the 256 the models were
#: trained at. The network's memory grows with its input (GKNet needs about 1.2 KB per pixel
#: of it: 5 GB at 2048 x 2048, over 30 GB at 5000 x 5000), so larger sizes are refused up front.
MAX_NETWORK_SIZE = 2048


def clean_mask(mask: Tensor) -> Tensor:
    """Clamp a mask to 0..1 and snap values within :data:`MASK_SNAP` of 0 or 1 to 0 or 1.

    Soft edges stay soft; the faint ringing a JPEG mask has around its edges and over its
    background does not leak the harmonized colours into the background. A uint8 mask
    (0..255) comes back as uint8, snapped the same way: ``clean_mask(m).float() / 255 ==
    clean_mask(m.float() / 255)``.
    """
    if mask.dtype == torch.uint8:
        lo, hi = _uint8_snap()
        return mask.masked_fill(mask < lo, 0).masked_fill_(mask > hi, 255)
    m = mask.clamp(0, 1)
    return torch.where(m < MASK_SNAP, 0.0, torch.where(m > 1 - MASK_SNAP, 1.0, m))


@lru_cache(maxsize=1)
def _uint8_snap() -> tuple[int, int]:
    """:func:`clean_mask`'s thresholds on the 0..255 scale: the lowest value kept, the highest not set to 255."""
    c = clean_mask(torch.arange(256, dtype=torch.float32) / 255.0)  # the float rule, on every uint8 value
    return int(torch.nonzero(c > 0)[0]), int(torch.nonzero(c < 1)[-1])


def mask_is_empty(mask: Tensor) -> bool:
    """True when a mask (float in 0..1, or uint8 in 0..255) has no foreground (after :func:`clean_mask`)."""
    snap = _uint8_snap()[0] if mask.dtype == torch.uint8 else MASK_SNAP
    return not bool((mask >= snap).any())


@lru_cache(maxsize=8)
def _cached_model(name: str, device: str) -> nn.Module:
    return _owned(load_model(name), torch.device(device))


def _owned(model: nn.Module, device: torch.device) -> nn.Module:
    """A model this module loaded: on ``device``, in eval mode and in its fastest layout there."""
    return model.to(device).eval().to(memory_format=preferred_memory_format(model, device))


def _model_size(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None)
    size = getattr(cfg, "input_size", None)
    return int(size[-1]) if size else 256


@dataclass
class _Prepared:
    """One image on its way through the network."""

    image: Tensor  # (1, 3, H, W) on the device: float32 in 0..1, or uint8 in 0..255
    mask: Tensor  # (1, 1, H, W) soft, on the device: float32 in 0..1, or uint8 in 0..255
    net_image: Tensor  # (1, 3, h, w) what the network sees
    net_mask: Tensor  # (1, 1, h, w) binary
    direct: bool  # the network runs at full resolution
    empty: bool  # nothing to harmonize


class Harmonizer:
    """A model and the recipe to apply it to images of any size.

    Args:
        model: a registered name (loaded with its pretrained weights) or an ``nn.Module``
            with ``forward(image, mask) -> image``.
        device: ``"cpu"``, ``"cuda"``, ... (None or ``"auto"``: CUDA when there is one).
        size: working resolution of the network; None takes the model's
            ``pretrained_cfg.input_size`` (256 for every model of the zoo).
        method: ``"affine"`` (a per-pixel colour transform fitted at low resolution and
            applied at full resolution) or ``"upsample"`` (bilinear upsampling of the
            low-resolution output, the baseline).
        resize: ``"square"`` (the network sees ``size x size``) or ``"keep"`` (aspect ratio
            kept, long side ``size``).
        radius: window radius of the colour transform fit, in low-resolution pixels.
        eps: regularisation of the local fit towards the global one.
        batch_size: images per network call in :meth:`harmonize_many`.
        checkpoint: weights file for a model given by name.
        amp: bfloat16 autocast for the network (its output cast to float32 and clamped): None
            on a CUDA GPU that has it, not on the CPU (float32 there, bit for bit); True on the
            CPU too (1.6x-1.7x faster where the CPU has fast bfloat16, slower on an AVX-512 Xeon
            without AMX; within about 1/255 of float32); False never.

    Example:
        >>> h = Harmonizer("reinhard")
        >>> out = h(torch.rand(3, 1500, 1000), mask)  # (3, 1500, 1000)
    """

    def __init__(
        self,
        model: str | nn.Module = "gknet",
        device: str | torch.device | None = None,
        size: int | None = None,
        method: str = "affine",
        resize: str = "square",
        radius: int = 32,
        eps: float = 1e-3,
        batch_size: int = 1,
        checkpoint: str | os.PathLike | None = None,
        amp: bool | None = None,
    ) -> None:
        if method not in METHODS:
            raise UsageError(f"method must be one of {METHODS}, got {method!r}")
        if resize not in RESIZE_MODES:
            raise UsageError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if size is not None and not 16 <= size <= MAX_NETWORK_SIZE:
            raise UsageError(
                f"size must be between 16 and {MAX_NETWORK_SIZE} (the network's memory grows with it), got {size}"
            )
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        if isinstance(model, nn.Module):
            self.model = model.to(self.device).eval()
        elif checkpoint is not None:
            self.model = _owned(load_model(model, checkpoint), self.device)
        else:
            self.model = _cached_model(model, str(self.device))
        self.size = int(size) if size is not None else _model_size(self.model)
        self.method, self.resize = method, resize
        self.radius, self.eps, self.batch_size = radius, eps, batch_size
        self.amp = amp

    def __repr__(self) -> str:
        name = getattr(self.model, "architecture", type(self.model).__name__)
        return (
            f"Harmonizer(model={name!r}, device='{self.device}', size={self.size}, "
            f"method={self.method!r}, resize={self.resize!r})"
        )

    # ----------------------------------------------------------------- steps

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) the network sees for an image of ``height x width``."""
        if max(height, width) <= self.size:
            return height, width
        if self.resize == "square":
            return self.size, self.size
        s = self.size / max(height, width)
        return max(1, round(height * s)), max(1, round(width * s))

    def _prepare(self, image: Tensor, mask: Tensor) -> _Prepared:
        """uint8 images and masks stay uint8 (the network's copy is made strip by strip); others become float32."""
        image = image.to(self.device, None if image.dtype == torch.uint8 else torch.float32)
        mask = clean_mask(mask.to(self.device, None if mask.dtype == torch.uint8 else torch.float32))
        h, w = image.shape[-2:]
        nh, nw = self.network_size(h, w)
        direct = (nh, nw) == (h, w)
        peak = float(mask.max())
        if direct:
            net_image, soft = unit_float(image), unit_float(mask)
        else:
            net_image, soft = resize_image(image, (nh, nw)), resize_image(mask, (nh, nw)).clamp(0, 1)
        # Binarise at 0.5, or at half the peak for a foreground too faint or small to reach it.
        thr = 0.5 * min(1.0, float(soft.max()))
        net_mask = ((soft >= thr) & (soft > 0)).to(torch.float32)
        return _Prepared(image, mask, net_image, net_mask, direct, empty=peak <= 0)

    @torch.no_grad()
    def _network(self, images: Tensor, masks: Tensor) -> Tensor:
        fmt = memory_format_of(self.model)  # a model passed in keeps the layout it came in
        images, masks = images.contiguous(memory_format=fmt), masks.contiguous(memory_format=fmt)
        with inference_autocast(self.device, self.amp):
            out = self.model(images, masks)
        out = out.float().contiguous()
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError(
                f"{self!r}: the model output NaN or infinite values (broken weights?); no result is returned"
            )
        return out.clamp(0, 1)

    @torch.no_grad()
    def _carry_back(self, p: _Prepared, pred: Tensor) -> Tensor:
        """The full-resolution result, of the prepared image's dtype (uint8: rounded, background bit for bit)."""
        if p.direct:  # at most MAX_NETWORK_SIZE squared: computed in float
            image, mask = p.net_image, unit_float(p.mask)
            soft_edge = (mask > 0) & (p.net_mask == 0)
            if bool(soft_edge.any()):  # soft-mask pixels below the threshold: the fitted transform
                coeffs = fit_color_transform(p.net_image, pred, p.net_mask, self.radius, self.eps)
                pred = torch.where(soft_edge, apply_color_transform(image, coeffs), pred)
            out = torch.where(mask > 0, pred * mask + image * (1 - mask), image)
            if p.image.dtype == torch.uint8:
                out = torch.where(mask > 0, out.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8), p.image)
            return out
        if self.method == "upsample":
            return upsample_blend(p.image, pred, p.mask)
        coeffs = fit_color_transform(p.net_image, pred, p.net_mask, self.radius, self.eps)
        return apply_color_transform(p.image, coeffs, p.mask)

    # ----------------------------------------------------------------- calls

    def harmonize_many(self, images: Sequence[Tensor], masks: Sequence[Tensor]) -> list[Tensor]:
        """Harmonize images of any sizes; the network runs on up to ``batch_size`` at once.

        Args:
            images: (3, H, W) tensors, each its own size: floating point in 0..1, or uint8
                in 0..255. A uint8 image is never converted whole to float: the network's
                copy and the full-resolution result are made a strip of rows at a time, so
                a 12-megapixel photo needs about its own size again in memory.
            masks: (1, H, W) or (H, W) masks of the same sizes (soft edges kept): floating
                point in 0..1, uint8 in 0..255 (or 0/1), bool.

        Returns:
            (3, H, W) tensors on the images' devices, of the images' dtypes (uint8 in, uint8
            out: the float result rounded); where a mask is 0 the image comes back bit for
            bit. An empty mask gives back its image (a copy) and a warning.

        Raises:
            InvalidInputError: an image or mask with NaN or infinite values, or values outside
                0..1 (give or take :data:`~harmonize.data.io.RANGE_TOLERANCE`).
            NonFiniteError: the model output NaN or infinite values.
        """
        if len(images) != len(masks):
            raise InvalidInputError(f"got {len(images)} images and {len(masks)} masks")
        prepared = []
        for i, (img, m) in enumerate(zip(images, masks)):
            img, m = _check_pair(img, m, i)
            prepared.append(self._prepare(img[None], m[None]))
        preds: list[Tensor | None] = [None] * len(prepared)
        # Images whose network input has the same shape share a network call.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            if p.empty:
                warnings.warn(EMPTY_MASK, UserWarning, stacklevel=2)
            else:
                groups.setdefault(tuple(p.net_image.shape[-2:]), []).append(i)
        for idx in groups.values():
            for k in range(0, len(idx), self.batch_size):
                chunk = idx[k : k + self.batch_size]
                out = self._network(
                    torch.cat([prepared[i].net_image for i in chunk]), torch.cat([prepared[i].net_mask for i in chunk])
                )
                for j, i in enumerate(chunk):
                    preds[i] = out[j : j + 1]
        results = []
        for img, p, pred in zip(images, prepared, preds):
            out = p.image.clone() if pred is None else self._carry_back(p, pred)
            out = out[0].to(img.device, img.dtype)
            if img.is_floating_point() and img.dtype != torch.float32:  # computed in float32: restore the background
                out = torch.where(p.mask[0].to(img.device) == 0, img, out)
            results.append(out)
        return results

    def __call__(self, image: Tensor, mask: Tensor) -> Tensor:
        """Harmonize ``image`` (3, H, W) or (B, 3, H, W) in 0..1 with its mask (soft edges kept).

        Shape:
            image: (3, H, W) or (B, 3, H, W); mask: (H, W), (1, H, W) or (B, 1, H, W)
            -> the shape of image
        """
        if image.dim() == 3:
            return self.harmonize_many([image], [mask if mask.dim() == 3 else mask.reshape(1, *mask.shape[-2:])])[0]
        if image.dim() != 4:
            raise InvalidInputError(f"image must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
        if mask.dim() == 4 and mask.shape[0] == image.shape[0]:
            masks = list(mask)
        elif mask.dim() in (2, 3) or (mask.dim() == 4 and mask.shape[0] == 1):
            masks = [mask.reshape(1, *mask.shape[-2:])] * image.shape[0]  # one mask for all
        else:
            raise InvalidInputError(f"mask {tuple(mask.shape)} does not match image {tuple(image.shape)}")
        return torch.stack(self.harmonize_many(list(image), masks))


def _check_pair(image: Tensor, mask: Tensor, index: int = 0) -> tuple[Tensor, Tensor]:
    """Check one (3, H, W) image and its (H, W) or (1, H, W) mask; the mask comes back as (1, H, W),
    uint8 in 0..255 (a 0/1 uint8 mask scaled) or float.

    Values are checked too: a float image or mask finite, and in 0..1 (never rescaled on a
    guess); uint8 needs no check.
    """
    if isinstance(mask, Tensor) and mask.dim() == 2:
        mask = mask[None]
    if isinstance(mask, Tensor) and mask.dtype == torch.uint8:
        mask = mask * 255 if int(mask.max()) == 1 else mask  # a 0/1 mask
    elif isinstance(mask, Tensor) and not mask.is_floating_point():
        mask = mask.float()
    check_image_mask(image, mask, name=f"image {index}", batched=False, floating=False)
    if not image.is_floating_point() and image.dtype != torch.uint8:
        raise InvalidInputError(f"image {index} must be floating point in 0..1 or uint8 in 0..255, got {image.dtype}")
    if image.is_floating_point():
        check_unit_range(image, f"image {index}")
    if mask.is_floating_point():
        check_unit_range(mask, f"mask of image {index}")
    return image, mask


# --------------------------------------------------------------------------- python twin


def harmonize(
    image: Any,
    mask: Any,
    model: str | nn.Module = "gknet",
    device: str | torch.device | None = None,
    size: int | None = None,
    method: str = "affine",
    **kwargs: Any,
) -> Any:
    """Harmonize a composite with its mask, at full resolution; returns the kind it is given.

    Args:
        image: the composite: a path (read as ``harmonize run`` reads it: EXIF orientation
            applied), a PIL image (RGB, RGBA, L, 16-bit ``I;16``...), a numpy array
            (H, W, 3), (H, W, 4) or (H, W) of uint8, uint16 or float in 0..1, or a tensor
            (3, H, W) or (B, 3, H, W), floating point in 0..1 or uint8 in 0..255. Float
            values outside 0..1 (give or take 0.01) or not finite are an error, never
            rescaled on a guess.
        mask: the foreground to harmonize, same height and width: a path, PIL, numpy or tensor;
            0/1 or 0/255 (integers or bool), float in 0..1, grey or RGB; soft edges blend
            softly.
        model: a registered name (loaded once with its pretrained weights, then cached) or
            an ``nn.Module`` with ``forward(image, mask) -> image``.
        device: ``"cpu"``, ``"cuda"``... (None: CUDA when there is one).
        size: the network's working resolution (None: the model's input size, 256).
        method: ``"affine"`` or ``"upsample"``; see :class:`Harmonizer`.
        **kwargs: further :class:`Harmonizer` arguments (``resize``, ``radius``, ``eps``).

    Returns:
        A path in: an RGB PIL image, the pixels ``harmonize run`` writes (save it with
        ``.save(...)``). PIL in: an RGB PIL image (RGBA when the input has alpha, which is carried over
        unchanged). numpy in: an array of the input's dtype, (H, W, 3), or (H, W, 4) with
        the alpha carried over. Tensor in: a tensor of the input's shape, dtype (uint8 in,
        uint8 out; float16 in, float16 out) and device. Where the mask is 0 the image comes
        back bit for bit. An empty mask returns the image unchanged (with a warning).

    Raises:
        ImageReadError: a path that is missing or not a readable image.
        InvalidInputError: values outside the ranges above, NaN or infinite values, an
            image tensor of another dtype, shapes that do not fit.
        NonFiniteError: the model output NaN or infinite values.

    Example:
        >>> out = harmonize(np.asarray(Image.open("comp.jpg")), np.asarray(Image.open("mask.png")), model="reinhard")
    """
    if isinstance(mask, (str, os.PathLike)):
        mask = load_mask(mask, threshold=None, uint8=True)
    x = load_image(image, uint8=True) if isinstance(image, (str, os.PathLike)) else None
    h = Harmonizer(model, device=device, size=size, method=method, **kwargs)
    m = mask_from_any(mask)
    if x is not None:
        return Image.fromarray(to_uint8_hwc(h(x, m)))
    if isinstance(image, Tensor):
        if image.dim() not in (3, 4):
            raise InvalidInputError(f"image tensor must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
        x = image.detach()
        if x.is_floating_point():
            return h(x, m)
        if x.dtype != torch.uint8:
            raise InvalidInputError(f"image tensor must be floating point in 0..1 or uint8 in 0..255, got {x.dtype}")
        return h(x, m)  # uint8 all the way: the float result rounded, the background bit for bit
    if isinstance(image, Image.Image):
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
        out = h(image_to_tensor(image), m)
        res = Image.fromarray(to_uint8_hwc(out))
        if alpha is not None:
            res.putalpha(alpha)
        return res
    if isinstance(image, np.ndarray):
        a = image
        x = image_to_tensor(a)
        out = h(x, m).permute(1, 2, 0).numpy()
        if a.dtype == np.uint8:
            res = np.rint(out * 255.0).clip(0, 255).astype(np.uint8)
        elif a.dtype == np.uint16:
            res = np.rint(out * 65535.0).clip(0, 65535).astype(np.uint16)
        else:
            res = out.astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32)
            if res.dtype == a.dtype and m.dim() == 3:  # computed in float32: restore the background
                rgb = a[..., None] if a.ndim == 2 else a
                rgb = rgb[..., :3] if rgb.shape[2] >= 3 else np.repeat(rgb, 3, axis=2)
                res = np.where((clean_mask(m)[0] == 0).numpy()[..., None], rgb, res)
        if a.ndim == 3 and a.shape[2] == 4:
            res = np.concatenate([res, a[..., 3:]], axis=2)
        return res
    raise TypeError(f"image must be a path, a PIL image, a numpy array or a tensor, got {type(image).__name__}")
