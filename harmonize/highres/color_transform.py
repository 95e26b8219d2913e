"""Carry a low-resolution colour change back to full resolution.

:func:`fit_color_transform` fits, at low resolution, a per-pixel affine colour transform
(3 x 4 coefficients) that maps a network's input to its output, by weighted local linear
regression over a window (a guided filter), regularised towards one transform fitted over the
whole foreground. :func:`apply_color_transform` upsamples the coefficients and applies them to
the full-resolution image in row strips; :func:`upsample_blend` is the plain-upsampling
baseline. See ``docs/high_resolution.md``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..data.transforms import unit_float


def _box_sum(x: Tensor, radius: int, dim: int) -> tuple[Tensor, Tensor]:
    """Sums over ``[i - r, i + r]`` along ``dim`` (clipped to the tensor), and how many terms each has."""
    n = x.shape[dim]
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    c = torch.cat([zero, x.cumsum(dim)], dim=dim)
    i = torch.arange(n, device=x.device)
    hi, lo = (i + radius + 1).clamp_max(n), (i - radius).clamp_min(0)
    if dim in (-1, x.dim() - 1):
        return c[..., hi] - c[..., lo], (hi - lo).to(x.dtype)
    return c[..., hi, :] - c[..., lo, :], (hi - lo).to(x.dtype)


def _box(x: Tensor, radius: int) -> Tensor:
    """Mean over a ``(2r+1)^2`` window; at the borders, over the pixels inside the image.

    Separable running sums (cumulative sums), so the cost does not grow with the radius.

    Shape:
        x: (B, C, h, w) -> (B, C, h, w)
    """
    if radius <= 0:
        return x
    out = torch.empty_like(x)
    for i in range(0, x.shape[1], 4):  # a few channels at a time: the running sums take 5x their input
        s, ny = _box_sum(x[:, i : i + 4], radius, -2)
        s, nx = _box_sum(s, radius, -1)
        torch.div(s, ny[:, None] * nx, out=out[:, i : i + 4])
    return out


def fit_color_transform(
    source: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    radius: int = 32,
    eps: float = 1e-3,
) -> Tensor:
    """Fit a smooth per-pixel affine colour transform mapping ``source`` to ``target``.

    For every pixel ``p`` the coefficients ``T(p) = [A | b]`` (3 x 4) minimise, over the
    ``(2r+1)^2`` window ``W(p)`` around it (weights ``w``, ``x~ = [rgb, 1]``)::

        mean_{q in W(p)} w_q |T x~_q - y_q|^2  +  eps |T - T_g|^2

    with ``T_g`` the transform fitted the same way over all pixels of the image (weighted
    by ``w``, regularised towards the identity). In closed form, with the window moments
    ``M = mean(w x~ x~^T)`` (4 x 4) and ``R = mean(w y x~^T)`` (3 x 4)::

        T = (R + eps T_g) (M + eps I)^-1

    A textured window follows the local change; a flat window, or one with little or no
    weight (background), falls back to the global transform. The coefficients are then
    averaged over the window once more (the guided filter's second pass), which makes them
    smooth enough to be upsampled bilinearly.

    Args:
        source: the network's input (low resolution), in 0..1.
        target: the network's output for it.
        weight: where the fit holds (the network's foreground mask); all pixels if None.
        radius: window radius ``r`` in pixels of ``source``.
        eps: regularisation towards the global transform (0..1 colour units squared).

    Returns:
        Coefficients ``[A | b]`` row by row: channel ``4 i + j`` is ``A[i, j]`` (``j < 3``)
        or ``b[i]`` (``j = 3``); apply them with :func:`apply_color_transform`.

    Shape:
        source, target: (B, 3, h, w); weight: (B, 1, h, w) -> (B, 12, h, w)

    Example:
        >>> x = torch.rand(1, 3, 64, 64)
        >>> coeffs = fit_color_transform(x, 0.5 * x + 0.1)
        >>> torch.allclose(apply_color_transform(x, coeffs), 0.5 * x + 0.1, atol=1e-3)
        True
    """
    if source.dim() != 4 or source.shape[1] != 3 or target.shape != source.shape:
        raise ValueError(
            f"source and target must both be (B, 3, h, w), got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    b, _, h, w = source.shape
    x = source.double()
    y = target.double()
    wt = torch.ones_like(x[:, :1]) if weight is None else weight.double().expand(b, 1, h, w)
    xt = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (B, 4, h, w)
    xx = (xt[:, :, None] * xt[:, None, :] * wt[:, None]).flatten(1, 2)  # (B, 16, h, w)
    yx = (y[:, :, None] * xt[:, None, :] * wt[:, None]).flatten(1, 2)  # (B, 12, h, w)
    eye34 = torch.eye(3, 4, dtype=x.dtype, device=x.device)
    eye4 = torch.eye(4, dtype=x.dtype, device=x.device)

    # Global fit over the whole foreground, gently regularised towards the identity.
    total = wt.sum(dim=(2, 3)).clamp_min(1e-12)[..., None]  # (B, 1, 1)
    mg = xx.sum(dim=(2, 3)).view(b, 4, 4) / total
    rg = yx.sum(dim=(2, 3)).view(b, 3, 4) / total
    lam_g = 1e-6 * eye4
    t_g = torch.linalg.solve(mg + lam_g, (rg + eye34 @ lam_g).transpose(1, 2)).transpose(1, 2)  # (B, 3, 4)

    # Local fits, regularised towards the global one.
    stats = _box(torch.cat([xx, yx], dim=1), radius)
    m = stats[:, :16].permute(0, 2, 3, 1).reshape(b, h, w, 4, 4)
    r = stats[:, 16:].permute(0, 2, 3, 1).reshape(b, h, w, 3, 4)
    rhs = r + eps * t_g[:, None, None]
    t = torch.linalg.solve(m + eps * eye4, rhs.transpose(-1, -2)).transpose(-1, -2)  # (B, h, w, 3, 4)
    t = t.reshape(b, h, w, 12).permute(0, 3, 1, 2)
    return _box(t, radius).to(source.dtype).contiguous()


def _source_index(n_out: int, n_in: int, start: int, stop: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear (``align_corners=False``) source indices and weights of outputs ``start..stop-1``."""
    d = torch.arange(start, stop, device=device, dtype=torch.float32)
    src = ((d + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    return i0, i1, src - i0


def _strips(
    low: Tensor, size: tuple[int, int], box: tuple[int, int, int, int], max_elems: int
) -> Iterator[tuple[slice, slice, Tensor]]:
    """Bilinear upsampling of ``low`` (B, C, h, w) to ``size``, strip by strip inside ``box``.

    Yields ``(rows, cols, strip)``; the strips equal the matching part of
    ``F.interpolate(low, size, mode="bilinear", align_corners=False)`` without ever building it.
    Each row of ``low`` is interpolated along the columns once, when the first strip that
    needs it comes; the output rows between two of them are one broadcast ``lerp``: no
    full-size gathers, and nothing larger than a strip is allocated.
    """
    b, c, h, w = low.shape
    height, width = size
    y0, y1, x0, x1 = box
    i0, i1, fx = _source_index(width, w, x0, x1, low.device)
    fx = fx.to(low.dtype)
    rows_per_strip = max(1, max_elems // max(1, b * c * (x1 - x0)))
    first, cols = 0, low.new_empty(b, c, 0, x1 - x0)  # rows first.. of low, interpolated along the columns
    for top in range(y0, y1, rows_per_strip):
        bottom = min(y1, top + rows_per_strip)
        j0, j1, fy = _source_index(height, h, top, bottom, low.device)
        fy = fy.to(low.dtype)[:, None]
        lo, hi = int(j0[0]), int(j1[-1]) + 1
        keep = cols[:, :, max(0, lo - first) :]
        start = max(lo, first + cols.shape[2])
        # Advanced indexing: index_select along a middle dimension is far slower on CPU.
        sub = low[:, :, start:hi]
        cols = torch.cat([keep, torch.lerp(sub[..., i0], sub[..., i1], fx)], dim=2) if start < hi else keep
        first = lo
        strip = torch.empty(b, c, bottom - top, x1 - x0, dtype=low.dtype, device=low.device)
        # j0 never decreases: the runs of output rows that share their two source rows.
        starts = [0, *(torch.nonzero(j0[1:] != j0[:-1]).flatten() + 1).tolist(), bottom - top]
        for a, z in zip(starts[:-1], starts[1:]):
            k0, k1 = int(j0[a]) - first, int(j1[a]) - first
            torch.lerp(cols[:, :, k0 : k0 + 1], cols[:, :, k1 : k1 + 1], fy[a:z], out=strip[:, :, a:z])
        yield slice(top, bottom), slice(x0, x1), strip


def _mask_box(mask: Tensor | None, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Rows and columns ``(y0, y1, x0, x1)`` holding every pixel with mask > 0 (None: none)."""
    if mask is None:
        return 0, size[0], 0, size[1]
    fg = (mask > 0).flatten(0, 1).any(dim=0)  # (H, W)
    rows = torch.nonzero(fg.any(dim=1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(fg.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _blend_(out: Tensor, value: Tensor, x: Tensor, mask: Tensor | None, rows: slice, cols: slice) -> None:
    """``out[rows, cols] = value * m + x * (1 - m)``; where m is 0 the image stays bit for bit.

    ``x`` is the image's strip in 0..1 (:func:`~harmonize.data.transforms.unit_float`). ``torch.lerp`` is exact at both ends
    for finite values: weight 0 gives ``x``, weight 1 gives ``value``; ``torch.where`` keeps
    the background even when ``value`` is not finite. A uint8 ``out`` takes the result times
    255, rounded; ``round(v / 255 * 255) == v`` for every uint8 ``v``, so where m is 0 it is
    the image's own value.
    """
    if mask is not None:
        m = mask[..., rows, cols]
        value = torch.where(m > 0, torch.lerp(x, value, unit_float(m)), x)
    if out.dtype == torch.uint8:
        value = value.mul_(255.0).round_().clamp_(0, 255)  # value is a fresh strip here, never x
    out[..., rows, cols] = value


def _check_apply(image: Tensor, mask: Tensor | None) -> None:
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != image.shape[-2:]):
        raise ValueError(f"mask must be (B, 1, H, W) of the image's size, got {tuple(mask.shape)}")


def apply_color_transform(
    image: Tensor, coeffs: Tensor, mask: Tensor | None = None, max_strip_elems: int = 1 << 20
) -> Tensor:
    """Apply per-pixel affine colour coefficients, upsampled bilinearly, at full resolution.

    ``out = clamp(A(p) rgb(p) + b(p), 0, 1)`` with ``[A | b]`` the coefficients of
    :func:`fit_color_transform` upsampled to the image's size; computed in row strips of at
    most ``max_strip_elems`` coefficient values, so memory stays near the size of the image
    itself. With a ``mask`` the result is blended, ``out * m + image * (1 - m)``, and only
    the rows and columns holding the foreground are computed.

    ``image`` is floating point in 0..1, or uint8 in 0..255: a uint8 image is converted to
    float32 one strip at a time and the result comes back as uint8 (rounded), never as a
    whole-image float copy. ``mask`` is floating point in 0..1 or uint8 in 0..255. Where the
    mask is 0 the image comes back bit for bit.

    Shape:
        image: (B, 3, H, W); coeffs: (B, 12, h, w); mask: (B, 1, H, W) -> (B, 3, H, W), image's dtype
    """
    _check_apply(image, mask)
    if coeffs.dim() != 4 or coeffs.shape[1] != 12 or coeffs.shape[0] != image.shape[0]:
        raise ValueError(f"coeffs must be (B, 12, h, w) with B = {image.shape[0]}, got {tuple(coeffs.shape)}")
    size = (image.shape[-2], image.shape[-1])
    out = image.clone()
    box = _mask_box(mask, size)
    if box is None:
        return out
    coeffs = coeffs.to(image.dtype if image.is_floating_point() else torch.float32)
    for rows, cols, strip in _strips(coeffs, size, box, max_strip_elems):
        x = unit_float(image[..., rows, cols])
        t = strip.unflatten(1, (3, 4))  # (B, 3, 4, h, w)
        y = t[:, :, 3].addcmul_(t[:, :, 0], x[:, 0:1]).addcmul_(t[:, :, 1], x[:, 1:2]).addcmul_(t[:, :, 2], x[:, 2:3])
        _blend_(out, y.clamp_(0, 1), x, mask, rows, cols)
    return out


def upsample_blend(image: Tensor, low: Tensor, mask: Tensor | None = None, max_strip_elems: int = 1 << 20) -> Tensor:
    """The baseline: bilinear upsampling of a low-resolution result, blended with the mask.

    ``image`` and ``mask`` as in :func:`apply_color_transform` (uint8 in, uint8 out).

    Shape:
        image: (B, 3, H, W); low: (B, 3, h, w); mask: (B, 1, H, W) -> (B, 3, H, W), image's dtype
    """
    _check_apply(image, mask)
    size = (image.shape[-2], image.shape[-1])
    out = image.clone()
    box = _mask_box(mask, size)
    if box is None:
        return out
    low = low.to(image.dtype if image.is_floating_point() else torch.float32)
    for rows, cols, strip in _strips(low, size, box, max_strip_elems):
        _blend_(out, strip.clamp_(0, 1), unit_float(image[..., rows, cols]), mask, rows, cols)
    return out


