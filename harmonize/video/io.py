"""Video files through PyAV (FFmpeg): probe, read frames, write a re-encoded copy with its audio.

PyAV's wheels bundle FFmpeg, so nothing else needs installing (``pip install
"harmonize[video]"``). Frames are handed out as (3, H, W) ``uint8`` tensors in RGB and taken
back the same way; the encoder converts them to its pixel format.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidInputError, UsageError

__all__ = [
    "INSTALL_HINT",
    "CONTAINERS",
    "VideoInfo",
    "require_av",
    "probe",
    "open_video",
    "iter_frames",
    "frame_to_tensor",
    "count_frames",
    "container_format",
    "natural_key",
    "default_codec",
    "encoder_settings",
    "write_video",
]

#: What to run when PyAV is missing.
INSTALL_HINT = 'pip install "harmonize[video]"'
#: Output extension -> FFmpeg container format.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
# Preferred encoders per container, first one the installed FFmpeg has wins.
_PREFERRED = {
    "mp4": ("libx264", "mpeg4"),
    "mov": ("libx264", "mpeg4"),
    "matroska": ("libx264", "ffv1", "mpeg4"),
    "webm": ("libvpx-vp9", "libvpx"),
    "avi": ("mpeg4", "ffv1"),
}
# Encoders that take RGB as it is (lossless or near it) and the pixel format they get.
_RGB_PIX_FMT = {"libx264rgb": "rgb24", "ffv1": "bgr0", "png": "rgb24", "qtrle": "rgb24", "utvideo": "gbrp"}
# Encoders that understand a constant rate factor.
_CRF_CODECS = ("libx264", "libx264rgb", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1")


def require_av() -> Any:
    """Import PyAV, or raise a one-line :class:`~harmonize.errors.UsageError` that says how to install it."""
    try:
        import av
    except ImportError as e:
        raise UsageError(f"video needs PyAV, which is not installed: {INSTALL_HINT}") from e
    return av


@dataclass
class VideoInfo:
    """What :func:`probe` finds in a video file."""

    path: Path
    width: int
    height: int
    frames: int  # counted by demuxing the video stream's packets
    rate: Fraction  # average frame rate
    time_base: Fraction
    codec: str
    audio: list[str] = field(default_factory=list)  # codec names of the audio streams

    @property
    def duration(self) -> float:
        """Seconds, from the frame count and the average rate."""
        return float(self.frames / self.rate) if self.rate else 0.0


def open_video(path: str | os.PathLike) -> Any:
    """Open a video for reading; a missing or undecodable file is a one-line error naming it."""
    av = require_av()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise IsADirectoryError(f"{p}: is a folder, not a video")
    try:
        container = av.open(str(p), "r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise InvalidInputError(f"{p}: cannot read as a video ({e})") from e
    if not container.streams.video:
        container.close()
        raise InvalidInputError(f"{p}: has no video stream")
    return container


def count_frames(path: str | os.PathLike) -> int:
    """Frames of the first video stream, counted by demuxing its packets (no decoding)."""
    av = require_av()
    with open_video(path) as c:
        stream = c.streams.video[0]
        try:
            return sum(1 for packet in c.demux(stream) if packet.size)
        except av.error.FFmpegError as e:
            raise InvalidInputError(f"{path}: cannot read as a video ({e})") from e


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, frame count, frame rate, codec and audio streams of a video file."""
    with open_video(path) as c:
        s = c.streams.video[0]
        width, height = s.codec_context.width, s.codec_context.height
        rate = s.average_rate or s.guessed_rate or Fraction(25)
        time_base = s.time_base or Fraction(1, 90000)
        codec, audio = s.codec_context.name, [a.codec_context.name for a in c.streams.audio]
    return VideoInfo(Path(path), width, height, count_frames(path), Fraction(rate), Fraction(time_base), codec, audio)


def _decode_error(path: str | os.PathLike, e: Exception) -> InvalidInputError:
    return InvalidInputError(f"{path}: cannot decode the video ({e})")


