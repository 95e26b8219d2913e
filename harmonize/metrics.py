"""Harmonization metrics as the papers report them: MSE, fMSE, PSNR, fPSNR, SSIM.

Every function takes images in 0..1, ``pred`` and ``target`` of shape (B, 3, H, W) and a
mask (B, 1, H, W) (1 = foreground, soft values act as weights), and returns one value per
image, a (B,) float64 tensor, on the 0..255 scale. Values are averaged **per image** over a
set (the mean of the per-image MSEs, as every harmonization paper does), not pooled over
all pixels of the set: :class:`HarmonizationMetrics` keeps one record per image and reports
the set overall, per subset and by foreground ratio (0-5%, 5-15%, 15-100%).

Formulas (``e = 255 * (pred - target)``, ``m`` the mask, sums over pixels ``p`` and
channels ``c``, ``N`` pixels)::

    mse   = sum_{p,c} e^2 / (3 N)
    fmse  = sum_{p,c} m_p e^2 / (3 sum_p m_p)          NaN when the mask is empty
    psnr  = 10 log10(peak^2 / (mse + eps))
    fpsnr = 10 log10(peak^2 / (fmse + eps))
    ssim  = mean over channels and valid 11x11 windows of the SSIM map
            (Gaussian window, sigma 1.5, C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 255)

How images are brought to the size of the measurement (resize, 8-bit rounding, mask
binarisation) and which PSNR peak is used differ between codebases; a :class:`Preset`
names one convention and :data:`PRESETS` holds those in use (see ``docs/metrics.md``).

Examples:
    >>> from harmonize.metrics import HarmonizationMetrics, prepare
    >>> metric = HarmonizationMetrics("issam")
    >>> comp, mask = prepare(composite, mask, "issam")      # (B, 3, 256, 256), (B, 1, 256, 256)
    >>> real, _ = prepare(real, None, "issam")
    >>> metric.update(model(comp, mask), real, mask, subsets="HCOCO", names=names)
    >>> metric.compute()["overall"]["fmse"]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .utils.checks import check_pred_target

__all__ = [
    "FG_RATIO_BUCKETS",
    "PRESETS",
    "HarmonizationMetrics",
    "Preset",
    "fmse",
    "foreground_ratio",
    "fpsnr",
    "get_preset",
    "image_metrics",
    "mse",
    "prepare",
    "prepare_image",
    "prepare_mask",
    "psnr",
    "ssim",
    "summarize",
]

_logger = logging.getLogger(__name__)

#: Foreground-ratio buckets of Table 2: ``(label, low, high)``, ``low <= ratio < high``
#: (the last bucket includes 1.0).
FG_RATIO_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("0-5%", 0.0, 0.05),
    ("5-15%", 0.05, 0.15),
    ("15-100%", 0.15, 1.0),
)


# --------------------------------------------------------------------------- functions


def _check(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
    check_pred_target(pred, target, mask)


def _squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """(B, 3, H, W) squared error on the 0..255 scale, float64; ``pred`` clamped to 0..1."""
    return ((pred.double().clamp(0, 1) - target.double()) * 255.0) ** 2


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of each image on the 0..255 scale.

    ``mse = sum_{p,c} (255 (pred - target))^2 / (3 N)``; ``pred`` is clamped to 0..1.

    Shape:
        pred, target: (B, 3, H, W) in 0..1 -> (B,) float64

    Examples:
        >>> mse(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 1 / 255))
        tensor([1.], dtype=torch.float64)
    """
    _check(pred, target)
    return _squared_error(pred, target).mean(dim=(1, 2, 3))


