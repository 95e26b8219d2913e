"""Harmonize a video clip: the network on each frame, the colour change smoothed over time.

For each frame, as :class:`~harmonize.highres.Harmonizer` does for a photo, the network runs
on a ``size x size`` copy and a smooth per-pixel affine colour transform is fitted that maps
its input to its output (:func:`~harmonize.highres.fit_color_transform`). Instead of applying
each frame's own transform, :class:`~harmonize.video.smoothing.TemporalSmoother` averages the
transforms of a centred window of ``window`` frames, and the average is applied to the
full-resolution frame (:func:`~harmonize.highres.apply_color_transform`): the background stays
bit for bit (up to the codec), the foreground keeps every detail and changes colour smoothly.

The clip is streamed: at most ``window`` frames are held at a time, whatever its length.
The output keeps the input's frame rate and timestamps and carries its audio streams over
unchanged (packets copied, not re-encoded).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.io import IMAGE_EXTENSIONS, load_mask, read_header
from ..errors import InvalidInputError, UsageError
from ..highres.color_transform import apply_color_transform, fit_color_transform
from ..highres.harmonizer import Harmonizer, clean_mask
from ..utils.files import atomic_write
from .io import (
    VideoInfo,
    container_format,
    default_codec,
    encoder_settings,
    frame_to_tensor,
    iter_frames,
    natural_key,
    open_video,
    probe,
    require_av,
)
from .smoothing import TemporalSmoother

__all__ = ["harmonize_video", "VideoResult", "MaskSource", "DEFAULT_WINDOW"]

_logger = logging.getLogger(__name__)

#: Frames averaged by default: about a third of a second at 25-30 fps.
DEFAULT_WINDOW = 9


@dataclass
class VideoResult:
    """What :func:`harmonize_video` wrote."""

    path: Path
    frames: int
    width: int
    height: int
    rate: Fraction
    codec: str
    audio_streams: int
    window: int
    seconds: float


class MaskSource:
    """The masks of a clip: a mask video, a folder of per-frame mask images, or one still image.

    The source is checked when made: it must have as many frames as the clip (a folder: as
    many images, taken in natural name order, ``2`` before ``10``) and the clip's size.

    Args:
        source: the mask video, folder or image.
        clip: the clip's :class:`~harmonize.video.io.VideoInfo`.
        threshold: masks are binarised at this value (None keeps soft edges).
    """

    def __init__(self, source: str | os.PathLike, clip: VideoInfo, threshold: float | None = 0.5) -> None:
        p = Path(source)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such mask file or folder")
        self.path, self.clip, self.threshold = p, clip, threshold
        size = f"{clip.width}x{clip.height}"
        self.files: list[Path] | None = None
        self.still: Tensor | None = None
        if p.is_dir():
            files = sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS), key=lambda f: natural_key(f.name))
            if not files:
                raise InvalidInputError(f"{p}: no mask images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
            if len(files) != clip.frames:
                raise InvalidInputError(
                    f"{p} holds {len(files)} mask images but {clip.path} has {clip.frames} frames: "
                    "give one mask per frame, a mask video, or one still mask"
                )
            (w, h), _, _ = read_header(files[0])
            self._check_size(files[0], w, h, size)
            self.files, self.kind = files, "folder"
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            self.still = load_mask(p, threshold)
            self._check_size(p, self.still.shape[-1], self.still.shape[-2], size)
            self.kind = "still"
        else:
            info = probe(p)
            self._check_size(p, info.width, info.height, size)
            if info.frames != clip.frames:
                raise InvalidInputError(f"{p} has {info.frames} frames but {clip.path} has {clip.frames}: a mask video needs one mask per frame")
            self.kind = "video"

    def _check_size(self, path: Path, w: int, h: int, size: str) -> None:
        if (w, h) != (self.clip.width, self.clip.height):
            raise InvalidInputError(f"{path} is {w}x{h} but the frames of {self.clip.path} are {size}: a mask must be the size of the frames")

    def _binarise(self, m: Tensor) -> Tensor:
        return (m >= self.threshold).float() if self.threshold is not None else m

    def __iter__(self) -> Iterator[Tensor]:
        """(1, H, W) float masks, one per frame (forever, for a still mask)."""
        if self.still is not None:
            while True:
                yield self.still
        elif self.files is not None:
            for f in self.files:
                m = load_mask(f, self.threshold)
                self._check_size(f, m.shape[-1], m.shape[-2], f"{self.clip.width}x{self.clip.height}")
                yield m
        else:
            for m in iter_frames(self.path, gray=True):
                yield self._binarise(m.float() / 255.0)


def _harmonizer(model: Any, device: Any, size: int | None, resize: str, radius: int, eps: float, checkpoint: Any,
                amp: bool | None = None) -> Harmonizer:
    if isinstance(model, Harmonizer):
        return model
    if not isinstance(model, (str, nn.Module)):
        raise TypeError(f"model must be a name, an nn.Module or a Harmonizer, got {type(model).__name__}")
    return Harmonizer(model, device=device, size=size, method="affine", resize=resize, radius=radius, eps=eps,
                      checkpoint=checkpoint, amp=amp)


@torch.no_grad()
def _frame_coefficients(h: Harmonizer, image: Tensor, mask: Tensor) -> Tensor | None:
    """The colour transform of one frame ((1, 12, h, w) on the device), or None without foreground."""
    p = h._prepare(image.to(h.device, torch.float32).div_(255.0)[None], mask[None])
    if p.empty:
        return None
    pred = h._network(p.net_image, p.net_mask)
    return fit_color_transform(p.net_image, pred, p.net_mask, h.radius, h.eps)


@torch.no_grad()
def _apply(h: Harmonizer, image: Tensor, mask: Tensor, coeffs: Tensor | None) -> Tensor:
    """Recolour a (3, H, W) uint8 frame with (1, 12, h, w) coefficients -> (H, W, 3) uint8 on the CPU."""
    if coeffs is None:
        return image.permute(1, 2, 0)
    x = image.to(h.device, torch.float32).div_(255.0)[None]
    m = clean_mask(mask.to(h.device, torch.float32))[None]
    out = apply_color_transform(x, coeffs, m)[0]
    return out.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu()


def harmonize_video(
    clip: str | os.PathLike,
    masks: str | os.PathLike,
    out: str | os.PathLike,
    model: str | nn.Module | Harmonizer = "gknet",
    window: int = DEFAULT_WINDOW,
    *,
    device: str | torch.device | None = None,
    size: int | None = None,
    resize: str = "square",
    radius: int = 32,
    eps: float = 1e-3,
    checkpoint: str | os.PathLike | None = None,
    codec: str | None = None,
    crf: int | None = 18,
    mask_threshold: float | None = 0.5,
    audio: bool = True,
    progress: bool = True,
    amp: bool | None = None,
) -> VideoResult:
    """Harmonize every frame of a clip, the colour change smoothed over ``window`` frames.

    Args:
        clip: the composite video (any format FFmpeg reads).
        masks: its masks: a mask video with one frame per frame, a folder of one mask image
            per frame (natural name order), or one still mask image for the whole clip.
            White is foreground; the size must be the frames'.
        out: the output video; the extension picks the container (``.mp4 .mov .mkv .webm
            .avi``). Written under a temporary name and renamed when complete.
        model: a registered name (with its pretrained weights), an ``nn.Module``, or a
            ready :class:`~harmonize.highres.Harmonizer` (its settings win over those below).
        window: frames whose colour transforms are averaged, centred on each frame (odd;
            ``1`` harmonizes frame by frame). A frame is written ``window // 2`` frames
            after it is read.
        device: ``"cpu"``, ``"cuda"``... (None: CUDA when there is one).
        size: the network's working resolution (None: the model's, 256).
        resize: what the network sees, ``"square"`` or ``"keep"`` (aspect ratio).
        radius: window radius of the colour transform fit, in network pixels.
        eps: regularisation of the local fit towards the foreground's global transform.
        checkpoint: weights file for a model given by name.
        codec: the video encoder (None: H.264 where the container takes it; ``"ffv1"`` or
            ``"libx264rgb"`` with ``crf=0`` for lossless output).
        crf: constant rate factor for encoders that have one (18: visually lossless H.264).
        mask_threshold: masks are binarised at this value (None keeps soft edges).
        audio: copy the clip's audio streams (unchanged) into the output.
        progress: show a progress bar on stderr.
        amp: bfloat16 autocast for the network (:class:`~harmonize.highres.Harmonizer`'s
            ``amp``: None on CUDA only, True on the CPU too).

    Returns:
        A :class:`VideoResult` (path, frames, size, rate, codec, audio streams, seconds).

    Example:
        >>> from harmonize.video import harmonize_video
        >>> harmonize_video("clip.mp4", "mask.mp4", "harmonized.mp4", window=9)
    """
    av = require_av()
    from tqdm.auto import tqdm

    start = time.perf_counter()
    clip, out = Path(clip), Path(out)
    container_format(out)
    smoother = TemporalSmoother(window)
    info = probe(clip)
    if info.frames == 0:
        raise InvalidInputError(f"{clip}: the video has no frames")
    if out.exists() and out.resolve() == clip.resolve():
        raise UsageError(f"{out}: the output would replace the input clip")
    mask_source = MaskSource(masks, info, mask_threshold)
    codec = codec or default_codec(out)
    pix_fmt, options = encoder_settings(codec, info.width, info.height, crf)
    h = _harmonizer(model, device, size, resize, radius, eps, checkpoint, amp)

    written = 0
    with open_video(clip) as src, atomic_write(out, suffix=out.suffix) as tmp:
        vin = src.streams.video[0]
        vin.thread_type = "AUTO"
        ains = list(src.streams.audio) if audio else []
        with av.open(str(tmp), "w", format=container_format(out)) as dst:
            vout = dst.add_stream(codec, rate=info.rate)
            vout.width, vout.height, vout.pix_fmt, vout.options = info.width, info.height, pix_fmt, options
            # Keep the input's timestamps; MPEG-4 part 2 takes no time base finer than 1/65535.
            tb = info.time_base if codec != "mpeg4" or info.time_base.denominator <= 65535 else 1 / info.rate
            vout.codec_context.time_base = tb
            aouts = {a.index: dst.add_stream_from_template(a) for a in ains}
            try:
                dst.start_encoding()
            except (av.error.FFmpegError, ValueError) as e:
                kinds = ", ".join(a.codec_context.name for a in ains) or "none"
                raise InvalidInputError(
                    f"{out}: cannot write {codec} video with the clip's audio ({kinds}) in this container ({e}); "
                    "try .mkv, which holds any codec"
                ) from e

            bar = tqdm(total=info.frames, unit="frame", desc=clip.name, file=sys.stderr, disable=not progress, leave=False)
            mask_iter = iter(mask_source)
            index = 0

            def write(ready: list[tuple[Any, Tensor | None]]) -> None:
                nonlocal written
                for (image, mask, pts), coeffs in ready:
                    frame = av.VideoFrame.from_ndarray(_apply(h, image, mask, coeffs).numpy(), format="rgb24")
                    frame.pts, frame.time_base = pts, tb
                    dst.mux(vout.encode(frame))
                    written += 1
                    bar.update(1)

            try:
                for packet in src.demux(vin, *ains):
                    if packet.stream.type == "audio":
                        if packet.dts is not None:
                            packet.stream = aouts[packet.stream.index]
                            dst.mux(packet)
                        continue
                    for frame in packet.decode():
                        mask = next(mask_iter, None)
                        if mask is None:
                            raise InvalidInputError(f"{masks}: ran out of masks at frame {index + 1} of {clip}")
                        image = frame_to_tensor(frame)
                        if frame.pts is None or frame.time_base is None:
                            pts = round(index / info.rate / tb)
                        else:
                            pts = round(frame.pts * frame.time_base / tb)
                        write(smoother.push(_frame_coefficients(h, image, mask), (image, mask, pts)))
                        index += 1
                write(smoother.flush())
                dst.mux(vout.encode(None))
            except av.error.FFmpegError as e:
                raise InvalidInputError(f"{clip}: cannot decode the video ({e})") from e
            finally:
                bar.close()
    if mask_source.kind != "still" and written != info.frames:
        _logger.warning("%s: decoded %d frames, %d packets counted", clip, written, info.frames)
    seconds = time.perf_counter() - start
    _logger.info("%s: %d frames in %.1f s (%.2f frames/s)", out, written, seconds, written / max(seconds, 1e-9))
    return VideoResult(out, written, info.width, info.height, info.rate, codec, len(ains), window, seconds)