def iter_frames(path: str | os.PathLike, gray: bool = False) -> Iterator[Tensor]:
    """The frames of a video, one at a time: (3, H, W) ``uint8`` RGB, or (1, H, W) with ``gray``.

    ``gray`` averages the RGB channels, as :func:`~harmonize.data.io.load_mask` does for an
    RGB mask image.
    """
    av = require_av()
    with open_video(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in c.decode(stream):
                yield frame_to_tensor(frame, gray)
        except av.error.FFmpegError as e:
            raise _decode_error(path, e) from e


def frame_to_tensor(frame: Any, gray: bool = False) -> Tensor:
    """A PyAV video frame -> (3, H, W) ``uint8`` RGB tensor, or (1, H, W) channel mean with ``gray``."""
    a = frame.to_ndarray(format="rgb24")
    if gray:
        return torch.from_numpy(np.rint(a.mean(axis=2, dtype=np.float32)).astype(np.uint8))[None]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _has_encoder(name: str) -> bool:
    av = require_av()
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - unknown names raise several types across PyAV versions
        return False
    return True


def container_format(path: str | os.PathLike) -> str:
    """The FFmpeg container for ``path``'s extension; an unknown one is a :class:`UsageError`."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise UsageError(
            f"{path}: unknown video format {suffix or '(no extension)'!r}; use one of {', '.join(CONTAINERS)}"
        )
    return CONTAINERS[suffix]


def default_codec(path: str | os.PathLike) -> str:
    """The encoder used for ``path`` when none is asked for: H.264 (libx264) where it fits."""
    fmt = container_format(path)
    for name in _PREFERRED[fmt]:
        if _has_encoder(name):
            return name
    raise UsageError(f"{path}: this FFmpeg has no encoder for {fmt} among {_PREFERRED[fmt]}; give --codec")


def encoder_settings(codec: str, width: int, height: int, crf: int | None = 18) -> tuple[str, dict[str, str]]:
    """The pixel format and encoder options for ``codec`` at ``width x height``.

    RGB-native encoders (``ffv1``, ``libx264rgb``, ``png``...) get an RGB format, so they are
    lossless or close to it (``libx264rgb`` with ``crf=0`` is lossless); YUV encoders get
    4:2:0 when the size is even, else 4:4:4.
    """
    if not _has_encoder(codec):
        raise UsageError(f"this FFmpeg (PyAV) has no {codec!r} encoder")
    options: dict[str, str] = {}
    if crf is not None and codec in _CRF_CODECS:
        options["crf"] = str(int(crf))
        if codec == "libvpx-vp9":
            options["b"] = "0"
    if codec in _RGB_PIX_FMT:
        return _RGB_PIX_FMT[codec], options
    return ("yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"), options


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``frame_2`` before ``frame_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def write_video(
    path: str | os.PathLike,
    frames: Any,
    rate: Fraction | int | float = 25,
    codec: str | None = None,
    crf: int | None = 18,
    audio: tuple[int, float] | None = None,
) -> Path:
    """Write (3, H, W) ``uint8`` frames (tensors or (H, W, 3) arrays) to a video file.

    A small helper for tests and benchmarks (not atomic; for whole clips that fit in memory
    or come from an iterator). ``audio=(sample_rate, frequency)`` adds a sine tone as long
    as the clip (AAC in MP4/MOV, FLAC elsewhere).
    """
    av = require_av()
    path = Path(path)
    fmt = container_format(path)
    codec = codec or default_codec(path)
    rate = Fraction(rate).limit_denominator(100000)
    with av.open(str(path), "w", format=fmt) as out:
        vs = None
        n = 0
        for f in frames:
            a = f.permute(1, 2, 0).numpy() if isinstance(f, Tensor) else np.asarray(f)
            if a.ndim == 2:
                a = np.repeat(a[..., None], 3, axis=2)
            if vs is None:
                vs = out.add_stream(codec, rate=rate)
                vs.width, vs.height = a.shape[1], a.shape[0]
                vs.pix_fmt, vs.options = encoder_settings(codec, vs.width, vs.height, crf)
                vs.codec_context.time_base = 1 / rate
                if audio is not None:
                    sample_rate = int(audio[0])
                    aus = out.add_stream("aac" if fmt in ("mp4", "mov") else "flac", rate=sample_rate)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
            frame.pts = n
            out.mux(vs.encode(frame))
            n += 1
        if vs is None:
            raise ValueError("no frames to write")
        out.mux(vs.encode(None))
        if audio is not None:
            sample_rate, freq = int(audio[0]), float(audio[1])
            total = int(round(n / rate * sample_rate))
            t = np.arange(total) / sample_rate
            tone = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            fmt_name = aus.codec_context.format.name if aus.codec_context.format else "fltp"
            chunk = 1024 if aus.codec_context.frame_size in (0, None) else aus.codec_context.frame_size
            for start in range(0, total, chunk):
                piece = tone[start : start + chunk]
                if fmt_name.startswith("s16"):
                    arr = (piece * 32767).astype(np.int16)[None]
                    af = av.AudioFrame.from_ndarray(arr, format="s16" if fmt_name == "s16" else "s16p", layout="mono")
                else:
                    af = av.AudioFrame.from_ndarray(piece[None], format="fltp", layout="mono")
                af.sample_rate, af.pts = sample_rate, start
                out.mux(aus.encode(af))
            out.mux(aus.encode(None))
    return path