def fmse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Foreground MSE: the mean squared error over the foreground's pixel values.

    ``fmse = sum_{p,c} m_p e^2 / (3 sum_p m_p)``, i.e. the squared error summed over the
    foreground pixels and the three channels, divided by three times the number of
    foreground pixels (a soft mask weighs pixels). This equals iSSAM's
    ``sum(m e^2) / (3 sum m)`` and the iHarmony4 script's
    ``mse(pred * m, target * m) * H * W / sum(m)``.

    An image whose mask is empty (``sum m == 0``) has no foreground error to measure: its
    fMSE is ``NaN`` (not 0, which would read as a perfect score), and
    :class:`HarmonizationMetrics` leaves it out of the fMSE and fPSNR averages.

    Shape:
        pred, target: (B, 3, H, W) in 0..1; mask: (B, 1, H, W) in 0..1 -> (B,) float64
    """
    _check(pred, target, mask)
    m = mask.double()
    area = m.sum(dim=(1, 2, 3))
    err = (_squared_error(pred, target) * m).sum(dim=(1, 2, 3))
    return torch.where(area > 0, err / (3.0 * area.clamp(min=1e-12)), torch.full_like(area, math.nan))


def _peak(peak: str | float, pred: Tensor, target: Tensor) -> Tensor:
    """The PSNR peak of each image on the 0..255 scale."""
    b = pred.shape[0]
    if isinstance(peak, (int, float)) and not isinstance(peak, bool):
        return torch.full((b,), float(peak), dtype=torch.float64, device=pred.device)
    if peak == "255":
        return torch.full((b,), 255.0, dtype=torch.float64, device=pred.device)
    if peak == "target_max":
        return target.double().flatten(1).amax(dim=1) * 255.0
    if peak == "pred_range":
        p = pred.double().clamp(0, 1).flatten(1)
        return (p.amax(dim=1) - p.amin(dim=1)) * 255.0
    raise ValueError(f"peak must be a number, '255', 'target_max' or 'pred_range', got {peak!r}")


def _psnr_from_mse(err: Tensor, peak: Tensor, eps: float) -> Tensor:
    return 10.0 * torch.log10(peak**2 / (err + eps))


def psnr(pred: Tensor, target: Tensor, peak: str | float = 255.0, eps: float = 0.0) -> Tensor:
    """Peak signal-to-noise ratio of each image in dB: ``10 log10(peak^2 / (mse + eps))``.

    Args:
        pred: prediction in 0..1 (clamped).
        target: ground truth in 0..1.
        peak: ``255`` (or any number, on the 0..255 scale; the iHarmony4 evaluation scripts),
            ``"target_max"``: the target's largest value over all pixels and channels
            (iSSAM's ``data_range = target.max()``), or ``"pred_range"``: the prediction's
            ``max - min`` (the original iHarmony4 ``evaluation.py`` and DoveNet ``test.py``).
        eps: added to the MSE (iSSAM uses 1e-6); with 0 identical images give ``inf``.

    Shape:
        pred, target: (B, 3, H, W) -> (B,) float64
    """
    _check(pred, target)
    return _psnr_from_mse(mse(pred, target), _peak(peak, pred, target), eps)


def fpsnr(pred: Tensor, target: Tensor, mask: Tensor, peak: str | float = 255.0, eps: float = 0.0) -> Tensor:
    """Foreground PSNR in dB: ``10 log10(peak^2 / (fmse + eps))``; NaN for an empty mask.

    ``peak`` and ``eps`` as in :func:`psnr` (the peak rule applies to the whole image).

    Shape:
        pred, target: (B, 3, H, W); mask: (B, 1, H, W) -> (B,) float64
    """
    _check(pred, target, mask)
    return _psnr_from_mse(fmse(pred, target, mask), _peak(peak, pred, target), eps)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g


def ssim(pred: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004) of each image.

    Computed per channel on the 0..255 scale with ``C1 = (0.01 * 255)^2`` and
    ``C2 = (0.03 * 255)^2`` (the same value as on 0..1 with ``L = 1``: SSIM does not depend
    on the scale), a Gaussian window ``window_size`` wide with standard deviation
    ``sigma``, over the *valid* windows only (no padding, as the reference MATLAB code),
    then averaged over positions and channels. Identical images give exactly 1.

    Shape:
        pred, target: (B, 3, H, W) with H, W >= window_size -> (B,) float64
    """
    _check(pred, target)
    if min(pred.shape[-2:]) < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size}, got {tuple(pred.shape[-2:])}")
    x = pred.double().clamp(0, 1) * 255.0
    y = target.double() * 255.0
    g = _gaussian_window(window_size, sigma, x.dtype, x.device)
    c = x.shape[1]
    gh = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    gv = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return smap.mean(dim=(1, 2, 3))


