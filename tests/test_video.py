"""``harmonize video`` and :func:`harmonize.video.harmonize_video` on a tiny clip with known ground truth.

The clip: 12 frames of a 128x128 window panning across a bundled LabelMe photo, its
foreground recoloured by one fixed transform (the real frames are the ground truth), encoded
losslessly (FFV1 in Matroska) with a sine-tone audio track. A stand-in network undoes the
recolouring with a gain that wobbles from call to call, as a real network's output does
from frame to frame.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

av = pytest.importorskip("av")

from harmonize.cli import main  # noqa: E402
from harmonize.data.io import load_image, load_mask  # noqa: E402
from harmonize.demo import bundled_samples  # noqa: E402
from harmonize.errors import InvalidInputError, UsageError  # noqa: E402
from harmonize.metrics import fmse  # noqa: E402
from harmonize.video import (  # noqa: E402
    TemporalSmoother,
    flicker,
    foreground_mean,
    harmonize_video,
    smooth_coefficients,
)
from harmonize.video.io import iter_frames, probe, write_video  # noqa: E402

FRAMES, SIZE, RATE = 12, 128, 24
GAIN, OFFSET = 0.7, 0.05  # the recolouring: x -> 0.7 x + 0.05 on the foreground


class WobblyNet(nn.Module):
    """Undoes the recolouring, with a per-call random gain (seeded): a flickering network."""

    def __init__(self, wobble: float = 0.08, seed: int = 0) -> None:
        super().__init__()
        self.wobble, self.g = wobble, torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.wobble * torch.randn(1, 3, 1, 1, generator=self.g)
        y = ((x - OFFSET) / GAIN * gain).clamp(0, 1)
        return y * m + x * (1 - m)


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    sample = next(s for s in bundled_samples() if s.name == "l100285_1_1")
    real, mask = _u8(load_image(sample.real)), load_mask(sample.mask)
    reals, comps, masks = [], [], []
    for t in range(FRAMES):
        x, y = round(t * 128 / (FRAMES - 1)), round(t * 16 / (FRAMES - 1))
        r, m = real[:, y : y + SIZE, x : x + SIZE], mask[:, y : y + SIZE, x : x + SIZE]
        recoloured = _u8(r.float() / 255 * GAIN + OFFSET)
        reals.append(r), masks.append(m), comps.append(torch.where(m.bool(), recoloured, r))
    root = tmp_path_factory.mktemp("clip")
    video, mask_video = root / "comp.mkv", root / "mask.mkv"
    write_video(video, comps, rate=RATE, codec="ffv1", audio=(48000, 440.0))
    write_video(mask_video, [_u8(m).expand(3, -1, -1) for m in masks], rate=RATE, codec="ffv1")
    return {"root": root, "video": video, "masks": mask_video, "reals": reals, "comps": comps, "mask_list": masks}


def _scores(path: Path, clip: dict) -> tuple[float, float]:
    outs = list(iter_frames(path))
    f = torch.tensor([float(fmse(o[None] / 255.0, r[None] / 255.0, m[None])[0])
                      for o, r, m in zip(outs, clip["reals"], clip["mask_list"])])
    pm = [foreground_mean(o, m) for o, m in zip(outs, clip["mask_list"])]
    gm = [foreground_mean(r, m) for r, m in zip(clip["reals"], clip["mask_list"])]
    return float(f.mean()), flicker(pm, gm)


@pytest.fixture(scope="module")
def outputs(clip) -> dict[int, Path]:
    out = {}
    for window in (1, 5):
        out[window] = clip["root"] / f"out_w{window}.mkv"
        res = harmonize_video(clip["video"], clip["masks"], out[window], model=WobblyNet(), window=window,
                              codec="ffv1", device="cpu", progress=False)
        assert res.frames == FRAMES and res.audio_streams == 1 and res.window == window
    return out


# --------------------------------------------------------------------------- smoothing


def test_smoother_is_a_centred_moving_average():
    coeffs = [torch.randn(1, 12, 4, 5) for _ in range(9)]
    coeffs[3] = None  # a frame without foreground: left alone, and out of its neighbours' averages
    for window in (1, 3, 5, 7):
        half = window // 2
        got = smooth_coefficients(coeffs, window)
        assert len(got) == len(coeffs)
        for t, c in enumerate(got):
            if coeffs[t] is None:
                assert c is None
                continue
            near = [coeffs[j] for j in range(max(0, t - half), min(len(coeffs), t + half + 1)) if coeffs[j] is not None]
            torch.testing.assert_close(c, torch.stack(near).mean(0))


def test_smoother_latency_and_bad_window():
    s = TemporalSmoother(5)
    assert s.latency == 2
    assert [p for p, _ in s.push(torch.zeros(1, 12, 2, 2), "a")] == []
    assert [p for p, _ in s.push(torch.zeros(1, 12, 2, 2), "b")] == []
    assert [p for p, _ in s.push(torch.zeros(1, 12, 2, 2), "c")] == ["a"]
    assert [p for p, _ in s.flush()] == ["b", "c"]
    for bad in (0, 2, -1, 4):
        with pytest.raises(UsageError, match="odd"):
            TemporalSmoother(bad)


# --------------------------------------------------------------------------- the clip


def test_output_keeps_frames_size_rate_timestamps_and_audio(clip, outputs):
    src, out = probe(clip["video"]), probe(outputs[5])
    assert (out.frames, out.width, out.height, out.rate) == (src.frames, src.width, src.height, src.rate) == (FRAMES, SIZE, SIZE, RATE)
    assert out.audio == src.audio == ["flac"]

    def pts(path):
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            return [float(f.pts * f.time_base) for f in c.decode(s)]

    def audio_packets(path):
        with av.open(str(path)) as c:
            return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]

    assert pts(outputs[5]) == pytest.approx(pts(clip["video"]))
    assert audio_packets(outputs[5]) == audio_packets(clip["video"])  # copied, not re-encoded


def test_background_is_unchanged_and_foreground_is_harmonized(clip, outputs):
    for out, comp, real, m in zip(iter_frames(outputs[5]), clip["comps"], clip["reals"], clip["mask_list"]):
        bg = ~m.bool().expand(3, -1, -1)
        assert torch.equal(out[bg], comp[bg])  # lossless codec: bit for bit
        err_out = float(fmse(out[None] / 255.0, real[None] / 255.0, m[None])[0])
        err_comp = float(fmse(comp[None] / 255.0, real[None] / 255.0, m[None])[0])
        assert err_out < 0.5 * err_comp


def test_smoothing_reduces_flicker_without_hurting_fmse(clip, outputs):
    fmse_1, flicker_1 = _scores(outputs[1], clip)
    fmse_5, flicker_5 = _scores(outputs[5], clip)
    assert flicker_5 < 0.6 * flicker_1, (flicker_5, flicker_1)
    assert fmse_5 <= fmse_1 * 1.02, (fmse_5, fmse_1)


def test_mask_folder_and_still_mask(clip, tmp_path):
    from PIL import Image

    folder = tmp_path / "masks"
    folder.mkdir()
    for t, m in enumerate(clip["mask_list"]):  # natural order: 2 before 10
        Image.fromarray(_u8(m)[0].numpy()).save(folder / f"frame_{t}.png")
    a, b = tmp_path / "a.mkv", tmp_path / "b.mkv"
    kw = dict(window=3, codec="ffv1", device="cpu", progress=False)
    harmonize_video(clip["video"], clip["masks"], a, model=WobblyNet(), **kw)
    harmonize_video(clip["video"], folder, b, model=WobblyNet(), **kw)
    assert all(torch.equal(x, y) for x, y in zip(iter_frames(a), iter_frames(b)))

    still = tmp_path / "still.png"
    Image.fromarray(_u8(clip["mask_list"][0])[0].numpy()).save(still)
    c = tmp_path / "c.mkv"
    harmonize_video(clip["video"], still, c, model=WobblyNet(), **kw)
    bg = ~clip["mask_list"][0].bool().expand(3, -1, -1)
    assert all(torch.equal(o[bg], comp[bg]) for o, comp in zip(iter_frames(c), clip["comps"]))


def test_command_h264_mp4_with_aac_audio(tmp_path, capsys):
    sample = bundled_samples()[1]
    frame, mask = _u8(load_image(sample.composite)), load_mask(sample.mask)
    clip, out = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    write_video(clip, [frame] * 6, rate=30000 / 1001, audio=(44100, 330.0))
    from PIL import Image

    Image.fromarray(_u8(mask)[0].numpy()).save(tmp_path / "mask.png")
    rc = main(["video", str(clip), str(tmp_path / "mask.png"), "-o", str(out), "--model", "reinhard", "--window", "3"])
    assert rc == 0, capsys.readouterr().err
    assert "6 frames 256x256" in capsys.readouterr().out
    src, got = probe(clip), probe(out)
    assert (got.frames, got.width, got.height, got.rate, got.codec, got.audio) == (6, 256, 256, src.rate, "h264", ["aac"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert main(["video", str(clip), str(tmp_path / "mask.png"), "-o", str(out), "--model", "reinhard"]) == 2
    assert "--overwrite" in capsys.readouterr().err


# --------------------------------------------------------------------------- errors


def test_errors(clip, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "masks"
    folder.mkdir()
    for t, m in enumerate(clip["mask_list"][:-1]):
        Image.fromarray(_u8(m)[0].numpy()).save(folder / f"{t:03d}.png")
    out = tmp_path / "out.mkv"
    with pytest.raises(InvalidInputError, match="holds 11 mask images but .* has 12 frames"):
        harmonize_video(clip["video"], folder, out, model=WobblyNet(), progress=False)

    Image.new("L", (64, 64), 255).save(tmp_path / "small.png")
    with pytest.raises(InvalidInputError, match="is 64x64 but the frames of .* are 128x128"):
        harmonize_video(clip["video"], tmp_path / "small.png", out, model=WobblyNet(), progress=False)

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(InvalidInputError, match="broken.mp4: cannot read as a video"):
        harmonize_video(bad, clip["masks"], out, model=WobblyNet(), progress=False)
    assert not out.exists() and list(tmp_path.glob(".out.mkv*")) == []

    def one_line(*argv: str, expect: str) -> None:
        assert main(["video", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and expect in err, err

    one_line(str(bad), str(clip["masks"]), "-o", str(out), expect="cannot read as a video")
    one_line(str(clip["video"]), str(folder), "-o", str(out), expect="holds 11 mask images")
    one_line(str(clip["video"]), str(clip["masks"]), "-o", str(tmp_path / "out.gif"), expect="unknown video format")
    one_line(str(clip["video"]), str(clip["masks"]), "-o", str(out), "--window", "4", expect="odd")
    one_line(str(tmp_path / "nope.mp4"), str(clip["masks"]), "-o", str(out), expect="no such file")


def test_without_pyav_the_command_says_how_to_install(monkeypatch, capsys, tmp_path):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real_find_spec(name, *a))
    assert main(["video", "clip.mp4", "mask.png", "-o", str(tmp_path / "out.mp4")]) == 2
    assert 'pip install "harmonize[video]"' in capsys.readouterr().err
