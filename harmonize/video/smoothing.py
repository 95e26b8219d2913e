"""Temporal smoothing of the per-frame colour transform: a centred moving average, streamed.

Harmonizing the frames of a clip one by one flickers: the network sees each frame afresh and
its colour change wobbles from frame to frame. Each frame's change is summarised by the
smooth per-pixel affine colour transform that the high-resolution path fits anyway
(:func:`~harmonize.highres.fit_color_transform`, 12 coefficients per pixel at the network's
resolution). :class:`TemporalSmoother` averages these coefficients over a centred window of
``window`` frames, pixel by pixel, and hands each frame back with the average of its window;
the frame is then recoloured with it at full resolution.

The window is centred, so a frame leaves ``window // 2`` frames after it arrived (the
latency) and the smoother holds at most ``window`` frames. At the ends of the clip the window
is cut short. Frames without a foreground take no part in the averages and are given back
with ``None``: they are left as they are.

Averaging the coefficients at fixed pixel positions is sound for moving objects too: away
from the foreground's texture the fit falls back to the transform of the whole foreground
(see :func:`~harmonize.highres.fit_color_transform`), so a pixel that the object has just
entered or left still holds a transform of the same object.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import UsageError

__all__ = ["TemporalSmoother", "smooth_coefficients"]


class TemporalSmoother:
    """Centred moving average over frames, for a stream.

    Args:
        window: frames averaged, odd, ``1`` = no smoothing (each frame its own transform).

    Example:
        >>> s = TemporalSmoother(5)
        >>> for coeffs, frame in stream:
        ...     for frame, smoothed in s.push(coeffs, frame):
        ...         write(apply_color_transform(frame, smoothed))
        >>> for frame, smoothed in s.flush():
        ...     write(apply_color_transform(frame, smoothed))
    """

    def __init__(self, window: int = 9) -> None:
        if not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise UsageError(f"window must be an odd number of frames >= 1, got {window!r}")
        self.window = window
        self.half = window // 2
        self._coeffs: deque[tuple[int, Tensor | None]] = deque()  # (index, coefficients)
        self._pending: deque[tuple[int, Any, bool]] = deque()  # (index, payload, has foreground)
        self._count = 0  # frames pushed

    @property
    def latency(self) -> int:
        """Frames a frame waits for the ones after it."""
        return self.half

    def push(self, coeffs: Tensor | None, payload: Any = None) -> list[tuple[Any, Tensor | None]]:
        """Add the next frame's coefficients (None: no foreground) and whatever goes with them.

        Returns:
            The frames now complete, in order, as ``(payload, smoothed coefficients or None)``.
        """
        i = self._count
        self._count += 1
        self._coeffs.append((i, coeffs))
        self._pending.append((i, payload, coeffs is not None))
        ready = []
        while self._pending and self._pending[0][0] + self.half <= i:
            ready.append(self._emit())
        return ready

    def flush(self) -> list[tuple[Any, Tensor | None]]:
        """The frames still waiting, at the end of the stream (their windows cut short)."""
        out = [self._emit() for _ in range(len(self._pending))]
        self._coeffs.clear()
        self._count = 0
        return out

    def _emit(self) -> tuple[Any, Tensor | None]:
        t, payload, present = self._pending.popleft()
        while self._coeffs and self._coeffs[0][0] < t - self.half:
            self._coeffs.popleft()
        if not present:
            return payload, None
        window = [c for j, c in self._coeffs if c is not None and abs(j - t) <= self.half]
        if len(window) == 1:
            return payload, window[0]
        return payload, torch.stack(window).mean(dim=0)


def smooth_coefficients(coeffs: Sequence[Tensor | None], window: int) -> list[Tensor | None]:
    """The whole-clip twin of :class:`TemporalSmoother`: every frame's centred-window average.

    Shape:
        coeffs: T tensors (B, 12, h, w) (or None) -> T tensors (B, 12, h, w) (or None)
    """
    s = TemporalSmoother(window)
    out = []
    for c in coeffs:
        out += [x for _, x in s.push(c)]
    return out + [x for _, x in s.flush()]