def foreground_ratio(mask: Tensor) -> Tensor:
    """Fraction of pixels with ``mask > 0.5`` (iSSAM's rule), per image.

    Shape:
        mask: (B, 1, H, W) -> (B,) float64
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")
    return (mask > 0.5).double().mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """One measurement convention: how images reach the measured size and the PSNR peak.

    Attributes:
        name: the key in :data:`PRESETS`.
        size: (H, W) the model runs and metrics are measured at; ``None`` for full resolution.
        resize: how composite and real image are resized: ``"bilinear"`` (torch, no
            antialiasing, as OpenCV's ``INTER_LINEAR``) or ``"pil_bicubic"`` (Pillow's
            ``Image.resize(BICUBIC)`` on 8-bit images, antialiased when shrinking).
        quantize: round resized images to 8 bit, as resizing a uint8 image does.
        mask_resize: ``"bilinear"`` (soft edges, as iSSAM) or ``"nearest"`` (Pillow's
            nearest neighbour, what Pillow does to a mode ``"1"`` mask whatever filter is asked).
        mask_threshold: binarise the mask at this value after resizing (``>=``); ``None``
            keeps the soft mask, which then weighs the fMSE.
        psnr_peak: ``255``, ``"target_max"`` or ``"pred_range"`` (see :func:`psnr`).
        psnr_eps: added to the MSE inside the PSNR log.
        quantize_pred: round the prediction to 8 bit before measuring (the script measures
            saved 8-bit results).
        description: where the convention comes from.
        formula: the formulas, in words.
    """

    name: str
    size: tuple[int, int] | None
    resize: str
    quantize: bool
    mask_resize: str
    mask_threshold: float | None
    psnr_peak: str | float
    psnr_eps: float
    quantize_pred: bool
    description: str
    formula: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        return d


_COMMON_FORMULA = (
    "mse = mean over pixels and channels of (255 (pred - target))^2; "
    "fmse = sum over foreground pixels and channels of the squared error / (3 * foreground pixels); "
)

#: The named conventions. ``issam`` is the default of :class:`HarmonizationMetrics`.
PRESETS: dict[str, Preset] = {
    "issam": Preset(
        name="issam",
        size=(256, 256),
        resize="bilinear",
        quantize=True,
        mask_resize="bilinear",
        mask_threshold=None,
        psnr_peak="target_max",
        psnr_eps=1e-6,
        quantize_pred=False,
        description=(
            "iSSAM (Sofiiuk et al., WACV 2021, scripts/evaluate_model.py, 'Fixed256') and the codebases "
            "derived from it: composite, real image and mask resized to "
            "256x256 bilinearly without antialiasing (OpenCV INTER_LINEAR), images kept 8-bit, the "
            "mask resized as an image (soft edges weigh the fMSE), the prediction clamped to 0..255 "
            "and not rounded."
        ),
        formula=_COMMON_FORMULA + "psnr = 10 log10(max(target)^2 / (mse + 1e-6)) with max over the whole image.",
    ),
    "iharmony4": Preset(
        name="iharmony4",
        size=(256, 256),
        resize="pil_bicubic",
        quantize=True,
        mask_resize="nearest",
        mask_threshold=0.5,
        psnr_peak=255.0,
        psnr_eps=0.0,
        quantize_pred=True,
        description=(
            "The iHarmony4 evaluation script (Cong et al., DoveNet, CVPR 2020) as the iHarmony4-family "
            "codebases run it: composite and real image resized to 256x256 with PIL's BICUBIC filter "
            "(uint8 in, uint8 out), the mask made binary (PIL convert('1')) and so resized by nearest "
            "neighbour, results measured as 8-bit images, PSNR with data_range 255. (The original "
            "evaluation.py and DoveNet test.py use data_range = pred.max() - pred.min() instead; "
            "use psnr_peak='pred_range' for that.)"
        ),
        formula=_COMMON_FORMULA + "psnr = 10 log10(255^2 / mse); fpsnr = 10 log10(255^2 / fmse).",
    ),
    "fullres": Preset(
        name="fullres",
        size=None,
        resize="none",
        quantize=False,
        mask_resize="nearest",
        mask_threshold=0.5,
        psnr_peak="target_max",
        psnr_eps=1e-6,
        quantize_pred=False,
        description=(
            "Full resolution, no resizing (iSSAM's 'None' strategy; what high-resolution work "
            "reports): the binary mask, iSSAM's PSNR."
        ),
        formula=_COMMON_FORMULA + "psnr = 10 log10(max(target)^2 / (mse + 1e-6)).",
    ),
}


def get_preset(preset: str | Preset) -> Preset:
    """A :class:`Preset` by name (or the preset itself)."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown metrics preset {preset!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[preset]


