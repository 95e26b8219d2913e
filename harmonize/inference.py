"""Harmonize any photo at any size: :func:`harmonize`, :class:`Harmonizer` and ``harmonize run``.

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

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from .color_transform import apply_color_transform, fit_color_transform, upsample_blend
from .data.io import ImageReadError, image_to_tensor, load_image, load_mask, mask_to_tensor
from .data.transforms import resize_image

__all__ = [
    "harmonize",
    "Harmonizer",
    "fit_color_transform",
    "apply_color_transform",
    "upsample_blend",
    "save_image",
    "clean_mask",
    "METHODS",
    "RESIZE_MODES",
    "IMAGE_EXTENSIONS",
]

_logger = logging.getLogger(__name__)

#: Ways to carry the low-resolution result back to full resolution.
METHODS = ("affine", "upsample")
#: What the network sees: a square ``size x size`` copy, or the aspect ratio kept.
RESIZE_MODES = ("square", "keep")
#: File extensions read as images in folder mode, and written by extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
_EMPTY_MASK = "the mask is empty (no foreground); the image is returned unchanged"
#: Mask values this close to 0 or 1 are taken as 0 or 1 (the noise of a JPEG-compressed mask).
MASK_SNAP = 4 / 255


def clean_mask(mask: Tensor) -> Tensor:
    """Clamp a mask to 0..1 and snap values within :data:`MASK_SNAP` of 0 or 1 to 0 or 1.

    Soft edges stay soft; the faint ringing a JPEG mask has around its edges and over its
    background does not leak the harmonized colours into the background.
    """
    m = mask.clamp(0, 1)
    return torch.where(m < MASK_SNAP, 0.0, torch.where(m > 1 - MASK_SNAP, 1.0, m))


def mask_is_empty(mask: Tensor) -> bool:
    """True when a mask has no foreground (after :func:`clean_mask`)."""
    return bool((mask >= MASK_SNAP).logical_not().all())


# --------------------------------------------------------------------------- models


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """None or ``"auto"``: CUDA when there is one, else the CPU. A ValueError for a device that is not there."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available on this machine")
    return d


def load_model(
    name: str, checkpoint: str | os.PathLike | None = None, model_args: dict[str, Any] | None = None
) -> nn.Module:
    """A registered model ready to harmonize: its pretrained weights, or ``checkpoint``'s.

    ``model_args`` (only with ``checkpoint``) are the constructor arguments the weights were
    trained with, such as ``kernel_norm``, which no weight shape reveals. Raises a ValueError
    saying what to do when the model needs weights it does not have.
    """
    from ._factory import create_model
    from ._registry import is_model

    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
        return create_model(name, pretrained=False, checkpoint_path=str(checkpoint), **(model_args or {}))
    if model_args:
        raise ValueError("model_args go with a checkpoint (a tag or folder brings its own)")
    if not name.startswith(("hf-hub:", "local-dir:")) and not is_model(name):
        raise ValueError(f"unknown model {name!r}; see `harmonize list`")
    try:
        return create_model(name, pretrained=True)
    except ValueError as e:
        if "no pretrained weights" not in str(e) and "has no weights" not in str(e):
            raise
        raise ValueError(
            f"{name} has no pretrained weights yet: use a model that has (`harmonize list --pretrained`), "
            "a weights file (checkpoint=... / --checkpoint FILE), or a reference without weights "
            "('reinhard', 'composite')"
        ) from None


@lru_cache(maxsize=8)
def _cached_model(name: str, device: str) -> nn.Module:
    return load_model(name).to(device).eval()


def _model_size(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None)
    size = getattr(cfg, "input_size", None)
    return int(size[-1]) if size else 256


# --------------------------------------------------------------------------- harmonizer


