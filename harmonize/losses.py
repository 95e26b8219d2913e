"""Training losses."""

from __future__ import annotations

from torch import Tensor, nn

from .utils.checks import check_pred_target

__all__ = ["foreground_mse_loss", "ForegroundMSELoss"]


def foreground_mse_loss(pred: Tensor, target: Tensor, mask: Tensor, min_area: float = 100.0) -> Tensor:
    """Foreground-normalised MSE (GKNet Eq. 7, after iSSAM).

    ``sum_{h,w} ||pred - target||^2 / max(min_area, sum_{h,w} mask)`` per image, where
    the squared norm runs over the colour channels, then averaged over the batch. Normalising
    by the foreground area instead of the image area keeps small objects from being ignored;
    ``min_area`` keeps tiny ones from dominating.

    Args:
        pred: harmonized images. target: real images. mask: foreground masks.
        min_area: ``A_min`` in pixels (100 in the paper).

    Shape:
        pred, target: (B, 3, H, W); mask: (B, 1, H, W) -> scalar
    """
    check_pred_target(pred, target, mask, channels=None)
    sq = (pred.float() - target.float()).pow(2).sum(dim=(1, 2, 3))
    area = mask.float().sum(dim=(1, 2, 3)).clamp(min=min_area)
    return (sq / area).mean()


class ForegroundMSELoss(nn.Module):
    """Module twin of :func:`foreground_mse_loss`: ``forward(pred, target, mask) -> scalar``."""

    def __init__(self, min_area: float = 100.0) -> None:
        super().__init__()
        self.min_area = min_area

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return foreground_mse_loss(pred, target, mask, self.min_area)

    def extra_repr(self) -> str:
        return f"min_area={self.min_area}"