def _batched(x: Tensor) -> tuple[Tensor, bool]:
    if x.dim() == 3:
        return x[None], False
    if x.dim() == 4:
        return x, True
    raise ValueError(f"expected (C, H, W) or (B, C, H, W), got {tuple(x.shape)}")


def _round8(x: Tensor) -> Tensor:
    """0..1 -> 0..255 rounded to integers (still floating point)."""
    return (x.clamp(0, 1) * 255.0).round()


def _pil_resize(x: Tensor, size: tuple[int, int], resample: int) -> Tensor:
    """(B, C, H, W) float 0..1 -> resized with Pillow on 8-bit images, float 0..1."""
    out = []
    for img in _round8(x.detach().float().cpu()).to(torch.uint8):
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        res = np.asarray(pil.resize((size[1], size[0]), resample))
        res = res[..., None] if res.ndim == 2 else res
        out.append(torch.from_numpy(res.copy()).permute(2, 0, 1))
    return torch.stack(out).to(x.device, x.dtype) / 255.0


def prepare_image(image: Tensor, preset: str | Preset = "issam") -> Tensor:
    """Bring a composite, real image or prediction to the preset's size, as the convention does.

    Shape:
        (3, H, W) or (B, 3, H, W) in 0..1 -> the same rank at ``preset.size``
    """
    p = get_preset(preset)
    x, batched = _batched(image)
    if p.size is not None and tuple(x.shape[-2:]) != tuple(p.size):
        if p.resize == "pil_bicubic":
            x = _pil_resize(x, p.size, Image.BICUBIC)
        elif p.resize == "bilinear":
            x = F.interpolate(x, size=p.size, mode="bilinear", align_corners=False, antialias=False).clamp(0, 1)
            if p.quantize:
                x = _round8(x) / 255.0
        else:
            raise ValueError(f"preset {p.name}: unknown resize {p.resize!r}")
    return x if batched else x[0]


def prepare_mask(mask: Tensor, preset: str | Preset = "issam") -> Tensor:
    """Bring a mask to the preset's size and binarise it if the preset does.

    Shape:
        (1, H, W) or (B, 1, H, W) in 0..1 -> the same rank at ``preset.size``
    """
    p = get_preset(preset)
    m, batched = _batched(mask)
    m = m.float() if not m.is_floating_point() else m
    if p.size is not None and tuple(m.shape[-2:]) != tuple(p.size):
        if p.mask_resize == "nearest":
            m = F.interpolate(m, size=p.size, mode="nearest-exact")  # Pillow's NEAREST
        elif p.mask_resize == "bilinear":
            m = F.interpolate(m, size=p.size, mode="bilinear", align_corners=False, antialias=False)
        else:
            raise ValueError(f"preset {p.name}: unknown mask_resize {p.mask_resize!r}")
        m = m.clamp(0, 1)
    if p.mask_threshold is not None:
        m = (m >= p.mask_threshold).to(m.dtype)
    return m if batched else m[0]


def prepare(image: Tensor, mask: Tensor | None = None, preset: str | Preset = "issam") -> tuple[Tensor, Tensor | None]:
    """:func:`prepare_image` and :func:`prepare_mask` in one call; ``mask`` may be ``None``.

    Evaluation code applies it to the composite, the mask and the real image before the
    model runs; the model's output, already at the preset's size, is measured as it is.
    """
    return prepare_image(image, preset), None if mask is None else prepare_mask(mask, preset)


