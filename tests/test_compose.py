"""Compose, then harmonize: ``harmonize.compose``, ``harmonize.cutout.paste`` and ``harmonize compose``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import harmonize
from harmonize.cli import main
from harmonize.cutout import ANCHORS, Placement, cutout_to_tensor, paste, placement
from harmonize.errors import InvalidInputError, UsageError

REPO = Path(__file__).resolve().parents[1]
LABELME = REPO.parent / "shared" / "data" / "labelme-harmony"
FAST = ("--model", "reinhard", "--device", "cpu")


def _fmse(a: np.ndarray, b: np.ndarray, fg: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b.astype(np.float64)) ** 2)[fg].mean())


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _cutout_from_labelme(tmp: Path, name: str) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    """The recoloured object of an iHarmony4 composite as an RGBA PNG (the mask is its alpha)."""
    if not LABELME.exists():
        pytest.skip(f"shared data not found at {LABELME}")
    comp = _rgb(LABELME / "composite_images" / f"{name}_1_1.jpg")
    with Image.open(LABELME / "masks" / f"{name}_1.png") as m:
        mask = np.asarray(m.convert("L"))
    real_path = LABELME / "real_images" / f"{name}.jpg"
    cut = tmp / f"{name}_cutout.png"
    Image.fromarray(np.concatenate([comp, mask[..., None]], axis=2), "RGBA").save(cut)
    return cut, real_path, comp, mask, _rgb(real_path)


def _one_line(err: str, command: str = "compose") -> str:
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"harmonize {command}: "), lines[0]
    return lines[0]


def _rgba(h: int = 40, w: int = 60, soft: bool = True, color=(200, 60, 40), texture: bool = True) -> np.ndarray:
    """A coloured ellipse whose alpha falls off softly over its last few pixels."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2)
    alpha = np.clip((1 - r) * 6, 0, 1) if soft else (r < 0.8).astype(float)
    shade = 0.75 + 0.25 * (xx / w + yy / h) / 2  # some texture: a flat colour has no spread to harmonize
    rgb = (np.array(color, float) * (shade[..., None] if texture else np.ones((h, w, 1)))).round().astype(np.uint8)
    return np.concatenate([rgb, np.rint(alpha * 255).astype(np.uint8)[..., None]], axis=2)


