"""Families of foreground mismatches, each a seeded function, and a synthesizer that draws from them.

Real composites differ from their scene in more ways than one colour transfer covers. Each
family here makes one kind of mismatch; every function takes the real photo ``image``
(3, H, W) in 0..1, its ``mask`` (1, H, W) and a ``generator``, and returns a composite
(3, H, W) in 0..1 whose background is bit-for-bit the real photo's. Draws come from
``generator`` only, so a seed gives the same composite.

- :func:`global_edit`: a photo edit of the object (exposure, white balance, gamma, contrast,
  saturation, a random monotone tone curve per channel as a colour grade or LUT does).
- :func:`stat_transfer`: the object takes another photo's foreground statistics (Lab
  mean/std, per-channel histogram matching, iterative distribution transfer).
- :func:`relight`: the object was lit otherwise (colour temperature, intensity, flat vs hard
  light, a gradient or a cast shadow across it), computed in linear light.
- :func:`local_variation`: mild, spatially smooth changes of gain, tint and saturation.

:data:`FAMILIES` names them with one call signature, ``fn(image, mask, ref, ref_mask,
generator)``; the three transfers are separate entries so that one can be held out.
:data:`TRAIN_FAMILIES` are for training, :data:`HELDOUT_FAMILIES` only for the robustness
test list (:mod:`harmonize.data.robustness`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .color import _linear_to_srgb, _srgb_to_linear
from .composite import (
    CompositeSynthesizer,
    _paste,
    _region_pixels,
    transfer_histogram,
    transfer_lab_mean_std,
)

__all__ = [
    "global_edit",
    "stat_transfer",
    "transfer_idt",
    "relight",
    "kelvin_gains",
    "local_variation",
    "FamilyFn",
    "FAMILIES",
    "TRAIN_FAMILIES",
    "HELDOUT_FAMILIES",
    "FamilySynthesizer",
    "check_families",
]

FamilyFn = Callable[[Tensor, Tensor, Tensor, Tensor, torch.Generator], Tensor]
"""``fn(image, mask, ref, ref_mask, generator) -> composite``; ``ref``/``ref_mask`` may be ignored."""

TRANSFER_METHODS = ("lab", "histogram", "idt")
_LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 weights, for linear RGB


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _fg_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of (1, H, W) ``x`` over the foreground (the whole image if it is empty)."""
    fg = mask >= 0.5
    return x[fg].mean() if fg.any() else x.mean()


def _bbox(mask: Tensor) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the foreground, end-exclusive; the whole image if it is empty."""
    fg = mask[0] >= 0.5
    if not fg.any():
        return 0, mask.shape[-2], 0, mask.shape[-1]
    ys, xs = fg.any(1).nonzero()[:, 0], fg.any(0).nonzero()[:, 0]
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def _object_coords(mask: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(H, W) coordinates centred on the foreground's box, scaled so its longer side spans 1."""
    h, w = mask.shape[-2:]
    y0, y1, x0, x1 = _bbox(mask)
    ext = max(y1 - y0, x1 - x0, 1)
    ys = (torch.arange(h, dtype=dtype) + 0.5 - (y0 + y1) / 2) / ext
    xs = (torch.arange(w, dtype=dtype) + 0.5 - (x0 + x1) / 2) / ext
    return ys[:, None].expand(h, w), xs[None, :].expand(h, w)


