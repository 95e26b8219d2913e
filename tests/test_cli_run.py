"""``harmonize run`` and ``harmonize demo``: files as people have them, errors as one line, atomic outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SAMPLE, require
from PIL import Image

import harmonize
from harmonize.cli import main

# reinhard changes the foreground's colours and needs no weights.
MODEL = ["--model", "reinhard", "--quiet"]


def _arrays(h: int = 120, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 120 * xx / w, 80 + 100 * yy / h, 150 - 60 * xx / w], axis=2)
    img = img + rng.normal(0, 12, size=(h, w, 3))
    img[h // 4 : 3 * h // 4, w // 4 : w // 2] *= [1.3, 0.7, 0.6]  # an off-colour foreground
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : w // 2] = 255
    return img.clip(0, 255).astype(np.uint8), mask


def _write(tmp: Path, name: str = "comp.png", mask_name: str = "mask.png", **kw) -> tuple[Path, Path]:
    img, mask = _arrays(**kw)
    ip, mp = tmp / name, tmp / mask_name
    Image.fromarray(img).save(ip)
    Image.fromarray(mask).save(mp)
    return ip, mp


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["run", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("harmonize run: ")
    return lines[0]


# ----------------------------------------------------------------- single images


def test_run_writes_a_harmonized_image(tmp_path, capsys) -> None:
    ip, mp = _write(tmp_path)
    out = tmp_path / "out" / "result.png"  # a missing folder is created
    rc, stdout, err = _run(capsys, str(ip), str(mp), "-o", str(out), "--model", "reinhard")
    assert rc == 0, err
    assert "wrote 1 image" in stdout
    a, o, m = np.asarray(Image.open(ip)), np.asarray(Image.open(out)), np.asarray(Image.open(mp))
    assert o.shape == a.shape
    assert (o[m == 0] == a[m == 0]).all(), "background unchanged"
    assert np.abs(o[m > 0].astype(int) - a[m > 0]).mean() > 5, "foreground harmonized"
    assert not list(out.parent.glob(".*.part")), "no temporary file left"


def test_amp_runs_bfloat16_on_the_cpu_within_one_level(tmp_path, capsys) -> None:
    ip, mp = _write(tmp_path, h=96, w=128)
    outs = {}
    for flag in ((), ("--amp",)):
        out = tmp_path / f"out{len(flag)}.png"
        rc, _, err = _run(capsys, str(ip), str(mp), "-o", str(out), "--model", "gknet", *flag)
        assert rc == 0, err
        outs[flag] = np.asarray(Image.open(out)).astype(int)
    diff = np.abs(outs[("--amp",)] - outs[()])
    m = np.asarray(Image.open(mp))
    assert diff.max() <= 1 and diff.any(), diff.max()  # bfloat16 ran; 8-bit outputs a level apart at most
    assert not diff[m == 0].any()


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "tif"])
def test_formats_in_and_out(tmp_path, capsys, ext: str) -> None:
    ip, mp = _write(tmp_path, name=f"comp.{ext}")
    out = tmp_path / f"out.{ext}"
    rc, _, err = _run(capsys, str(ip), str(mp), "-o", str(out), *MODEL)
    assert rc == 0, err
    with Image.open(out) as im:
        assert im.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "tif": "TIFF"}[ext]
        assert im.size == (160, 120) and im.mode == "RGB"


def test_exif_orientation_is_applied(tmp_path, capsys) -> None:
    img, mask = _arrays(120, 160)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: 120 wide, 160 tall
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    shown_mask = np.ascontiguousarray(np.rot90(mask, k=-1))  # the mask drawn on the image as shown
    Image.fromarray(shown_mask).save(tmp_path / "mask.png")
    rc, _, err = _run(capsys, str(tmp_path / "rot.jpg"), str(tmp_path / "mask.png"), "-o", str(tmp_path / "o.png"), *MODEL)
    assert rc == 0, err
    assert Image.open(tmp_path / "o.png").size == (120, 160)
    # A mask drawn on the stored pixels does not fit the image as shown: the error says why.
    Image.fromarray(mask).save(tmp_path / "raw_mask.png")
    rc, _, err = _run(capsys, str(tmp_path / "rot.jpg"), str(tmp_path / "raw_mask.png"), "-o", str(tmp_path / "o2.png"), *MODEL)
    assert rc == 2 and "EXIF" in _one_line_error(err)


@pytest.mark.parametrize("mode", ["RGBA", "L", "I;16"])
def test_rgba_grey_and_16bit_inputs(tmp_path, capsys, mode: str) -> None:
    img, mask = _arrays()
    if mode == "RGBA":
        im = Image.fromarray(np.concatenate([img, np.full(img.shape[:2] + (1,), 128, np.uint8)], axis=2))
    elif mode == "L":
        im = Image.fromarray(img).convert("L")
    else:
        im = Image.fromarray(img[..., 0].astype(np.uint16) * 257).convert("I;16")
    im.save(tmp_path / "comp.png")
    assert Image.open(tmp_path / "comp.png").mode == mode
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rc, _, err = _run(capsys, str(tmp_path / "comp.png"), str(tmp_path / "mask.png"), "-o", str(tmp_path / "o.png"), *MODEL)
    assert rc == 0, err
    out = Image.open(tmp_path / "o.png")
    assert out.mode == "RGB" and out.size == (160, 120)


def test_mask_encodings_agree(tmp_path, capsys) -> None:
    ip, mp = _write(tmp_path)
    m = np.asarray(Image.open(mp))
    Image.fromarray((m > 0).astype(np.uint8)).save(tmp_path / "m01.png")  # 0/1
    Image.fromarray(np.repeat(m[..., None], 3, axis=2)).save(tmp_path / "mrgb.png")  # RGB
    Image.fromarray(np.repeat(m[..., None], 3, axis=2)).save(tmp_path / "mjpg.jpg", quality=90)  # lossy
    outs = {}
    for name in ("mask.png", "m01.png", "mrgb.png", "mjpg.jpg"):
        out = tmp_path / f"o_{name}.png"
        rc, _, err = _run(capsys, str(ip), str(tmp_path / name), "-o", str(out), *MODEL)
        assert rc == 0, err
        outs[name] = np.asarray(Image.open(out)).astype(int)
    assert (outs["m01.png"] == outs["mask.png"]).all() and (outs["mrgb.png"] == outs["mask.png"]).all()
    a = np.asarray(Image.open(ip)).astype(int)
    far = np.ones_like(m, bool)
    far[20:100, 30:90] = False  # away from the mask's edges JPEG noise is snapped to 0 or 1
    assert (outs["mjpg.jpg"][far & (m == 0)] == a[far & (m == 0)]).all()
    assert np.abs(outs["mjpg.jpg"] - outs["mask.png"]).max() <= 3


def test_soft_mask_blends_softly(tmp_path, capsys) -> None:
    img, mask = _arrays()
    ip = tmp_path / "comp.png"
    Image.fromarray(img).save(ip)
    hard = tmp_path / "hard.png"
    Image.fromarray(mask).save(hard)
    soft = tmp_path / "soft.png"
    Image.fromarray((mask // 2).astype(np.uint8)).save(soft)  # 50% everywhere in the object
    for m, o in ((hard, "h.png"), (soft, "s.png")):
        assert _run(capsys, str(ip), str(m), "-o", str(tmp_path / o), *MODEL)[0] == 0
    a = img.astype(float)
    h = np.asarray(Image.open(tmp_path / "h.png")).astype(float)
    s = np.asarray(Image.open(tmp_path / "s.png")).astype(float)
    fg = mask > 0
    # reinhard is global: a 50% mask gives the same change, half-blended with the composite.
    assert np.abs(s[fg] - (0.5 * h[fg] + 0.5 * a[fg])).mean() < 2.0


# ----------------------------------------------------------------- errors: one line, exit 2, nothing written


def test_mask_size_mismatch(tmp_path, capsys) -> None:
    ip, _ = _write(tmp_path)
    Image.fromarray(np.zeros((100, 160), np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "out.png"
    rc, _, err = _run(capsys, str(ip), str(tmp_path / "small.png"), "-o", str(out), *MODEL)
    line = _one_line_error(err)
    assert rc == 2 and "small.png" in line and "comp.png" in line and "160x100" in line and "160x120" in line
    assert not out.exists() and not list(tmp_path.glob(".*.part"))


def test_unreadable_and_missing_files(tmp_path, capsys) -> None:
    ip, mp = _write(tmp_path)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG")
    out = tmp_path / "out.png"
    rc, _, err = _run(capsys, str(bad), str(mp), "-o", str(out), *MODEL)
    assert rc == 2 and "broken.jpg" in _one_line_error(err) and "cannot read" in err
    rc, _, err = _run(capsys, str(ip), str(tmp_path / "nope.png"), "-o", str(out), *MODEL)
    assert rc == 2 and "nope.png" in _one_line_error(err) and "no such file" in err
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(ip.read_bytes()[:400])
    rc, _, err = _run(capsys, str(truncated), str(mp), "-o", str(out), *MODEL)
    assert rc == 2 and "trunc.png" in _one_line_error(err)
    rc, _, err = _run(capsys, str(ip), str(mp), "-o", str(tmp_path / "out.xyz"), *MODEL)
    assert rc == 2 and ".xyz" in _one_line_error(err)
    assert not out.exists() and not (tmp_path / "out.xyz").exists()


def test_empty_mask_writes_the_image_unchanged_with_a_warning(tmp_path, capsys) -> None:
    ip, _ = _write(tmp_path)
    Image.fromarray(np.zeros((120, 160), np.uint8)).save(tmp_path / "empty.png")
    out = tmp_path / "out.png"
    rc, _, err = _run(capsys, str(ip), str(tmp_path / "empty.png"), "-o", str(out), *MODEL)
    assert rc == 0 and "warning" in err and "empty.png" in err and "empty" in err
    assert (np.asarray(Image.open(out)) == np.asarray(Image.open(ip))).all()


def test_existing_output_needs_overwrite(tmp_path, capsys) -> None:
    ip, mp = _write(tmp_path)
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    rc, _, err = _run(capsys, str(ip), str(mp), "-o", str(out), *MODEL)
    assert rc == 2 and "out.png" in _one_line_error(err) and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    rc, _, err = _run(capsys, str(ip), str(mp), "-o", str(out), "--overwrite", *MODEL)
    assert rc == 0 and Image.open(out).size == (160, 120)


def test_writes_are_atomic(tmp_path, capsys, monkeypatch) -> None:
    ip, mp = _write(tmp_path)
    out = tmp_path / "out.png"

    def failing_save(self, fp, format=None, **params):  # noqa: A002
        Path(fp).write_bytes(b"\x89PNG half an image")  # the encoder got halfway...
        raise OSError("No space left on device")  # ...then the disk filled up

    monkeypatch.setattr(Image.Image, "save", failing_save)
    rc, _, err = _run(capsys, str(ip), str(mp), "-o", str(out), *MODEL)
    assert rc == 2 and "out.png" in _one_line_error(err) and "No space left" in err
    assert not out.exists()
    assert set(tmp_path.iterdir()) == {ip, mp}, "neither the output nor a temporary file is left"


def test_model_without_weights_is_a_clear_error(tmp_path, capsys) -> None:
    assert not harmonize.list_pretrained("test_hdnet.*")  # a model without weights
    ip, mp = _write(tmp_path)
    rc, _, err = _run(capsys, str(ip), str(mp), "-o", str(tmp_path / "o.png"), "--model", "test_hdnet", "--quiet")
    assert rc == 2 and "no pretrained weights" in _one_line_error(err)
    assert not (tmp_path / "o.png").exists()


# ----------------------------------------------------------------- folders


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _write(images, "a.png", "../masks/a.png", seed=0)  # NAME.png
    _write(images, "b.jpg", "../masks/b_mask.png", seed=1)  # NAME_mask.png
    _write(images, "c35030_1_2.jpg", "../masks/c35030_1.png", seed=2)  # iHarmony4 NAME_K_J -> NAME_K
    return images, masks


def test_folder_mode_matches_masks_by_name(tmp_path, capsys) -> None:
    images, masks = _folders(tmp_path)
    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, "--images", str(images), "--masks", str(masks), "-o", str(out), "--model", "reinhard")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "c35030_1_2.jpg"]
    assert "wrote 3 images" in stdout
    rc, _, err = _run(capsys, "--images", str(images), "--masks", str(masks), "-o", str(tmp_path / "o2"), "--ext", "webp", *MODEL)
    assert rc == 0 and sorted(p.suffix for p in (tmp_path / "o2").iterdir()) == [".webp"] * 3


def test_folder_mode_missing_masks(tmp_path, capsys) -> None:
    images, masks = _folders(tmp_path)
    _write(images, "lonely.png", "../lonely_elsewhere.png")
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "--images", str(images), "--masks", str(masks), "-o", str(out), *MODEL)
    assert rc == 2 and "lonely.png" in _one_line_error(err) and "--skip-missing" in err
    assert not out.exists() or not list(out.iterdir())
    rc, _, err = _run(capsys, "--images", str(images), "--masks", str(masks), "-o", str(out), "--skip-missing", *MODEL)
    assert rc == 0 and "lonely.png" in err and "warning" in err
    assert len(list(out.iterdir())) == 3


def test_folder_mode_checks_everything_before_writing(tmp_path, capsys) -> None:
    images, masks = _folders(tmp_path)
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(masks / "c35030_1.png")  # wrong size
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "--images", str(images), "--masks", str(masks), "-o", str(out), *MODEL)
    assert rc == 2 and "c35030_1.png" in _one_line_error(err) and "50x50" in err
    assert not out.exists() or not list(out.iterdir()), "nothing written"


def test_usage_errors(tmp_path, capsys) -> None:
    images, masks = _folders(tmp_path)
    for argv in (
        ["--images", str(images), "-o", str(tmp_path / "o")],
        [str(images / "a.png"), "-o", str(tmp_path / "o.png")],
        ["--images", str(tmp_path / "nowhere"), "--masks", str(masks), "-o", str(tmp_path / "o")],
    ):
        rc, _, err = _run(capsys, *argv, *MODEL)
        assert rc == 2
        _one_line_error(err)
    # --mask is argparse's abbreviation of --masks: the error says how one image is given
    rc, _, err = _run(capsys, str(images / "a.png"), "--mask", str(masks / "a.png"), "-o", str(tmp_path / "o.png"), *MODEL)
    assert rc == 2 and "harmonize run COMPOSITE MASK -o OUT" in _one_line_error(err)
    assert not (tmp_path / "o.png").exists()


# ----------------------------------------------------------------- demo


def test_demo_writes_grid_and_metrics(tmp_path, capsys) -> None:
    rc = main(["demo", "--model", "reinhard", "-o", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert rc == 0
    grid = Image.open(tmp_path / "demo" / "demo_grid.png")
    assert grid.width > 4 * 256 and grid.height > 4 * 256  # 4 samples x 4 columns
    doc = json.loads((tmp_path / "demo" / "demo_metrics.json").read_text())
    assert doc["model"] == "reinhard" and len(doc["samples"]) == 4
    assert doc["mean"]["fmse"] < doc["mean"]["composite_fmse"]
    assert "fMSE comp" in out and "mean" in out and "demo_grid.png" in out
    assert main(["demo", "--model", "reinhard", "-o", str(tmp_path / "demo")]) == 0, "re-running replaces its files"


def test_demo_with_a_model_without_weights_is_a_clear_error(tmp_path, capsys) -> None:
    rc = main(["demo", "--model", "test_hdnet", "-o", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert rc == 2 and "test_hdnet has no pretrained weights" in err and "Traceback" not in err
    assert not (tmp_path / "demo").exists()


def test_demo_default_is_the_pretrained_gknet(tmp_path, capsys) -> None:
    assert main(["demo", "-o", str(tmp_path / "demo")]) == 0
    metrics = json.loads((tmp_path / "demo" / "demo_metrics.json").read_text())
    out = capsys.readouterr().out
    assert "gknet" in out and (tmp_path / "demo" / "demo_grid.png").is_file()
    assert metrics["model"] == "gknet" and metrics["mean"]["fmse"] < metrics["mean"]["composite_fmse"]


# ----------------------------------------------------------------- 12 megapixels


def test_run_on_12_megapixels_scores_as_the_float_path(tmp_path) -> None:
    """A whole ``harmonize run`` on the 2832x4256 HAdobe5k photo (uint8 all the way, a fresh
    process) scores the fMSE the float path scores, within 1%."""
    from harmonize.data.io import load_image, load_mask, save_image
    from harmonize.highres import Harmonizer
    from harmonize.metrics import fmse

    data = require(SAMPLE / "HAdobe5k")
    comp, mask = data / "composite_images" / "a0002_1_4.jpg", data / "masks" / "a0002_1.png"
    out = tmp_path / "out.jpg"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "harmonize", "run", str(comp), str(mask), "-o", str(out), "--quiet"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    m = load_mask(mask, threshold=None)
    ref = tmp_path / "float.jpg"  # what the command wrote before: float images, the result saved the same way
    save_image(Harmonizer("gknet", device="cpu")(load_image(comp), m), ref)
    real, fg = load_image(data / "real_images" / "a0002.jpg")[None], (m >= 0.5).float()[None]
    scores = [float(fmse(load_image(f)[None], real, fg)[0]) for f in (out, ref, comp)]
    assert scores[0] == pytest.approx(scores[1], rel=0.01), scores
    assert scores[0] < scores[2] / 4, "harmonized: far closer to the real photo than the composite"


def test_idle_threads_sleep_only_on_a_busy_machine(monkeypatch) -> None:
    # OMP_WAIT_POLICY=PASSIVE saves a busy machine's run from spinning threads, and costs an
    # idle one (GKNet's forward 145 -> 180-220 ms): harmonize run sets it only when busy
    from harmonize.cli import _options

    monkeypatch.delitem(sys.modules, "torch")  # as before the command imports it
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    _options.passive_threads()
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    _options.passive_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    _options.passive_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