@dataclass
class _Prepared:
    """One image on its way through the network."""

    image: Tensor  # (1, 3, H, W) on the device
    mask: Tensor  # (1, 1, H, W) soft, on the device
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
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if size is not None and size < 16:
            raise ValueError(f"size must be at least 16, got {size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = _resolve_device(device)
        if isinstance(model, nn.Module):
            self.model = model.to(self.device).eval()
        elif checkpoint is not None:
            self.model = load_model(model, checkpoint).to(self.device).eval()
        else:
            self.model = _cached_model(model, str(self.device))
        self.size = int(size) if size is not None else _model_size(self.model)
        self.method, self.resize = method, resize
        self.radius, self.eps, self.batch_size = radius, eps, batch_size

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
        image = image.to(self.device, torch.float32)
        mask = clean_mask(mask.to(self.device, torch.float32))
        h, w = image.shape[-2:]
        nh, nw = self.network_size(h, w)
        direct = (nh, nw) == (h, w)
        peak = float(mask.max())
        if direct:
            net_image, soft = image, mask
        else:
            net_image, soft = resize_image(image, (nh, nw)), resize_image(mask, (nh, nw)).clamp(0, 1)
        # Binarise at 0.5, or at half the peak for a foreground too faint or small to reach it.
        thr = 0.5 * min(1.0, float(soft.max()))
        net_mask = ((soft >= thr) & (soft > 0)).to(torch.float32)
        return _Prepared(image, mask, net_image, net_mask, direct, empty=peak <= 0)

    @torch.no_grad()
    def _network(self, images: Tensor, masks: Tensor) -> Tensor:
        return self.model(images, masks).float().clamp(0, 1)

    @torch.no_grad()
    def _carry_back(self, p: _Prepared, pred: Tensor) -> Tensor:
        if p.direct:
            soft_edge = (p.mask > 0) & (p.net_mask == 0)
            if bool(soft_edge.any()):  # soft-mask pixels below the threshold: the fitted transform
                coeffs = fit_color_transform(p.net_image, pred, p.net_mask, self.radius, self.eps)
                pred = torch.where(soft_edge, apply_color_transform(p.image, coeffs), pred)
            return pred * p.mask + p.image * (1 - p.mask)
        if self.method == "upsample":
            return upsample_blend(p.image, pred, p.mask)
        coeffs = fit_color_transform(p.net_image, pred, p.net_mask, self.radius, self.eps)
        return apply_color_transform(p.image, coeffs, p.mask)

    # ----------------------------------------------------------------- calls

    def harmonize_many(self, images: Sequence[Tensor], masks: Sequence[Tensor]) -> list[Tensor]:
        """Harmonize images of any sizes; the network runs on up to ``batch_size`` at once.

        Args:
            images: (3, H, W) tensors in 0..1, each its own size.
            masks: (1, H, W) or (H, W) masks in 0..1 of the same sizes (soft edges kept).

        Returns:
            (3, H, W) tensors on the images' devices. An empty mask gives back its image
            (a copy) and a warning.
        """
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images and {len(masks)} masks")
        prepared = []
        for i, (img, m) in enumerate(zip(images, masks)):
            img, m = _check_pair(img, m, i)
            prepared.append(self._prepare(img[None], m[None]))
        preds: list[Tensor | None] = [None] * len(prepared)
        # Images whose network input has the same shape share a network call.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            if p.empty:
                warnings.warn(_EMPTY_MASK, UserWarning, stacklevel=2)
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
            if img.dtype != torch.float32:  # computed in float32: restore the background exactly
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
            raise ValueError(f"image must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
        if mask.dim() == 4 and mask.shape[0] == image.shape[0]:
            masks = list(mask)
        elif mask.dim() in (2, 3) or (mask.dim() == 4 and mask.shape[0] == 1):
            masks = [mask.reshape(1, *mask.shape[-2:])] * image.shape[0]  # one mask for all
        else:
            raise ValueError(f"mask {tuple(mask.shape)} does not match image {tuple(image.shape)}")
        return torch.stack(self.harmonize_many(list(image), masks))


def _check_pair(image: Tensor, mask: Tensor, index: int = 0) -> tuple[Tensor, Tensor]:
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image {index} must be a (3, H, W) tensor in 0..1, got {shape}")
    if not image.is_floating_point():
        raise ValueError(f"image {index} must be floating point in 0..1, got {image.dtype}")
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or mask.shape[0] != 1:
        raise ValueError(f"mask {index} must be (H, W) or (1, H, W), got {tuple(mask.shape)}")
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"mask {index} is {mask.shape[-1]}x{mask.shape[-2]} (WxH) but its image is "
            f"{image.shape[-1]}x{image.shape[-2]}: they must be the same size"
        )
    if not mask.is_floating_point():
        mask = mask.float() / (255.0 if mask.dtype == torch.uint8 and int(mask.max()) > 1 else 1.0)
    return image, mask


# --------------------------------------------------------------------------- python twin


def _mask_from_any(mask: Any) -> Tensor:
    """A mask of any kind -> float tensor (1, H, W), or (B, 1, H, W) for a batch of masks."""
    if isinstance(mask, Tensor):
        m = mask.detach()
        if m.dtype == torch.bool:
            m = m.float()
        elif not m.is_floating_point():
            m = m.float() / (255.0 if float(m.max()) > 1 else 1.0)
        if m.dim() == 2:
            m = m[None]
        if m.dim() == 3 and m.shape[0] in (3, 4):  # an RGB(A) mask: channels averaged
            m = m[:3].mean(0, keepdim=True)
        if m.dim() == 4 and m.shape[0] == 1:
            m = m[0]
        return m
    if isinstance(mask, (Image.Image, np.ndarray)):
        return mask_to_tensor(mask, threshold=None)
    raise TypeError(f"mask must be a PIL image, a numpy array or a tensor, got {type(mask).__name__}")


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
        image: the composite: a PIL image (RGB, RGBA, L, 16-bit ``I;16``...), a numpy array
            (H, W, 3), (H, W, 4) or (H, W) of uint8, uint16 or float in 0..1, or a tensor
            (3, H, W) or (B, 3, H, W) in 0..1.
        mask: the foreground to harmonize, same height and width: PIL, numpy or tensor;
            0/1 or 0/255, grey or RGB; soft edges blend softly.
        model: a registered name (loaded once with its pretrained weights, then cached) or
            an ``nn.Module`` with ``forward(image, mask) -> image``.
        device: ``"cpu"``, ``"cuda"``... (None: CUDA when there is one).
        size: the network's working resolution (None: the model's input size, 256).
        method: ``"affine"`` or ``"upsample"``; see :class:`Harmonizer`.
        **kwargs: further :class:`Harmonizer` arguments (``resize``, ``radius``, ``eps``).

    Returns:
        PIL in: an RGB PIL image (RGBA when the input has alpha, which is carried over
        unchanged). numpy in: an array of the input's dtype, (H, W, 3), or (H, W, 4) with
        the alpha carried over. Tensor in: a tensor of the input's shape, dtype and device.
        An empty mask returns the image unchanged (with a warning).

    Example:
        >>> out = harmonize(np.asarray(Image.open("comp.jpg")), np.asarray(Image.open("mask.png")), model="reinhard")
    """
    h = Harmonizer(model, device=device, size=size, method=method, **kwargs)
    m = _mask_from_any(mask)
    if isinstance(image, Tensor):
        if image.dim() not in (3, 4):
            raise ValueError(f"image tensor must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
        x = image.detach()
        out = h(x if x.is_floating_point() else x.float() / 255.0, m)
        return out.to(image.dtype) if image.is_floating_point() else out
    if isinstance(image, Image.Image):
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
        out = h(image_to_tensor(image), m)
        res = Image.fromarray(_to_uint8_hwc(out))
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
    raise TypeError(f"image must be a PIL image, a numpy array or a tensor, got {type(image).__name__}")


# --------------------------------------------------------------------------- files


def _to_uint8_hwc(x: Tensor) -> np.ndarray:
    """(3, H, W) in 0..1 -> (H, W, 3) uint8."""
    return x.detach().float().cpu().mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def output_format(path: str | os.PathLike) -> str:
    """The Pillow format written for ``path``'s extension, or a ValueError naming it."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"{path}: unknown output format {suffix or '(no extension)'!r}; use .jpg, .png, .webp or .tif")
    return _FORMATS[suffix]