def _smooth_field(mask: Tensor, channels: int, cells: tuple[int, int], g: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Random smooth field in about -1..1 over the foreground's box, constant beyond it.

    Shape:
        -> (channels, H, W)
    """
    h, w = mask.shape[-2:]
    y0, y1, x0, x1 = _bbox(mask)
    grid = torch.rand((1, channels, cells[0] + 1, cells[1] + 1), generator=g, dtype=dtype) * 2 - 1
    field = F.interpolate(grid, size=(y1 - y0, x1 - x0), mode="bicubic", align_corners=True)
    return F.pad(field, (x0, w - x1, y0, h - y1), mode="replicate")[0]


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of (C, H, W) ``x`` with ``sigma`` in pixels, at most 64 px of work per side."""
    h, w = x.shape[-2:]
    scale = min(1.0, 64.0 / max(h, w))
    small = F.interpolate(x[None], scale_factor=scale, mode="area") if scale < 1 else x[None]
    s = max(sigma * scale, 0.5)
    r = max(1, math.ceil(3 * s))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    small = F.conv2d(F.pad(small, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    small = F.conv2d(F.pad(small, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0] if scale < 1 else small[0]


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear ``fp(x)`` through the points ``(xp, fp)`` (``xp`` non-decreasing), flat beyond."""
    idx = torch.searchsorted(xp.contiguous(), x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    t = ((x - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0, 1)
    return y0 + t * (y1 - y0)


# --------------------------------------------------------------------------- global photo edits


def _monotone_curve(g: torch.Generator, knots: int, spread: float, dtype: torch.dtype) -> Tensor:
    """Values at ``knots`` evenly spaced inputs of a random increasing curve from 0..1 onto 0..1."""
    steps = torch.exp(torch.randn(knots - 1, generator=g, dtype=dtype) * spread)
    return torch.cat([torch.zeros(1, dtype=dtype), steps.cumsum(0) / steps.sum()])


def global_edit(image: Tensor, mask: Tensor, generator: torch.Generator, strength: float = 1.0) -> Tensor:
    """A random photo edit of the foreground, as a raw converter, a colour grade or a LUT makes.

    Each of six edits is on with probability 0.6 (at least one always is), in this order,
    ``s = strength`` scaling every range: exposure ``2**U(-0.7s, 0.7s)``; white balance, gains
    ``2**U(-0.3s, 0.3s)`` per channel at constant luminance; gamma ``2**U(-0.45s, 0.45s)``;
    contrast ``2**U(-0.5s, 0.4s)`` about the object's mean grey; saturation
    ``2**U(-1.0s, 0.6s)``; a tone curve per channel, piecewise linear through 6 increasing
    knots (log-normal steps, sigma ``0.6s``), blended with a curve shared by the channels and
    with the identity (blends of increasing curves stay increasing), black and white points
    moved by up to ``0.08s``.

    Args:
        image: the real photo in 0..1.
        mask: its foreground, 1 inside.
        generator: the source of every draw.
        strength: scale of every range.

    Returns:
        The composite, the background bit-for-bit ``image``.

    Shape:
        image: (3, H, W), mask: (1, H, W) -> (3, H, W)
    """
    g, s, dt = generator, strength, image.dtype
    on = torch.rand(6, generator=g) < 0.6
    if not on.any():
        on[int(torch.randint(6, (), generator=g))] = True
    exposure = 2 ** _uniform(g, -0.7 * s, 0.7 * s)
    gains = torch.tensor([2 ** _uniform(g, -0.3 * s, 0.3 * s) for _ in range(3)], dtype=dt)
    gains = gains / (torch.tensor(_LUMA, dtype=dt) @ gains)
    gamma = 2 ** _uniform(g, -0.45 * s, 0.45 * s)
    contrast = 2 ** _uniform(g, -0.5 * s, 0.4 * s)
    saturation = 2 ** _uniform(g, -1.0 * s, 0.6 * s)
    shared = _monotone_curve(g, 6, 0.6 * s, dt)
    curves = torch.stack([_monotone_curve(g, 6, 0.6 * s, dt) for _ in range(3)])
    mix = torch.rand(3, generator=g, dtype=dt)[:, None]  # per channel: own curve vs shared one
    amount = _uniform(g, 0.5, 1.0)
    black, white = _uniform(g, 0.0, 0.08 * s), 1 - _uniform(g, 0.0, 0.08 * s)

    x = image
    if on[0]:
        x = x * exposure
    if on[1]:
        x = x * gains[:, None, None]
    if on[2]:
        x = x.clamp(0, 1) ** gamma
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    if on[3]:
        m = _fg_mean(grey, mask)
        x = m + (x - m) * contrast
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    if on[4]:
        x = grey + (x - grey) * saturation
    if on[5]:
        knots = torch.linspace(0, 1, 6, dtype=dt)
        lut = knots + amount * (mix * curves + (1 - mix) * shared - knots)
        lut = black + (white - black) * lut
        x = x.clamp(0, 1)
        x = torch.stack([_interp(x[c], knots, lut[c]) for c in range(3)])
    return _paste(image, x, mask)


# --------------------------------------------------------------------------- statistics transfer


def _random_rotation(g: torch.Generator) -> Tensor:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed), float64."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _quantiles(px: Tensor, levels: int, most: int = 16384) -> Tensor:
    """``levels`` evenly spaced quantiles of each row of (C, N) ``px``, from at most ``most`` of its columns.

    Shape:
        (C, N) -> (C, levels)
    """
    px = px[:, :: max(1, -(-px.shape[1] // most))]  # every k-th pixel: quantiles barely move
    srt = px.sort(dim=1).values
    pos = torch.linspace(0, px.shape[1] - 1, levels, dtype=px.dtype)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=px.shape[1] - 1)
    w = pos - lo
    return srt[:, lo] + w * (srt[:, hi] - srt[:, lo])


def transfer_idt(
    image: Tensor,
    mask: Tensor,
    ref: Tensor,
    ref_mask: Tensor,
    generator: torch.Generator,
    iterations: int = 10,
    quantiles: int = 256,
) -> Tensor:
    """Iterative distribution transfer (Pitié, Kokaram & Dahyot 2005) of the foreground onto ``ref``'s region.

    Each iteration rotates RGB randomly and matches every rotated axis of the foreground's
    pixels to the reference region's by 1-D quantile mapping (``quantiles`` levels, estimated
    on at most 16384 pixels of each region); the
    whole 3-D colour distribution converges to the reference's. No regraining.

    Args:
        image: the real photo in 0..1.
        mask: its foreground.
        ref: the photo whose region gives the colours.
        ref_mask: that region.
        generator: draws the rotations.
        iterations: number of rotations.
        quantiles: levels of each 1-D mapping.

    Shape:
        image, ref: (3, H, W), masks: (1, H, W) -> (3, H, W)
    """
    soft = mask[0].reshape(-1) > 0  # every pixel the paste keeps something of
    if not soft.any():
        soft = torch.ones_like(soft)
    sel = (mask[0].reshape(-1) >= 0.5)[soft]  # the pixels whose statistics are matched
    if not sel.any():
        sel = torch.ones_like(sel)
    dst = _region_pixels(ref, ref_mask).float()
    flat = image.reshape(3, -1).float()
    px = flat[:, soft]
    for _ in range(iterations):
        rot = _random_rotation(generator).float()
        proj, pd = rot @ px, rot @ dst
        qs, qd = _quantiles(proj[:, sel], quantiles), _quantiles(pd, quantiles)
        moved = torch.stack([_interp(proj[k], qs[k], qd[k]) for k in range(3)])
        px = px + rot.T @ (moved - proj)
    flat = flat.clone()
    flat[:, soft] = px
    return _paste(image, flat.reshape(image.shape).to(image.dtype), mask)


def stat_transfer(
    image: Tensor,
    mask: Tensor,
    ref: Tensor,
    ref_mask: Tensor,
    generator: torch.Generator,
    method: str | None = None,
    amount: tuple[float, float] = (0.4, 1.0),
) -> Tensor:
    """Give the foreground the colour statistics of another photo's foreground, in part.

    Methods: ``"lab"``, Lab mean and std (Reinhard et al. 2001); ``"histogram"``, per-channel
    cumulative histogram matching; ``"idt"``, iterative distribution transfer
    (:func:`transfer_idt`), the three of the four iHarmony4 used that are not the RGB
    mean/covariance map. A fraction ``U(*amount)`` of the change is applied (transfers from
    an unrelated photo are often harsher than real composites).

    Args:
        image: the real photo in 0..1.
        mask: its foreground.
        ref: the photo whose foreground gives the statistics.
        ref_mask: that foreground.
        generator: the source of every draw.
        method: one of ``("lab", "histogram", "idt")``; ``None`` draws one uniformly.
        amount: range of the fraction of the transfer applied.

    Shape:
        image, ref: (3, H, W), masks: (1, H, W) -> (3, H, W)
    """
    if method is None:
        method = TRANSFER_METHODS[int(torch.randint(len(TRANSFER_METHODS), (), generator=generator))]
    if method == "lab":
        out = transfer_lab_mean_std(image, mask, ref, ref_mask)
    elif method == "histogram":
        out = transfer_histogram(image, mask, ref, ref_mask)
    elif method == "idt":
        out = transfer_idt(image, mask, ref, ref_mask, generator)
    else:
        raise ValueError(f"method must be one of {TRANSFER_METHODS} or None, got {method!r}")
    t = _uniform(generator, *amount)
    return _paste(image, image + t * (out - image), mask)


# --------------------------------------------------------------------------- light


def _kelvin_to_xy(kelvin: float) -> tuple[float, float]:
    """CIE 1931 xy of a black body at ``kelvin`` (Kim et al. 2002 cubic fit, 1667-25000 K)."""
    t = min(max(kelvin, 1667.0), 25000.0)
    if t <= 4000:
        x = -0.2661239e9 / t**3 - 0.2343589e6 / t**2 + 0.8776956e3 / t + 0.179910
    else:
        x = -3.0258469e9 / t**3 + 2.1070379e6 / t**2 + 0.2226347e3 / t + 0.240390
    if t <= 2222:
        y = -1.1063814 * x**3 - 1.34811020 * x**2 + 2.18555832 * x - 0.20219683
    elif t <= 4000:
        y = -0.9549476 * x**3 - 1.37418593 * x**2 + 2.09137015 * x - 0.16748867
    else:
        y = 3.0817580 * x**3 - 5.87338670 * x**2 + 3.75112997 * x - 0.37001483
    return x, y


def kelvin_gains(kelvin: float, reference: float = 6500.0) -> Tensor:
    """Linear-RGB gains that turn light of ``reference`` kelvin into light of ``kelvin``, at equal luminance.

    Shape:
        -> (3,) float64
    """
    xyz_to_rgb = torch.tensor(
        [[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560], [0.0556434, -0.2040259, 1.0572252]],
        dtype=torch.float64,
    )

    def rgb(k: float) -> Tensor:
        x, y = _kelvin_to_xy(k)
        return xyz_to_rgb @ torch.tensor([x / y, 1.0, (1 - x - y) / y], dtype=torch.float64)

    gains = rgb(kelvin) / rgb(reference)
    return gains / (torch.tensor(_LUMA, dtype=torch.float64) @ gains)


def relight(image: Tensor, mask: Tensor, generator: torch.Generator, strength: float = 1.0) -> Tensor:
    """Light the foreground otherwise, in linear RGB: as if it were shot under other light.

    In order, ``s = strength`` scaling the ranges: flat vs hard light, the contrast of the
    object's large-scale shading (log luminance blurred at 6% of its size; texture kept)
    scaled by ``2**U(-0.9s, 0.6s)`` (below 1 flat, overcast; above 1 hard, sunlit); colour
    temperature, the light's colour moved from 6500 K to a log-uniform ``2800..11000 K``
    (blended toward none by ``1 - s``); intensity ``2**U(-1.0s, 0.8s)``; and across the
    object, with probabilities 0.25 / 0.4 / 0.35, nothing, a gradient of ``U(0.5s, 1.6s)``
    stops in a random direction, or a cast shadow: a soft-edged half-plane through the object
    (edge width ``U(0.02, 0.3)`` of its size) ``U(0.5s, 1.6s)`` stops darker and lit by
    bluish skylight (``8000..14000 K``).

    Args:
        image: the real photo in 0..1 (sRGB).
        mask: its foreground.
        generator: the source of every draw.
        strength: scale of every range.

    Shape:
        image: (3, H, W), mask: (1, H, W) -> (3, H, W)
    """
    g, s, dt = generator, strength, image.dtype
    hardness = 2 ** _uniform(g, -0.9 * s, 0.6 * s)
    kelvin = math.exp(_uniform(g, math.log(2800), math.log(11000)))
    intensity = 2 ** _uniform(g, -1.0 * s, 0.8 * s)
    mode = _uniform(g, 0.0, 1.0)
    theta = _uniform(g, 0.0, 2 * math.pi)
    stops = _uniform(g, 0.5 * s, 1.6 * s)
    offset = _uniform(g, -0.3, 0.3)
    softness = _uniform(g, 0.02, 0.3)
    sky = math.exp(_uniform(g, math.log(8000), math.log(14000)))

    lin = _srgb_to_linear(image.clamp(0, 1))
    luma = torch.tensor(_LUMA, dtype=dt)
    log_y = torch.log(torch.einsum("c,chw->hw", luma, lin)[None] + 1e-3)
    # flat vs hard: rescale the object's shading about its mean, keep the detail
    fg = (mask >= 0.5).to(dt)
    y0, y1, x0, x1 = _bbox(mask)
    sigma = 0.06 * max(y1 - y0, x1 - x0)
    shading = _blur(log_y * fg, sigma) / _blur(fg, sigma).clamp(min=1e-3)
    m = _fg_mean(log_y, mask)
    lin = lin * torch.exp((hardness - 1) * (shading - m))
    lin = lin * (kelvin_gains(kelvin) ** s).to(dt)[:, None, None] * intensity
    if mode >= 0.25:
        ys, xs = _object_coords(mask, dt)
        u = xs * math.cos(theta) + ys * math.sin(theta)
        if mode < 0.65:  # gradient
            lin = lin * (2 ** (stops * u))[None]
        else:  # cast shadow
            inside = torch.sigmoid((u - offset) / (softness / 4))[None]
            shadow = kelvin_gains(sky).to(dt)[:, None, None] * 2**-stops
            lin = lin * (1 + inside * (shadow - 1))
    return _paste(image, _linear_to_srgb(lin.clamp(0, 1)), mask)


# --------------------------------------------------------------------------- local variation


def local_variation(image: Tensor, mask: Tensor, generator: torch.Generator, strength: float = 1.0) -> Tensor:
    """Mild, spatially smooth changes across the foreground: gain, tint and saturation.

    Random smooth fields over the object's box (bicubic through a grid of 2..5 by 2..5
    cells): a shared gain of ``±U(0.2s, 0.5s)`` stops, a gain per channel of
    ``±U(0.05s, 0.2s)`` stops (tint) and a saturation factor of ``2**(±U(0, 0.5s))``.

    Args:
        image: the real photo in 0..1.
        mask: its foreground.
        generator: the source of every draw.
        strength: scale of every range.

    Shape:
        image: (3, H, W), mask: (1, H, W) -> (3, H, W)
    """
    g, s, dt = generator, strength, image.dtype
    cells = (int(torch.randint(2, 6, (), generator=g)), int(torch.randint(2, 6, (), generator=g)))
    a_gain, a_tint, a_sat = _uniform(g, 0.2 * s, 0.5 * s), _uniform(g, 0.05 * s, 0.2 * s), _uniform(g, 0.0, 0.5 * s)
    fields = _smooth_field(mask, 5, cells, g, dt)  # gain, 3 tints, saturation
    x = image * (2 ** (a_gain * fields[:1] + a_tint * fields[1:4]))
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = grey + (x - grey) * 2 ** (a_sat * fields[4:5])
    return _paste(image, x, mask)


# --------------------------------------------------------------------------- registry and synthesizer


def _no_ref(fn: Callable[[Tensor, Tensor, torch.Generator], Tensor]) -> FamilyFn:
    return lambda image, mask, ref, ref_mask, generator: fn(image, mask, generator)


def _transfer(method: str) -> FamilyFn:
    return lambda image, mask, ref, ref_mask, generator: stat_transfer(image, mask, ref, ref_mask, generator, method)


FAMILIES: dict[str, FamilyFn] = {
    "global_edit": _no_ref(global_edit),
    "stat_lab": _transfer("lab"),
    "stat_histogram": _transfer("histogram"),
    "stat_idt": _transfer("idt"),
    "relight": _no_ref(relight),
    "local_variation": _no_ref(local_variation),
    # harmonize 0.1's synthesis (Lab / RGB mean-covariance / histogram transfer, photographic retouch)
    "classic": CompositeSynthesizer(),
}
"""Family name -> ``fn(image, mask, ref, ref_mask, generator) -> composite`` at default strength.

``classic`` is :class:`~harmonize.data.CompositeSynthesizer` (the 0.1 training recipe); its
RGB mean/covariance transfer is a one-step relative of ``stat_idt``."""

TRAIN_FAMILIES = ("global_edit", "stat_lab", "stat_histogram")
"""Families training may use."""

HELDOUT_FAMILIES = ("stat_idt", "relight", "local_variation")
"""Families kept for the robustness test list: training must not use them."""


def check_families(families: Sequence[str]) -> tuple[str, ...]:
    """``families`` as a tuple, or a ValueError unless it is a non-empty list of names in :data:`FAMILIES`."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"families must be a non-empty subset of {tuple(FAMILIES)}, got {list(families)}")
    return tuple(families)


class FamilySynthesizer:
    """Make a composite by one family drawn from a chosen set, with weights.

    Called like :class:`~harmonize.data.CompositeSynthesizer`, so it can be handed to
    :class:`~harmonize.data.SyntheticCompositeDataset`; :meth:`draw` also says which family
    made the composite. The default set is :data:`TRAIN_FAMILIES`.

    Args:
        families: names in :data:`FAMILIES`.
        weights: relative probability of each family (equal if ``None``).
        min_change: redraw (up to 4 times) when the foreground's mean absolute change is
            below this, so the drawn edit is never nearly nothing.
        mild: fraction of composites whose change is then scaled down, ``real + t (comp -
            real)`` with ``t`` uniform in [0, 1): composites from untouched to fully edited,
            so a model also learns to leave a nearly fitting foreground nearly alone.
        identity: fraction of composites that are the real photo itself, unedited (family
            name ``"identity"``): a model learns to leave a fitting foreground as it is.

    Example:
        >>> synth = FamilySynthesizer(["global_edit", "relight"], weights=[2, 1])
        >>> comp, family = synth.draw(real, mask, ref, ref_mask, torch.Generator().manual_seed(0))
    """

    def __init__(
        self,
        families: Sequence[str] = TRAIN_FAMILIES,
        weights: Sequence[float] | None = None,
        min_change: float = 0.02,
        mild: float = 0.0,
        identity: float = 0.0,
    ) -> None:
        self.families = check_families(families)
        for name, v in (("mild", mild), ("identity", identity)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.mild, self.identity = mild, identity
        self.weights = torch.tensor(weights if weights is not None else [1.0] * len(families), dtype=torch.float)
        if self.weights.numel() != len(self.families) or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("weights must be one non-negative number per family, not all zero")
        self.min_change = min_change

    def draw(
        self, real: Tensor, mask: Tensor, ref: Tensor, ref_mask: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, str]:
        """``(composite, family name)``; ``ref``/``ref_mask`` are another photo's foreground.

        Without ``mild`` and ``identity`` it draws from ``generator`` exactly as before they
        existed, so the same seed gives the same composites.

        Shape:
            real, ref: (3, H, W), masks: (1, H, W) -> (3, H, W)
        """
        if self.identity > 0 and float(torch.rand((), generator=generator)) < self.identity:
            return real.clone(), "identity"
        fg = (mask >= 0.5).expand_as(real)
        comp, name = real, self.families[0]
        for _ in range(5):
            name = self.families[int(torch.multinomial(self.weights, 1, generator=generator))]
            comp = FAMILIES[name](real, mask, ref, ref_mask, generator)
            if not fg.any() or (comp - real).abs()[fg].mean() >= self.min_change:
                break
        if self.mild > 0 and float(torch.rand((), generator=generator)) < self.mild:
            t = float(torch.rand((), generator=generator))
            comp = real + t * (comp - real)
        return comp, name

    def __call__(self, real: Tensor, mask: Tensor, ref: Tensor, ref_mask: Tensor, generator: torch.Generator) -> Tensor:
        return self.draw(real, mask, ref, ref_mask, generator)[0]
