"""Composites made on the fly: recolour the foreground of a real photo, as iHarmony4 did.

Colour transfer from another image's region (Lab mean/std, RGB mean/covariance,
cumulative histogram mapping) or a photographic retouch (exposure, white balance, gamma,
saturation, contrast, tone curve). Only the foreground changes; the real photo is the
ground truth. Every function takes (3, H, W) images in 0..1 and (1, H, W) masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .color import lab_to_rgb, rgb_to_lab

__all__ = [
    "transfer_lab_mean_std",
    "transfer_rgb_mean_cov",
    "transfer_histogram",
    "retouch",
    "CompositeSynthesizer",
    "METHODS",
]

METHODS = ("lab", "rgb", "histogram", "retouch")


def _region_pixels(image: Tensor, mask: Tensor) -> Tensor:
    """(3, N) pixels of ``image`` where ``mask >= 0.5``; the whole image if the region is empty."""
    sel = mask[0] >= 0.5
    px = image[:, sel]
    return px if px.shape[1] > 0 else image.reshape(3, -1)


def _paste(real: Tensor, new: Tensor, mask: Tensor) -> Tensor:
    return (new.clamp(0, 1) * mask + real * (1 - mask)).clamp(0, 1)


def transfer_lab_mean_std(image: Tensor, mask: Tensor, ref: Tensor, ref_mask: Tensor) -> Tensor:
    """Give the foreground the Lab mean and std of ``ref``'s region (Reinhard et al. 2001)."""
    lab, rlab = rgb_to_lab(image), rgb_to_lab(ref)
    src, dst = _region_pixels(lab, mask), _region_pixels(rlab, ref_mask)
    mu_s, sd_s = src.mean(1), src.std(1, unbiased=False).clamp(min=1e-3)
    mu_d, sd_d = dst.mean(1), dst.std(1, unbiased=False)
    out = (lab - mu_s[:, None, None]) / sd_s[:, None, None] * sd_d[:, None, None] + mu_d[:, None, None]
    return _paste(image, lab_to_rgb(out), mask)


def _sqrtm_psd(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(m)
    return v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T


def transfer_rgb_mean_cov(image: Tensor, mask: Tensor, ref: Tensor, ref_mask: Tensor) -> Tensor:
    """Linear Monge-Kantorovitch mapping of the foreground's RGB mean/covariance to ``ref``'s region."""
    src, dst = _region_pixels(image, mask).double(), _region_pixels(ref, ref_mask).double()
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64) * 1e-4
    cs = torch.cov(src) + eye if src.shape[1] > 1 else eye
    cd = torch.cov(dst) + eye if dst.shape[1] > 1 else eye
    cs_half = _sqrtm_psd(cs)
    cs_inv_half = torch.linalg.inv(cs_half)
    t = cs_inv_half @ _sqrtm_psd(cs_half @ cd @ cs_half) @ cs_inv_half
    flat = image.reshape(3, -1).double()
    out = (t @ (flat - mu_s) + mu_d).reshape(image.shape).to(image.dtype)
    return _paste(image, out, mask)


