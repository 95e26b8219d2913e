"""Reference "models" that give every results table its floor: no network, no weights.

- ``composite``: returns the input composite unchanged. Its scores are the distance
  between composite and real image, the number any harmonization method must beat.
- ``reinhard``: classical colour transfer (Reinhard et al., "Color Transfer between
  Images", IEEE CG&A 2001) inside the image: the foreground's CIE Lab mean and standard
  deviation, per channel, are set to those of the background of the same image.

Both follow the contract of every model, ``forward(image, mask) -> image`` with the
background returned bit for bit, and pass through ``create_model`` like the others. They
have no parameters and need no weights (``needs_weights = False``):
``create_model("reinhard", pretrained=True)`` simply returns the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._builder import build_model_with_cfg
from .._pretrained import PretrainedCfg
from .._registry import generate_default_cfgs, register_model
from ..data.color import lab_to_rgb, rgb_to_lab
from ._base import blend, check_inputs

__all__ = ["Composite", "Reinhard", "reinhard_transfer"]


class Composite(nn.Module):
    """The identity: returns (a copy of) the composite. The floor of every table."""

    needs_weights = False

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        check_inputs(image, mask)
        return image.clone()


def _weighted_mean_std(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image, per-channel mean and std of x (B, C, H, W) weighted by w (B, 1, H, W)."""
    total = w.sum(dim=(2, 3), keepdim=True)
    denom = total.clamp(min=1e-6)
    mean = (x * w).sum(dim=(2, 3), keepdim=True) / denom
    var = ((x - mean) ** 2 * w).sum(dim=(2, 3), keepdim=True) / denom
    return mean, var.clamp(min=0).sqrt(), total


def reinhard_transfer(image: Tensor, mask: Tensor, min_std: float = 1e-3) -> Tensor:
    """Give the foreground the Lab mean and std of the background of the same image.

    ``lab_fg' = (lab_fg - mean_fg) / std_fg * std_bg + mean_bg`` per Lab channel, statistics
    weighted by ``mask`` (foreground) and ``1 - mask`` (background); the result is pasted
    back with :func:`~harmonize.models._base.blend`. An image whose foreground or background
    has less than one pixel of weight comes back unchanged.

    Shape:
        image: (B, 3, H, W) in 0..1; mask: (B, 1, H, W) -> (B, 3, H, W)
    """
    check_inputs(image, mask)
    lab = rgb_to_lab(image)
    mu_f, sd_f, area_f = _weighted_mean_std(lab, mask)
    mu_b, sd_b, area_b = _weighted_mean_std(lab, 1 - mask)
    out = lab_to_rgb((lab - mu_f) / sd_f.clamp(min=min_std) * sd_b + mu_b)
    out = torch.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    valid = ((area_f >= 1) & (area_b >= 1)).to(image.dtype)  # (B, 1, 1, 1)
    out = out * valid + image * (1 - valid)
    return blend(out, image, mask)


class Reinhard(nn.Module):
    """Reinhard colour transfer of the foreground to the background's Lab statistics.

    Args:
        min_std: lower bound of the foreground's std (a flat foreground is only shifted).
    """

    needs_weights = False

    def __init__(self, min_std: float = 1e-3) -> None:
        super().__init__()
        self.min_std = min_std

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        return reinhard_transfer(image, mask, self.min_std)


def _create(cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return build_model_with_cfg(cls, variant, pretrained, **kwargs)


_NOTE = "A reference with no weights: pretrained=True loads nothing."

default_cfgs = generate_default_cfgs(
    {
        "composite.reference": PretrainedCfg(license="apache-2.0", notes=_NOTE),
        "reinhard.reference": PretrainedCfg(
            license="apache-2.0",
            paper="Color Transfer between Images (Reinhard, Ashikhmin, Gooch, Shirley; IEEE CG&A 2001)",
            paper_url="https://doi.org/10.1109/38.946629",
            notes=_NOTE,
        ),
    }
)


@register_model
def composite(pretrained: bool = False, **kwargs: Any) -> Composite:
    """The composite itself, unchanged: the floor of every table."""
    return _create(Composite, "composite", pretrained, **kwargs)


@register_model
def reinhard(pretrained: bool = False, **kwargs: Any) -> Reinhard:
    """Lab mean/std transfer of the foreground to the background of the same image."""
    return _create(Reinhard, "reinhard", pretrained, **kwargs)