def image_metrics(
    pred: Tensor, target: Tensor, mask: Tensor, preset: str | Preset = "issam", with_ssim: bool = False
) -> dict[str, Tensor]:
    """Every per-image metric under a preset's PSNR rule: the function twin of one update.

    The inputs must already be at the preset's size (see :func:`prepare`). With
    ``preset.quantize_pred`` the prediction is rounded to 8 bit first.

    A NaN or infinite value in ``pred`` is scored as the worst prediction there is: the
    valid value farthest from the target's (0 where the target is 0.5 or more, else 1).
    A broken output thus scores worse than any real one, never better, and is never left
    out of an average; ``nonfinite`` gives the fraction of such values per image.

    Returns:
        dict of (B,) float64 tensors: ``fg_ratio``, ``mse``, ``fmse``, ``psnr``, ``fpsnr``,
        ``nonfinite`` (and ``ssim``).
    """
    p = get_preset(preset)
    _check(pred, target, mask)
    pred, nonfinite = _worst_where_nonfinite(pred.detach(), target.detach())
    pred = pred.clamp(0, 1)
    if p.quantize_pred:
        pred = _round8(pred.double()) / 255.0
    target, mask = target.detach(), mask.detach()
    peak = _peak(p.psnr_peak, pred, target)
    e, fe = mse(pred, target), fmse(pred, target, mask)
    out = {
        "fg_ratio": foreground_ratio(mask),
        "mse": e,
        "fmse": fe,
        "psnr": _psnr_from_mse(e, peak, p.psnr_eps),
        "fpsnr": _psnr_from_mse(fe, peak, p.psnr_eps),
        "nonfinite": nonfinite,
    }
    if with_ssim:
        out["ssim"] = ssim(pred, target)
    return out


