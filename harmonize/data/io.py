"""Reading images and masks as people have them: JPEG/PNG/WebP/TIFF, EXIF, RGBA, grey, 16-bit."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..errors import HarmonizeError, ImageReadError, InvalidInputError, UsageError
from ..utils.files import atomic_write

__all__ = [
    "load_image",
    "load_mask",
    "image_to_tensor",
    "mask_to_tensor",
    "to_uint8_hwc",
    "save_image",
    "output_format",
    "read_header",
    "check_same_size",
    "check_unit_range",
    "max_pixels",
    "ImageReadError",
    "IMAGE_EXTENSIONS",
    "OUTPUT_EXTENSIONS",
    "MAX_PIXELS",
    "MAX_PIXELS_ENV",
]

#: File extensions read as images (folder mode lists these).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
#: File extensions written by :func:`save_image`.
OUTPUT_EXTENSIONS = tuple(_FORMATS)

#: The largest image read, in pixels (width x height): 64 megapixels (8192 x 8192).
#: Checked from the file's header before anything is decoded; harmonizing an image takes
#: about 100 bytes of memory per pixel at its peak (6-7 GB here). Raise it with the
#: environment variable :data:`MAX_PIXELS_ENV` (or by setting this attribute).
MAX_PIXELS = 64 * 1024 * 1024
#: The environment variable that overrides :data:`MAX_PIXELS` (a number of pixels).
MAX_PIXELS_ENV = "HARMONIZE_MAX_PIXELS"
_PILLOW_LIMIT_LOCK = threading.Lock()


def max_pixels() -> int:
    """The pixel limit in force: ``$HARMONIZE_MAX_PIXELS`` when set, else :data:`MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return int(MAX_PIXELS)
    try:
        n = int(float(value)) if value.lower() != "inf" else -1
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"{MAX_PIXELS_ENV}={value!r}: give a number of pixels, e.g. 200000000")
    return n


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    w, h = size
    limit = max_pixels()
    if w * h > limit:
        raise ImageReadError(
            f"{path}: {w}x{h} is {w * h / 1e6:.0f} megapixels, over the limit of {limit / 1e6:.0f} "
            f"(about 100 bytes of memory per pixel); set {MAX_PIXELS_ENV}={w * h} to read it anyway"
        )


def _pillow_open(p: Path, unlimited: bool) -> Image.Image:
    if not unlimited:
        return Image.open(p)
    with _PILLOW_LIMIT_LOCK:
        pillow, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(p)
        finally:
            Image.MAX_IMAGE_PIXELS = pillow


@contextlib.contextmanager
def _open_checked(p: Path) -> Iterator[Image.Image]:
    """``Image.open`` (the header only), refused before any decoding when over :func:`max_pixels`.

    Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) gives way to
    ours: its warning is silenced, and an image it refuses is opened (header only) to be
    refused here with the same message as any other, or read when the limit was raised.
    """
    limit = max_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            pillow = Image.MAX_IMAGE_PIXELS
            try:
                im = _pillow_open(p, unlimited=pillow is not None and limit > pillow)
            except Image.DecompressionBombError:
                im = _pillow_open(p, unlimited=True)  # for its size only: refused just below
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageReadError(f"{p}: cannot read as an image ({e})") from e
        with im:
            _check_pixels(p, im.size)
            yield im


@contextlib.contextmanager
def _decoded(path: str | os.PathLike) -> Iterator[Image.Image]:
    """The decoded image of ``path``, EXIF orientation applied in place; valid inside the block."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a folder, not an image")
    with _open_checked(p) as img:
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise ImageReadError(f"{p}: cannot read as an image ({e})") from e
        yield img


def _open(path: str | os.PathLike) -> Image.Image:
    with _decoded(path) as img:
        return img.copy()  # the file closes, and its image with it, when the block ends


def _to_float_array(img: Image.Image) -> np.ndarray:
    """(H, W, C) float32 in 0..1 for any PIL mode (16-bit and float modes included)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return (np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0)[..., None]
    if img.mode == "I":
        a = np.asarray(img, dtype=np.int64)
        scale = 65535.0 if a.max(initial=0) > 255 else 255.0
        return (a.astype(np.float32) / scale).clip(0, 1)[..., None]
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        return (a / 255.0 if a.max(initial=0) > 1.0 else a).clip(0, 1)[..., None]
    if img.mode in ("1", "L", "LA"):
        return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[..., None]
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


#: How far outside 0..1 a float image or mask may stray (rounding, resampling) before it is an error.
RANGE_TOLERANCE = 0.01


def check_unit_range(a: np.ndarray | Tensor, name: str = "image") -> None:
    """Raise an :class:`InvalidInputError` unless every value is finite and within 0..1
    (give or take :data:`RANGE_TOLERANCE`). Values are never rescaled on a guess: a float
    image in 0..255 is an error, not an image divided by 255."""
    t = torch.as_tensor(a)
    if t.numel() == 0:
        return
    if not bool(torch.isfinite(t).all()):
        raise InvalidInputError(f"{name} holds NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = " (divide a 0..255 image by 255)" if hi > 1 + RANGE_TOLERANCE else ""
        raise InvalidInputError(f"{name} values must be in 0..1, got {lo:.4g}..{hi:.4g}{hint}")


def image_to_tensor(img: Image.Image | np.ndarray) -> Tensor:
    """A PIL image or an (H, W[, C]) array (uint8, uint16 or float 0..1) -> (3, H, W) float32.

    Raises:
        InvalidInputError: a float array with values outside 0..1 or not finite, another dtype.
    """
    if isinstance(img, Image.Image):
        a = _to_float_array(img)
    else:
        a = np.asarray(img)
        if a.dtype == np.uint8:
            a = a.astype(np.float32) / 255.0
        elif a.dtype == np.uint16:
            a = a.astype(np.float32) / 65535.0
        elif np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
            check_unit_range(a, "image")
        else:
            raise InvalidInputError(f"image array must be uint8, uint16 or float in 0..1, got {a.dtype}")
        if a.ndim == 2:
            a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise InvalidInputError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}")
    a = a[..., :3]  # alpha is ignored
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def mask_to_tensor(img: Image.Image | np.ndarray, threshold: float | None = 0.5) -> Tensor:
    """A mask image or array -> (1, H, W) float32; white (or 1) is foreground.

    0/1 and 0/255 masks, grey or RGB (channels averaged), 8 or 16 bit are accepted; a
    float array must hold values in 0..1 (an :class:`InvalidInputError` otherwise).
    ``threshold`` binarises (>= threshold is foreground); ``None`` keeps soft edges.
    """
    if isinstance(img, Image.Image):
        if img.mode in ("RGBA", "LA"):
            img = img.convert(img.mode[:-1])
        a = _to_float_array(img)
        peak = float(a.max(initial=0))
        if 0 < peak <= 1.0 / 255 + 1e-6 or (img.mode.startswith("I;16") and 0 < peak <= 255.0 / 65535 + 1e-6):
            a = a / peak  # a 0/1 mask (or 0/255 in a 16-bit file)
    else:
        a = np.asarray(img)
        if a.dtype == np.bool_:
            a = a.astype(np.float32)
        elif a.dtype == np.uint8:
            a = a.astype(np.float32) / (255.0 if a.max(initial=0) > 1 else 1.0)
        elif a.dtype == np.uint16:
            a = a.astype(np.float32) / (65535.0 if a.max(initial=0) > 255 else 255.0 if a.max(initial=0) > 1 else 1.0)
        elif np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
            check_unit_range(a, "mask")
        else:
            raise InvalidInputError(f"mask array must be bool, uint8, uint16 or float in 0..1, got {a.dtype}")
        if a.ndim == 2:
            a = a[..., None]
    if a.ndim != 3:
        raise InvalidInputError(f"mask must be (H, W) or (H, W, C), got {a.shape}")
    a = a[..., :3].mean(axis=2, keepdims=True)
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).clamp_(0, 1)
    if threshold is not None:
        t = (t >= threshold).float()
    return t


_PNG16_RAWMODES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def _read_png16(path: str | os.PathLike) -> np.ndarray | None:
    """A 16-bit-per-channel RGB(A) PNG at full precision: (H, W, C) uint16, EXIF applied.

    Pillow decodes these files to 8 bits, keeping the high byte of each value. Its own PNG
    decoder, told to unpack the low byte instead (raw mode ``RGB;16L``), gives the other
    half, and the two make the 16-bit values. None for any other file (read as usual).
    """
    p = Path(path)
    if not p.is_file():
        return None  # _open reports it
    try:
        with _open_checked(p) as im:
            tile = im.tile[0] if im.format == "PNG" and len(im.tile) == 1 else None
            if tile is None or tile[3] not in _PNG16_RAWMODES:
                return None
            im.load()
            hi = np.asarray(ImageOps.exif_transpose(im), dtype=np.uint16)
        with _open_checked(p) as im:
            low_tile = tuple(tile[:3]) + (_PNG16_RAWMODES[tile[3]],)
            im.tile = [tile._replace(args=low_tile[3]) if hasattr(tile, "_replace") else low_tile]
            im.load()
            lo = np.asarray(ImageOps.exif_transpose(im), dtype=np.uint16)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, HarmonizeError):  # the pixel limit's, already naming the file
            raise
        raise ImageReadError(f"{p}: cannot read as an image ({e})") from e
    return (hi << 8) | lo


def load_image(path: str | os.PathLike, uint8: bool = False) -> Tensor:
    """Read an image file -> (3, H, W) float32 in 0..1 (EXIF orientation applied).

    16-bit files keep their precision: grey (``I;16``) and RGB(A) PNGs alike. With
    ``uint8=True`` an 8-bit file comes back as (3, H, W) uint8 in 0..255 instead, with no
    float copy (a quarter of the memory; a view of the (H, W, 3) pixels, channels last);
    16-bit files still come back as float32.
    """
    wide = _read_png16(path)
    if wide is not None:
        return image_to_tensor(wide)
    with _decoded(path) as img:
        if uint8 and img.mode in _8BIT_MODES:
            return torch.from_numpy(_uint8_array(img, "RGB")).permute(2, 0, 1)
        return image_to_tensor(img)


def load_mask(path: str | os.PathLike, threshold: float | None = 0.5, uint8: bool = False) -> Tensor:
    """Read a mask file -> (1, H, W) float32 (see :func:`mask_to_tensor`).

    With ``uint8=True`` and no ``threshold``, an 8-bit grey mask, or an RGB one whose three
    channels are equal, comes back as (1, H, W) uint8 in 0..255 (a 0/1 mask as 0/255), the
    same values times 255 with no float copy; other masks come back as float32.
    """
    with _decoded(path) as img:
        if uint8 and threshold is None and img.mode in _8BIT_MODES:
            a = _uint8_array(img, "L" if img.mode in ("1", "L", "LA") else "RGB", grey=True)
            if a is not None:
                if a.max(initial=0) == 1:  # a 0/1 mask
                    a *= np.uint8(255)
                return torch.from_numpy(a).permute(2, 0, 1)
        return mask_to_tensor(img, threshold)


#: PIL modes of 8-bit images, read as uint8 by :func:`load_image` and :func:`load_mask`.
_8BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def _uint8_array(img: Image.Image, mode: str, grey: bool = False) -> np.ndarray | None:
    """(H, W, C) uint8 pixels of ``img`` converted to ``mode`` ("L" or "RGB"), a band of rows at a time.

    ``np.asarray(img)`` would hold the image's bytes twice more at once; bands keep the extra
    to one band. ``grey=True``: (H, W, 1), the first channel, or None when the channels differ.
    """
    w, h = img.size
    out = np.empty((h, w, 1 if grey else len(mode)), np.uint8)
    band = max(1, (1 << 22) // max(1, w * 4))
    for top in range(0, h, band):
        part = img.crop((0, top, w, min(h, top + band)))
        a = np.asarray(part if part.mode == mode else part.convert(mode)).reshape(part.height, w, -1)
        if grey and a.shape[2] > 1:
            if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
                return None
            a = a[..., :1]
        out[top : top + part.height] = a
    return out


# --------------------------------------------------------------------------- writing


def to_uint8_hwc(x: Tensor) -> np.ndarray:
    """(3, H, W) in 0..1, or uint8 in 0..255 (taken as it is) -> (H, W, 3) uint8."""
    if x.dtype == torch.uint8:
        return x.detach().cpu().permute(1, 2, 0).numpy()
    return x.detach().float().cpu().mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def output_format(path: str | os.PathLike) -> str:
    """The Pillow format written for ``path``'s extension, or a ValueError naming it."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise UsageError(f"{path}: unknown output format {suffix or '(no extension)'!r}; use .jpg, .png, .webp, .tif or .bmp")
    return _FORMATS[suffix]


def save_image(
    image: Tensor, path: str | os.PathLike, quality: int = 95, icc_profile: bytes | None = None
) -> Path:
    """Write a (3, H, W) image in 0..1 (or uint8 in 0..255) as 8-bit RGB, atomically; the format follows the extension.

    The file is written under a temporary name in the same folder and renamed into place
    (``os.replace``): a reader never sees a half-written file, and a failure leaves no file.
    JPEG and WebP are written at ``quality``; ``icc_profile`` (the input's) is embedded.
    """
    path = Path(path)
    fmt = output_format(path)
    arr = to_uint8_hwc(image)
    opts: dict[str, Any] = {}
    if fmt in ("JPEG", "WEBP"):
        opts["quality"] = quality
    if icc_profile:
        opts["icc_profile"] = icc_profile
    with atomic_write(path) as tmp:
        Image.fromarray(arr).save(tmp, format=fmt, **opts)
    return path


# --------------------------------------------------------------------------- headers


def read_header(path: Path) -> tuple[tuple[int, int], tuple[int, int], bytes | None]:
    """(width, height) as displayed (EXIF orientation applied), as stored, and the ICC profile."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    with _open_checked(path) as im:  # refuses an image over the pixel limit
        try:
            stored = im.size
            orientation = im.getexif().get(0x0112, 1)
            icc = im.info.get("icc_profile")
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageReadError(f"{path}: cannot read as an image ({e})") from e
    shown = (stored[1], stored[0]) if orientation in (5, 6, 7, 8) else stored
    return shown, stored, icc


def check_same_size(image: Path, mask: Path) -> bytes | None:
    """Raise naming both files when the mask is not the size of the image; return the ICC profile."""
    (iw, ih), stored, icc = read_header(image)
    (mw, mh), _, _ = read_header(mask)
    if (iw, ih) != (mw, mh):
        hint = ""
        if (mw, mh) == stored and stored != (iw, ih):
            hint = " (the image's EXIF orientation rotates it; the mask must match the image as displayed)"
        raise InvalidInputError(f"{mask} is {mw}x{mh} but {image} is {iw}x{ih}: a mask must be the size of its image{hint}")
    return icc