def save_image(
    image: Tensor, path: str | os.PathLike, quality: int = 95, icc_profile: bytes | None = None
) -> Path:
    """Write a (3, H, W) image in 0..1 as 8-bit RGB, atomically; the format follows the extension.

    The file is written under a temporary name in the same folder and renamed into place
    (``os.replace``): a reader never sees a half-written file, and a failure leaves no file.
    JPEG and WebP are written at ``quality``; ``icc_profile`` (the input's) is embedded.
    """
    path = Path(path)
    fmt = output_format(path)
    arr = _to_uint8_hwc(image)
    opts: dict[str, Any] = {}
    if fmt in ("JPEG", "WEBP"):
        opts["quality"] = quality
    if icc_profile:
        opts["icc_profile"] = icc_profile
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format=fmt, **opts)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temporary file into place (atomic on one file system).

    The file gets the permissions of a newly created one (``mkstemp`` makes it 0600).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _header(path: Path) -> tuple[tuple[int, int], tuple[int, int], bytes | None]:
    """(width, height) as displayed (EXIF orientation applied), as stored, and the ICC profile."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    try:
        with Image.open(path) as im:
            stored = im.size
            orientation = im.getexif().get(0x0112, 1)
            icc = im.info.get("icc_profile")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(f"{path}: cannot read as an image ({e})") from e
    shown = (stored[1], stored[0]) if orientation in (5, 6, 7, 8) else stored
    return shown, stored, icc


def _check_sizes(image: Path, mask: Path) -> bytes | None:
    """Raise naming both files when the mask is not the size of the image; return the ICC profile."""
    (iw, ih), stored, icc = _header(image)
    (mw, mh), _, _ = _header(mask)
    if (iw, ih) != (mw, mh):
        hint = ""
        if (mw, mh) == stored and stored != (iw, ih):
            hint = " (the image's EXIF orientation rotates it; the mask must match the image as displayed)"
        raise ValueError(f"{mask} is {mw}x{mh} but {image} is {iw}x{ih}: a mask must be the size of its image{hint}")
    return icc


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = (
        "harmonize run COMPOSITE MASK -o OUT [options]\n"
        "       harmonize run --images DIR --masks DIR -o OUTDIR [options]"
    )
    p.add_argument("composite", nargs="?", metavar="COMPOSITE", help="the composite image")
    p.add_argument("mask", nargs="?", metavar="MASK", help="its mask (white = foreground; soft edges blend)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (.jpg .png .webp .tif), or folder with --images")
    p.add_argument("--images", metavar="DIR", help="folder of composites")
    p.add_argument("--masks", metavar="DIR", help="folder of masks, matched by name: NAME.*, NAME_mask.* or (iHarmony4) NAME_K for NAME_K_J")
    p.add_argument("--model", default="gknet", help="registered name, hf-hub:org/repo or local-dir:PATH (default: gknet)")
    p.add_argument("--checkpoint", metavar="FILE", help="safetensors weights for --model")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per network call (default: 1 on CPU, 8 on CUDA)")
    p.add_argument("--size", type=int, default=None, metavar="N", help="working resolution of the network (default: the model's, 256)")
    p.add_argument("--method", default="affine", choices=METHODS, help="how the colour change reaches full resolution (default: affine)")
    p.add_argument("--resize", default="square", choices=RESIZE_MODES, help="what the network sees: square or aspect kept (default: square)")
    p.add_argument("--ext", default=None, metavar="EXT", help="folder mode: output extension (default: each input's)")
    p.add_argument("--skip-missing", action="store_true", help="folder mode: skip composites without a mask (default: error)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _match_mask(image: Path, masks: dict[str, list[Path]]) -> Path | None:
    """The mask of ``image``: ``STEM.*``, then ``STEM_mask.*``, then iHarmony4's ``NAME_K`` for ``NAME_K_J``."""
    stem = image.stem
    keys = [stem, f"{stem}_mask"]
    if stem.count("_") >= 2:
        keys.append(stem.rsplit("_", 1)[0])
    for key in keys:
        found = masks.get(key)
        if found:
            if len(found) > 1:
                raise ValueError(f"{image}: several masks match: {', '.join(str(p) for p in found)}")
            return found[0]
    return None


