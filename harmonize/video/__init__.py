"""Video: harmonize a clip frame by frame with the colour change smoothed over time.

Needs PyAV (``pip install "harmonize[video]"``); see ``docs/video.md``.
"""

from .metrics import flicker, foreground_mean
from .pipeline import DEFAULT_WINDOW, MaskSource, VideoResult, harmonize_video
from .smoothing import TemporalSmoother, smooth_coefficients

__all__ = [
    "harmonize_video",
    "VideoResult",
    "MaskSource",
    "DEFAULT_WINDOW",
    "TemporalSmoother",
    "smooth_coefficients",
    "flicker",
    "foreground_mean",
]