def _background(h: int = 120, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([60 + 120 * xx / w, 120 + 60 * yy / h, 170 - 40 * xx / w], axis=2).astype(np.uint8)


# --------------------------------------------------------------------------- the "done when"


@pytest.mark.parametrize("name", ["l100285", "l100044"])
def test_compose_on_a_labelme_cutout_recovers_the_real_photo(tmp_path, capsys, name) -> None:
    """Cutout = the composite's recoloured object; background = the real photo; pasted where it was.

    The paste is the iHarmony4 composite itself; harmonizing it (the default gknet) must keep
    every pixel outside the cutout and bring the object closer to the real photo.
    """
    cut, real_path, comp, mask, real = _cutout_from_labelme(tmp_path, name)
    out, c_out, m_out = tmp_path / "out.png", tmp_path / "composite.png", tmp_path / "mask.png"
    argv = ["compose", str(cut), str(real_path), "-o", str(out), "--at", "0,0", "--anchor", "top-left"]
    rc = main([*argv, "--save-composite", str(c_out), "--save-mask", str(m_out), "--device", "cpu"])
    stdout = capsys.readouterr().out
    assert rc == 0 and f"wrote {out}" in stdout and str(c_out) in stdout
    result, pasted = _rgb(out), _rgb(c_out)
    fg, bg = mask > 127, mask == 0
    assert (pasted[fg] == comp[fg]).all() and (pasted[bg] == real[bg]).all(), "the paste is the iHarmony4 composite"
    assert (np.asarray(Image.open(m_out)) == mask).all(), "the saved mask is the cutout's alpha, placed"
    assert result.shape == real.shape
    assert (result[bg] == real[bg]).all(), "pixels outside the cutout are the background's"
    assert _fmse(result, real, fg) < _fmse(pasted, real, fg), "harmonized closer to the real photo than the paste"


def test_python_twin_matches_the_command(tmp_path, capsys) -> None:
    cut, real_path, _, mask, real = _cutout_from_labelme(tmp_path, "l100285")
    out = tmp_path / "out.png"
    assert main(["compose", str(cut), str(real_path), "-o", str(out), "--at", "0,0", "--anchor", "top-left", *FAST]) == 0
    for cutout, background in [
        (cut, real_path),  # paths
        (Image.open(cut), Image.open(real_path)),  # PIL
        (np.asarray(Image.open(cut)), real),  # numpy
    ]:
        got = harmonize.compose(cutout, background, at=(0, 0), anchor="top-left", model="reinhard", device="cpu")
        arr = np.asarray(got)
        assert isinstance(got, np.ndarray if isinstance(background, np.ndarray) else Image.Image)
        assert arr.dtype == np.uint8 and (arr == _rgb(out)).all()
    # tensors in, a tensor out
    t = harmonize.compose(cutout_to_tensor(cut), torch.from_numpy(real.copy()).permute(2, 0, 1).float() / 255, at=(0, 0), anchor="top-left", model="reinhard", device="cpu")
    assert isinstance(t, torch.Tensor) and t.shape == (3, 256, 256)
    # a ready Harmonizer is reused as it is
    h = harmonize.Harmonizer("reinhard", device="cpu")
    got = harmonize.compose(cut, real_path, at=(0, 0), anchor="top-left", model=h)
    assert (np.asarray(got) == _rgb(out)).all()
    with pytest.raises(UsageError, match="go to the Harmonizer"):
        harmonize.compose(cut, real_path, model=h, size=128)


# --------------------------------------------------------------------------- placement


def test_placement_anchors_and_default() -> None:
    bg = (100, 80)
    assert placement((10, 6), bg) == Placement(45, 37, 10, 6), "centred by default"
    assert placement((10, 6), bg, anchor="bottom") == Placement(45, 74, 10, 6), "bottom: on the bottom edge's middle"
    assert placement((10, 6), bg, anchor="top-left") == Placement(0, 0, 10, 6)
    assert placement((10, 6), bg, at=(0, 0), anchor="top-left") == Placement(0, 0, 10, 6)
    assert placement((10, 6), bg, at=(100, 80), anchor="bottom-right") == Placement(90, 74, 10, 6)
    assert placement((10, 6), bg, at=(50, 40)) == Placement(45, 37, 10, 6)
    assert placement((10, 6), bg, at=(50, 40), scale=2.5) == Placement(38, 33, 25, 15)
    assert placement((3, 3), bg, at=(0, 0), scale=0.01, anchor="top-left") == Placement(0, 0, 1, 1), "at least a pixel"
    assert set(ANCHORS) == {"center", "top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right"}
    from harmonize.cli import compose as cli_compose

    assert cli_compose._ANCHORS == tuple(ANCHORS)
    for bad in (dict(anchor="middle"), dict(scale=0), dict(scale=-1.0), dict(scale=float("nan")), dict(at=(1,))):
        with pytest.raises(UsageError):
            placement((10, 6), bg, **bad)


def test_paste_keeps_soft_edges_and_the_background_bit_for_bit() -> None:
    cut, bg = _rgba(soft=True), _background()
    composite, mask = paste(cut, bg, at=(20, 30), anchor="top-left")
    alpha = cut[..., 3] / 255.0
    m = mask[0].numpy()
    assert np.allclose(m[30:70, 20:80], alpha, atol=1e-6), "the mask is the alpha, placed"
    soft = (m > 0) & (m < 1)
    assert soft.sum() > 50, "soft edges stay soft"
    outside = m == 0
    bgf = torch.from_numpy(bg).permute(2, 0, 1).float() / 255
    assert torch.equal(composite[:, torch.from_numpy(outside)], bgf[:, torch.from_numpy(outside)])
    expected = alpha[..., None] * cut[..., :3] / 255 + (1 - alpha[..., None]) * bg[30:70, 20:80] / 255
    assert np.allclose(composite[:, 30:70, 20:80].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    # harmonized: the background is untouched, the soft edge blends between the two
    out = harmonize.compose(cut, bg, at=(20, 30), anchor="top-left", model="reinhard", device="cpu")
    assert (out[outside] == bg[outside]).all()
    assert np.abs(out[m > 0.99].astype(int) - np.rint(composite.permute(1, 2, 0).numpy() * 255)[m > 0.99]).mean() > 5


def test_scaled_cutout_has_no_fringe_and_crops_at_the_edges() -> None:
    white = _rgba(40, 60, soft=True, color=(255, 255, 255), texture=False)
    bg = np.full((120, 160, 3), 255, np.uint8)
    for scale in (0.37, 1.0, 2.3):
        composite, mask = paste(white, bg, scale=scale)
        assert float((1 - composite).abs().max()) < 1e-5, f"scale {scale}: premultiplied resizing leaves no dark fringe"
        assert int((mask[0] > 0).sum()) > 0
    composite, mask = paste(_rgba(), _background(), at=(-30, -20), anchor="top-left")  # hangs over the corner
    assert mask.shape == (1, 120, 160) and float(mask[0, :20, :30].max()) > 0.9 and float(mask[0, 20:, 30:].max()) == 0
    _, big = paste(_rgba(), _background(), scale=2.0)
    ys, xs = np.nonzero(big[0].numpy() > 0)
    assert ys.max() - ys.min() + 1 > 60 and xs.max() - xs.min() + 1 > 100, "scale 2 doubles the object"


def test_cutout_inputs() -> None:
    rgba = _rgba()
    a = cutout_to_tensor(rgba)
    assert a.shape == (4, 40, 60)
    assert torch.equal(cutout_to_tensor(Image.fromarray(rgba, "RGBA")), a)
    assert torch.equal(cutout_to_tensor(torch.from_numpy(rgba).permute(2, 0, 1)), a)
    assert torch.allclose(cutout_to_tensor(rgba.astype(np.uint16) * 257), a)
    la = Image.fromarray(rgba, "RGBA").convert("LA")
    assert cutout_to_tensor(la).shape == (4, 40, 60)
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.info["transparency"] = 0
    assert cutout_to_tensor(pal).shape == (4, 40, 60), "a palette image with a transparent colour"
    with pytest.raises(InvalidInputError, match="no transparency"):
        cutout_to_tensor(rgba[..., :3])
    with pytest.raises(InvalidInputError, match="no transparency"):
        cutout_to_tensor(Image.fromarray(rgba[..., :3]))
    with pytest.raises(TypeError):
        cutout_to_tensor([1, 2, 3])


# --------------------------------------------------------------------------- the command's errors


def _write_cutouts(tmp: Path) -> dict[str, Path]:
    files = {}
    files["cut"] = tmp / "cut.png"
    Image.fromarray(_rgba(), "RGBA").save(files["cut"])
    files["rgb"] = tmp / "opaque.png"
    Image.fromarray(_rgba()[..., :3]).save(files["rgb"])
    files["jpg"] = tmp / "photo.jpg"
    Image.fromarray(_rgba()[..., :3]).save(files["jpg"])
    clear = _rgba()
    clear[..., 3] = 0
    files["clear"] = tmp / "clear.png"
    Image.fromarray(clear, "RGBA").save(files["clear"])
    files["bg"] = tmp / "bg.jpg"
    Image.fromarray(_background()).save(files["bg"], quality=95)
    return files


@pytest.mark.parametrize(
    "cutout, extra, words",
    [
        ("rgb", [], ["opaque.png", "no transparency"]),
        ("jpg", [], ["photo.jpg", "no transparency"]),
        ("clear", [], ["clear.png", "fully transparent"]),
        ("cut", ["--at", "500,500"], ["cut.png", "entirely off the 160x120 background"]),
        ("cut", ["--at=-100,10", "--anchor", "top-left"], ["entirely off"]),
        ("cut", ["--scale", "0"], ["--scale must be positive"]),
        ("missing", [], ["missing.png", "no such file"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, cutout, extra, words) -> None:
    files = _write_cutouts(tmp_path)
    path = files.get(cutout, tmp_path / "missing.png")
    out = tmp_path / "out.png"
    rc = main(["compose", str(path), str(files["bg"]), "-o", str(out), "--save-mask", str(tmp_path / "m.png"), *extra, *FAST])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and all(w in line for w in words), line
    assert not out.exists() and not (tmp_path / "m.png").exists()


def test_outputs_are_checked_first(tmp_path, capsys) -> None:
    files = _write_cutouts(tmp_path)
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    rc = main(["compose", str(files["cut"]), str(files["bg"]), "-o", str(out), *FAST])
    assert rc == 2 and "--overwrite" in _one_line(capsys.readouterr().err) and out.read_bytes() == b"precious"
    rc = main(["compose", str(files["cut"]), str(files["bg"]), "-o", str(tmp_path / "o.xyz"), *FAST])
    assert rc == 2 and ".xyz" in _one_line(capsys.readouterr().err)
    rc = main(["compose", str(files["cut"]), str(files["bg"]), "-o", str(out), "--save-composite", str(out), "--overwrite", *FAST])
    assert rc == 2 and "different files" in _one_line(capsys.readouterr().err)
    rc = main(["compose", str(files["cut"]), str(files["bg"]), "-o", str(out), "--overwrite", "--scale", "1.5", "--anchor", "bottom", *FAST])
    assert rc == 0 and Image.open(out).size == (160, 120)


def test_save_composite_and_mask_keep_the_soft_pair(tmp_path, capsys) -> None:
    files = _write_cutouts(tmp_path)
    out, c, m = tmp_path / "out.png", tmp_path / "c.png", tmp_path / "m.png"
    rc = main(["compose", str(files["cut"]), str(files["bg"]), "-o", str(out), "--at", "40,50", "--save-composite", str(c), "--save-mask", str(m), *FAST])
    assert rc == 0, capsys.readouterr().err
    composite, mask = paste(files["cut"], files["bg"], at=(40, 50))
    saved_mask = np.asarray(Image.open(m))
    assert Image.open(m).mode == "L" and saved_mask.shape == (120, 160)
    assert (saved_mask == np.rint(mask[0].numpy() * 255)).all()
    assert ((saved_mask > 0) & (saved_mask < 255)).sum() > 50, "soft edges kept"
    assert (_rgb(c) == np.rint(composite.permute(1, 2, 0).numpy() * 255)).all()
    # the saved pair, given to `harmonize run`, gives the same result (up to the 8-bit rounding of the pair)
    rc = main(["run", str(c), str(m), "-o", str(tmp_path / "again.png"), "--quiet", *FAST])
    diff = np.abs(_rgb(tmp_path / "again.png").astype(int) - _rgb(out))
    assert rc == 0 and diff.mean() < 0.5, diff.mean()