def _folder_pairs(args: argparse.Namespace) -> list[tuple[Path, Path, Path]]:
    from .cli import CommandError

    images_dir, masks_dir, out_dir = Path(args.images), Path(args.masks), Path(args.output)
    for d, flag in ((images_dir, "--images"), (masks_dir, "--masks")):
        if not d.exists():
            raise FileNotFoundError(f"{d}: no such folder ({flag})")
        if not d.is_dir():
            raise NotADirectoryError(f"{d}: not a folder ({flag})")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: not a folder (with --images, -o names the output folder)")
    ext = None
    if args.ext:
        ext = "." + args.ext.lower().lstrip(".")
        output_format(f"x{ext}")
    images = _list_images(images_dir)
    if not images:
        raise CommandError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    masks: dict[str, list[Path]] = {}
    for p in _list_images(masks_dir):
        masks.setdefault(p.stem, []).append(p)
    pairs, missing = [], []
    for img in images:
        m = _match_mask(img, masks)
        if m is None:
            missing.append(img)
            continue
        out = out_dir / (img.stem + (ext or img.suffix))
        output_format(out)
        pairs.append((img, m, out))
    if missing:
        names = ", ".join(p.name for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        msg = f"{len(missing)} of {len(images)} images in {images_dir} have no mask in {masks_dir}: {names} (expected NAME.png or NAME_mask.png)"
        if not args.skip_missing:
            raise CommandError(msg + "; pass --skip-missing to harmonize the others")
        print(f"harmonize run: warning: {msg}; skipped", file=sys.stderr)
    seen: dict[Path, Path] = {}
    for img, _, out in pairs:
        if out in seen:
            raise CommandError(f"{seen[out]} and {img} would both be written to {out}")
        seen[out] = img
    if not pairs:
        raise CommandError(f"no composite in {images_dir} has a mask in {masks_dir}")
    return pairs


def _check_outputs(outputs: Sequence[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [p for p in outputs if p.exists()]
    if existing:
        names = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"{names}: already exists; pass --overwrite to replace")


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .cli import CommandError

    folder = args.images is not None or args.masks is not None
    if folder:
        if args.images is None or args.masks is None:
            raise CommandError("folder mode needs both --images DIR and --masks DIR")
        if args.composite is not None:
            raise CommandError("give either COMPOSITE MASK or --images DIR --masks DIR, not both")
        pairs = _folder_pairs(args)
    else:
        if args.composite is None or args.mask is None:
            raise CommandError("give COMPOSITE MASK -o OUT, or --images DIR --masks DIR -o OUTDIR")
        if args.ext:
            raise CommandError("--ext is for folder mode; the extension of OUT sets the format")
        output_format(args.output)
        pairs = [(Path(args.composite), Path(args.mask), Path(args.output))]
    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    _check_outputs([out for _, _, out in pairs], args.overwrite)
    icc = {img: _check_sizes(img, m) for img, m, _ in pairs}  # readable, same sizes: before any work
    device = _resolve_device(args.device)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 1)
    model = load_model(args.model, args.checkpoint) if args.checkpoint else args.model
    harmonizer = Harmonizer(
        model, device=device, size=args.size, method=args.method, resize=args.resize, batch_size=batch_size
    )
    _logger.info("%r", harmonizer)

    start = time.perf_counter()
    bar = tqdm(total=len(pairs), unit="img", desc="harmonize", file=sys.stderr, disable=args.quiet or not folder)
    written = 0
    try:
        for k in range(0, len(pairs), batch_size):
            chunk = pairs[k : k + batch_size]
            images = [load_image(img) for img, _, _ in chunk]
            masks = [load_mask(m, threshold=None) for _, m, _ in chunk]
            for (img, m, _), x, y in zip(chunk, images, masks):
                if x.shape[-2:] != y.shape[-2:]:  # headers agreed, pixels do not: a damaged file
                    raise CommandError(
                        f"{m} is {y.shape[-1]}x{y.shape[-2]} but {img} is {x.shape[-1]}x{x.shape[-2]}: "
                        "a mask must be the size of its image"
                    )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                outs = harmonizer.harmonize_many(images, masks)
            empty = {i for i, y in enumerate(masks) if mask_is_empty(y)}
            for w in caught:
                if str(w.message) != _EMPTY_MASK:
                    print(f"harmonize run: warning: {w.message}", file=sys.stderr)
            for i, ((img, m, out), y) in enumerate(zip(chunk, outs)):
                if i in empty:
                    bar.write(f"harmonize run: warning: {m}: the mask is empty; {img} is written unchanged", file=sys.stderr)
                try:
                    save_image(y, out, icc_profile=icc[img])
                except OSError as e:
                    raise CommandError(f"{out}: cannot write ({e})") from e
                written += 1
                bar.update(1)
    finally:
        bar.close()
    if not args.quiet:
        elapsed = time.perf_counter() - start
        where = pairs[0][2] if not folder else Path(args.output)
        print(f"wrote {written} image{'s' if written != 1 else ''} to {where} ({elapsed:.1f} s, {harmonizer!r})")
    return 0