def transfer_histogram(image: Tensor, mask: Tensor, ref: Tensor, ref_mask: Tensor, bins: int = 256) -> Tensor:
    """Per-channel cumulative histogram mapping of the foreground onto ``ref``'s region."""
    src, dst = _region_pixels(image, mask), _region_pixels(ref, ref_mask)
    out = torch.empty_like(image)
    levels = torch.linspace(0, 1, bins, dtype=image.dtype)
    for c in range(3):
        cdf_s = torch.histc(src[c], bins, 0, 1).cumsum(0)
        cdf_d = torch.histc(dst[c], bins, 0, 1).cumsum(0)
        cdf_s, cdf_d = cdf_s / cdf_s[-1].clamp(min=1), cdf_d / cdf_d[-1].clamp(min=1)
        idx = torch.searchsorted(cdf_d.contiguous(), cdf_s.contiguous()).clamp(max=bins - 1)
        lut = levels[idx]
        q = (image[c] * (bins - 1)).round().long().clamp(0, bins - 1)
        out[c] = lut[q]
    return _paste(image, out, mask)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def retouch(image: Tensor, mask: Tensor, generator: torch.Generator, strength: float = 1.0) -> Tensor:
    """A random photographic edit of the foreground: exposure, white balance, gamma, saturation,
    contrast and an S/inverse-S tone curve; ``strength`` scales every range."""
    g, s = generator, strength
    x = image * 2 ** _uniform(g, -0.8 * s, 0.8 * s)  # exposure, in stops
    gains = torch.tensor([2 ** _uniform(g, -0.35 * s, 0.35 * s) for _ in range(3)], dtype=image.dtype)
    x = x * gains[:, None, None]  # white balance
    x = x.clamp(0, 1) ** (2 ** _uniform(g, -0.5 * s, 0.5 * s))  # gamma
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = grey + (x - grey) * 2 ** _uniform(g, -1.0 * s, 0.6 * s)  # saturation
    mean = grey[mask >= 0.5].mean() if (mask >= 0.5).any() else grey.mean()
    x = mean + (x - mean) * 2 ** _uniform(g, -0.5 * s, 0.4 * s)  # contrast
    k = _uniform(g, -0.6 * s, 0.6 * s)  # tone curve: x + k * x (1 - x) (2x - 1) * 2
    x = x.clamp(0, 1)
    x = x + k * 2 * x * (1 - x) * (2 * x - 1) * -1
    return _paste(image, x, mask)


class CompositeSynthesizer:
    """Make a composite from a real photo and its mask by one randomly chosen method.

    Args:
        methods: subset of ``("lab", "rgb", "histogram", "retouch")``.
        weights: relative probability of each method.
        retouch_strength: range scale of :func:`retouch`.
        min_change: redraw (up to 4 times) when the foreground's mean absolute change
            is below this, so composites are never nearly identical to the real photo.
        transfer_strength: range of the fraction of a colour transfer that is applied
            (transfers from an unrelated photo are often harsher than real composites).

    Call:
        ``synth(real, mask, ref, ref_mask, generator) -> composite``; ``ref`` / ``ref_mask``
        give the colour transfer's reference region (another photo's foreground).
    """

    def __init__(
        self,
        methods: Sequence[str] = METHODS,
        weights: Sequence[float] | None = None,
        retouch_strength: float = 0.7,
        min_change: float = 0.02,
        transfer_strength: tuple[float, float] = (0.4, 1.0),
    ) -> None:
        unknown = set(methods) - set(METHODS)
        if unknown or not methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}")
        self.methods = tuple(methods)
        self.weights = torch.tensor(weights if weights is not None else [1.0] * len(methods), dtype=torch.float)
        if self.weights.numel() != len(self.methods) or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("weights must be one non-negative number per method, not all zero")
        self.retouch_strength = retouch_strength
        self.min_change = min_change
        self.transfer_strength = transfer_strength

    def apply(self, method: str, real: Tensor, mask: Tensor, ref: Tensor, ref_mask: Tensor, g: torch.Generator) -> Tensor:
        if method == "retouch":
            return retouch(real, mask, g, self.retouch_strength)
        fn = {"lab": transfer_lab_mean_std, "rgb": transfer_rgb_mean_cov, "histogram": transfer_histogram}[method]
        lo, hi = self.transfer_strength
        t = lo + (hi - lo) * torch.rand((), generator=g).item()
        return real + t * (fn(real, mask, ref, ref_mask) - real)

    def __call__(self, real: Tensor, mask: Tensor, ref: Tensor, ref_mask: Tensor, generator: torch.Generator) -> Tensor:
        fg = mask >= 0.5
        comp = real
        for _ in range(5):
            i = int(torch.multinomial(self.weights, 1, generator=generator))
            comp = self.apply(self.methods[i], real, mask, ref, ref_mask, generator)
            if not fg.any() or (comp - real).abs()[fg.expand_as(real)].mean() >= self.min_change:
                break
        return comp