def _worst_where_nonfinite(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``pred`` with each NaN or infinite value replaced by the valid value farthest from the
    target's, and the fraction of such values per image ((B,) float64)."""
    bad = ~torch.isfinite(pred)
    frac = bad.flatten(1).double().mean(dim=1)
    if not bool(bad.any()):
        return pred, frac
    worst = (target < 0.5).to(pred.dtype)
    return torch.where(bad, worst, pred), frac


# --------------------------------------------------------------------------- aggregation

_AVERAGED = ("mse", "fmse", "psnr", "fpsnr", "ssim")
#: Metrics an empty mask leaves undefined (NaN): those records are left out of their mean.
_FOREGROUND = ("fmse", "fpsnr")


def _is_empty_mask(r: dict[str, Any]) -> bool:
    return isinstance(r.get("fmse"), float) and math.isnan(r["fmse"])


def _average(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-image mean of each metric.

    Only images with an empty mask are left out, and only of the foreground metrics they
    leave undefined (fMSE, fPSNR); they are counted as ``empty_masks``. Nothing else is
    skipped: a non-finite output was already scored as the worst prediction (see
    :func:`image_metrics`) and is counted as ``nonfinite_outputs``.
    """
    out: dict[str, Any] = {"count": len(records)}
    for key in _AVERAGED:
        if not records or key not in records[0]:
            if key != "ssim":
                out[key] = math.nan
            continue
        kept = [r[key] for r in records if not (key in _FOREGROUND and _is_empty_mask(r))]
        out[key] = float(np.mean(np.array(kept, dtype=np.float64))) if kept else math.nan
    out["empty_masks"] = sum(1 for r in records if _is_empty_mask(r))
    out["nonfinite_outputs"] = sum(1 for r in records if r.get("nonfinite", 0.0) > 0)
    return out


def _bucket(ratio: float, buckets: Sequence[tuple[str, float, float]]) -> str | None:
    for i, (label, lo, hi) in enumerate(buckets):
        if lo <= ratio < hi or (i == len(buckets) - 1 and ratio == hi):
            return label
    return None


def summarize(
    records: Sequence[dict[str, Any]], buckets: Sequence[tuple[str, float, float]] = FG_RATIO_BUCKETS
) -> dict[str, Any]:
    """Per-image averages over records: overall, per subset and by foreground ratio.

    The function twin of :meth:`HarmonizationMetrics.compute`.

    Returns:
        ``{"overall": S, "subsets": {name: S}, "fg_ratio": {"0-5%": S, ...}}`` where each ``S`` is
        ``{"count", "mse", "fmse", "psnr", "fpsnr", ("ssim",) "empty_masks", "nonfinite_outputs"}``; subsets in the
        order they first appear.
    """
    subsets: dict[str, list] = {}
    for r in records:
        subsets.setdefault(r["subset"], []).append(r)
    by_ratio: dict[str, list] = {label: [] for label, _, _ in buckets}
    for r in records:
        label = _bucket(r["fg_ratio"], buckets)
        if label is not None:
            by_ratio[label].append(r)
    return {
        "overall": _average(records),
        "subsets": {name: _average(rs) for name, rs in subsets.items()},
        "fg_ratio": {label: _average(rs) for label, rs in by_ratio.items()},
    }


def _as_list(x: str | Sequence[str] | None, n: int, default: str | None) -> list:
    if x is None or isinstance(x, str):
        return [x if x is not None else default] * n
    x = list(x)
    if len(x) != n:
        raise ValueError(f"expected {n} names/subsets for a batch of {n}, got {len(x)}")
    return x


class HarmonizationMetrics:
    """Per-image MSE, fMSE, PSNR, fPSNR (and SSIM), averaged per image like the papers.

    Call :meth:`update` with batches at the preset's size (see :func:`prepare`), then
    :meth:`compute` for Table 1 (overall and per subset) and Table 2 (by foreground ratio)
    numbers. Under ``torch.distributed`` every rank updates with its share of the images and
    :meth:`compute` gathers all records (``all_gather_object``) so every rank returns the
    same summary; records with the same subset and name are counted once (a
    ``DistributedSampler`` repeats images to even out the ranks).

    Args:
        preset: a name in :data:`PRESETS` or a :class:`Preset`: its PSNR peak rule, epsilon
            and prediction rounding apply here.
        ssim: also compute SSIM (slower).
        buckets: foreground-ratio buckets, ``(label, low, high)``.

    Examples:
        >>> m = HarmonizationMetrics("iharmony4")
        >>> m.update(pred, real, mask, subsets=["HCOCO"] * len(pred), names=names)
        >>> m.compute()["subsets"]["HCOCO"]["mse"]
    """

    def __init__(
        self,
        preset: str | Preset = "issam",
        ssim: bool = False,
        buckets: Sequence[tuple[str, float, float]] = FG_RATIO_BUCKETS,
    ) -> None:
        self.preset = get_preset(preset)
        self.with_ssim = ssim
        self.buckets = tuple(buckets)
        self._records: list[dict[str, Any]] = []

    @property
    def records(self) -> list[dict[str, Any]]:
        """This process's per-image records (dicts), in update order."""
        return self._records

    def reset(self) -> None:
        self._records = []

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        mask: Tensor,
        composite: Tensor | None = None,
        subsets: str | Sequence[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Measure a batch and keep one record per image.

        Args:
            pred: (B, 3, H, W) model output in 0..1.
            target: (B, 3, H, W) real images, at the same size.
            mask: (B, 1, H, W) masks, at the same size.
            composite: (B, 3, H, W) inputs; when given, records also hold the composite's own
                ``composite_mse`` and ``composite_fmse`` (the floor for that image).
            subsets: one subset name for the batch or one per image (``"default"`` if none).
            names: one name per image (``None``: unnamed, never deduplicated).

        Returns:
            the new records.
        """
        b = pred.shape[0]
        vals = image_metrics(pred, target, mask, self.preset, self.with_ssim)
        cvals = None
        if composite is not None:
            cvals = {"mse": mse(composite, target), "fmse": fmse(composite, target, mask)}
        subset_list = _as_list(subsets, b, "default")
        name_list = _as_list(names, b, None) if names is not None else [None] * b
        new = []
        for i in range(b):
            rec: dict[str, Any] = {"name": name_list[i], "subset": str(subset_list[i])}
            rec.update({k: float(v[i]) for k, v in vals.items()})
            if cvals is not None:
                rec["composite_mse"] = float(cvals["mse"][i])
                rec["composite_fmse"] = float(cvals["fmse"][i])
            new.append(rec)
        self._records.extend(new)
        return new

    def gathered_records(self) -> list[dict[str, Any]]:
        """Records of every process (rank order) when ``torch.distributed`` is initialized."""
        records = self._records
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, records)
            records = [r for part in parts for r in part]
        seen: set[tuple[str, str]] = set()
        out = []
        for r in records:
            if r["name"] is not None:
                key = (r["subset"], r["name"])
                if key in seen:
                    continue
                seen.add(key)
            out.append(r)
        return out

    def compute(self) -> dict[str, Any]:
        """Averages per image: ``{"preset", "overall", "subsets", "fg_ratio"}`` (see :func:`summarize`).

        Under ``torch.distributed`` every rank must call it (it is a collective).
        """
        records = self.gathered_records()
        if not records:
            _logger.warning("HarmonizationMetrics.compute() called before any update()")
        return {"preset": self.preset.name, **summarize(records, self.buckets)}
