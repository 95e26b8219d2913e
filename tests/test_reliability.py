"""Trust: no code runs from a file, no silent wrong result, no half-done batch (docs/reliability.md).

One test (or a few) per case of the issue, on the shared data where it matters. Each class
of problem has its rule in docs/reliability.md; the test names say which.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABELME, SAMPLE, require
from PIL import Image
from torch import Tensor, nn

import harmonize
from harmonize import create_model
from harmonize._hub import save_pretrained
from harmonize.cli import main
from harmonize.data.io import MAX_PIXELS_ENV, _open_checked, load_image, load_mask, read_header
from harmonize.errors import (
    ConfigError,
    ImageReadError,
    InvalidInputError,
    NonFiniteError,
    UsageError,
)
from harmonize.train.trainer import load_checkpoint_state

HCOCO = SAMPLE / "HCOCO"
COMP, MASK = HCOCO / "composite_images" / "c35030_1_1.jpg", HCOCO / "masks" / "c35030_1.png"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line(err: str, command: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith(f"harmonize {command}: "), err
    return lines[0]


def _no_model_loads(monkeypatch) -> None:
    import harmonize._factory as factory

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(factory, "load_model", refuse)
    monkeypatch.setattr(factory, "create_model", refuse)


def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w x h pixels and holds almost nothing (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    path.write_bytes(png + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def _mini_iharmony4(root: Path, n: int = 3) -> list[str]:
    """A copy of the first n LabelMe test triplets in the iHarmony4 layout (under tmp_path)."""
    src = require(LABELME)
    names = [ln.strip() for ln in (src / "LabelMe_test.txt").read_text().splitlines() if ln.strip()][:n]
    for sub in ("composite_images", "masks", "real_images"):
        (root / sub).mkdir(parents=True)
    for entry in names:
        stem = Path(entry).stem
        name, k, _ = stem.rsplit("_", 2)
        shutil.copy(src / "composite_images" / Path(entry).name, root / "composite_images")
        shutil.copy(src / "masks" / f"{name}_{k}.png", root / "masks")
        shutil.copy(src / "real_images" / f"{name}.jpg", root / "real_images")
    (root / "LabelMe_test.txt").write_text("\n".join(Path(e).name for e in names) + "\n")
    return [Path(e).name for e in names]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not


# ================================================================= security


class _Planted:
    """Unpickling this runs a shell command: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickle_checkpoint_is_refused_on_resume_and_runs_nothing(tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    run.mkdir()
    torch.save({"step": 1, "model": _Planted(marker)}, run / "last.pt")
    torch.load(run / "last.pt", weights_only=False)  # the trap is live: unpickling runs the command
    assert marker.exists()
    marker.unlink()

    rc, _, err = _cli(capsys, "train", "--model", "test_gknet", "--data", require(LABELME), "--out", run,
                      "--resume", "--eval-split", "none", "--workers", "0", "--no-progress")
    assert rc == 2 and "last.pt" in _one_line(err, "train") and "refused" in err
    assert not marker.exists(), "code ran from the checkpoint"


def test_local_dir_typo_is_an_error_without_network(tmp_path, capsys, monkeypatch):
    import harmonize._hub as hub

    def offline(*a, **k):
        raise AssertionError("local-dir: must not reach the Hub")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    rc, _, err = _cli(capsys, "run", COMP, MASK, "-o", tmp_path / "o.png", "--model", "local-dir:org/typo")
    assert rc == 2 and "no such folder" in _one_line(err, "run") and not (tmp_path / "o.png").exists()


@pytest.fixture
def saved_model(tmp_path) -> Path:
    folder = tmp_path / "saved"
    save_pretrained(create_model("test_gknet"), folder)
    return folder


def _edit_config(folder: Path, **model_args) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_args"] = model_args
    (folder / "config.json").write_text(json.dumps(cfg))


def test_huge_model_args_are_refused_before_allocating(saved_model, capsys):
    _edit_config(saved_model, widths=[100000] * 5)  # ~4e12 parameters: 16 TB of float32
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="parameters, over the limit"):
        create_model(f"local-dir:{saved_model}", pretrained=True)
    rc, _, err = _cli(capsys, "run", COMP, MASK, "-o", saved_model / "o.png", "--model", f"local-dir:{saved_model}")
    assert rc == 2 and "over the limit" in _one_line(err, "run")
    assert time.perf_counter() - start < 20


def test_config_shapes_are_compared_with_the_weights_header_before_building(saved_model, monkeypatch):
    import harmonize._hub as hub

    _edit_config(saved_model, lre_dim=32)  # saved with 16: every LRE weight has another shape
    monkeypatch.setattr(hub, "load_file", lambda *a, **k: pytest.fail("weights were read before the shapes were checked"))
    with pytest.raises(harmonize.errors.WeightsMismatchError, match="shape mismatches: lre"):
        create_model(f"local-dir:{saved_model}", pretrained=True)


@pytest.mark.parametrize(
    "model_args, message",
    [
        ({"widths": "abc"}, "'widths' must be a list of integers"),
        ({"use_kpb": "no"}, "'use_kpb' must be true or false"),
        ({"nope": 1}, "unexpected keyword argument 'nope'"),
    ],
)
def test_malformed_config_values_are_one_line(saved_model, capsys, model_args, message):
    _edit_config(saved_model, **model_args)
    rc, _, err = _cli(capsys, "run", COMP, MASK, "-o", saved_model / "o.png", "--model", f"local-dir:{saved_model}")
    assert rc == 2 and message in _one_line(err, "run")


def test_image_pixel_limit_is_checked_from_the_header(tmp_path, capsys, monkeypatch):
    mask = tmp_path / "m.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask)
    for side in (20000, 10000):  # over Pillow's limit (a traceback before), and under it (8 GB before)
        big = _png_header(tmp_path / f"big{side}.png", side, side)
        with pytest.raises(ImageReadError, match=f"{side}x{side} is .* over the limit.*{MAX_PIXELS_ENV}"):
            load_image(big)
        rc, _, err = _cli(capsys, "run", big, mask, "-o", tmp_path / "o.png", "--model", "reinhard")
        assert rc == 2 and MAX_PIXELS_ENV in _one_line(err, "run")
    monkeypatch.setenv(MAX_PIXELS_ENV, str(20000 * 20000))  # the documented way to raise the limit...
    with _open_checked(tmp_path / "big20000.png") as im:  # ...passes Pillow's own limit too (header only)
        assert im.size == (20000, 20000)
    (w, h), _, _ = read_header(require(COMP))
    monkeypatch.setenv(MAX_PIXELS_ENV, str(w * h - 1))  # and lowering it refuses a real photo
    with pytest.raises(ImageReadError, match="over the limit"):
        load_image(COMP)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(w * h))
    assert load_image(COMP).shape == (3, h, w)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(UsageError, match=MAX_PIXELS_ENV):
        load_image(COMP)


# ================================================================= silent wrong results


def test_same_folder_for_images_and_masks(tmp_path, capsys):
    shots = tmp_path / "shots"
    shots.mkdir()
    shutil.copy(require(COMP), shots / "IMG.jpg")
    shutil.copy(MASK, shots / "IMG_mask.png")
    rc, _, err = _cli(capsys, "run", "--images", shots, "--masks", shots, "-o", tmp_path / "out", "--model", "reinhard",
                      "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["IMG.jpg"], "the mask is not harmonized"
    rc, _, err = _cli(capsys, "run", COMP, MASK, "-o", tmp_path / "single.jpg", "--model", "reinhard", "--quiet")
    assert rc == 0, err
    assert (tmp_path / "out" / "IMG.jpg").read_bytes() == (tmp_path / "single.jpg").read_bytes(), "IMG_mask.png is its mask"
    rc, _, err = _cli(capsys, "run", COMP, COMP, "-o", tmp_path / "self.jpg", "--model", "reinhard")
    assert rc == 2 and "both COMPOSITE and MASK" in _one_line(err, "run")


class _NaNOnSome(nn.Module):
    """The composite, except NaN over the foreground of every third image."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        out = image.clone()
        for i in range(image.shape[0]):
            if self.seen % 3 == 0:
                out[i] = torch.where(mask[i] > 0, float("nan"), image[i])
            self.seen += 1
        return out


def test_evaluate_scores_nan_outputs_as_the_worst_not_as_skips(tmp_path):
    from harmonize.data import IHarmony4Dataset
    from harmonize.evaluate import evaluate_models

    data = IHarmony4Dataset(require(LABELME), split="test")
    summaries, records = evaluate_models(
        {"nan": _NaNOnSome(), "composite": create_model("composite")}, data, indices=range(6), progress=False
    )
    nan, comp = summaries["nan"]["overall"], summaries["composite"]["overall"]
    assert nan["nonfinite_outputs"] == 2 and nan["empty_masks"] == 0 and nan["count"] == 6
    assert nan["mse"] > comp["mse"] and nan["fmse"] > comp["fmse"] and nan["psnr"] < comp["psnr"]
    assert all(np.isfinite(r["mse"]) for r in records["nan"])


def _poison_at(step: int):
    """An optimizer builder whose step ``step`` leaves a NaN in the weights (its loss was finite)."""
    from harmonize.train import build

    real = build.build_optimizer

    def builder(model, config):
        opt = real(model, config)
        count = {"n": 0}

        def hook(optimizer, args, kwargs):
            count["n"] += 1
            if count["n"] == step:
                with torch.no_grad():
                    w = next(model.parameters())
                    w[(0,) * w.dim()] = float("nan")

        opt.register_step_post_hook(hook)
        return opt

    return builder


_TRAIN = ["--model", "test_gknet", "--size", "32", "--batch-size", "2", "--steps", "4", "--ckpt-every", "2",
          "--eval-split", "none", "--workers", "0", "--amp", "none", "--lr", "1e-3", "--no-progress"]


def test_divergence_on_the_last_step_keeps_the_last_finite_checkpoint(tmp_path, capsys, monkeypatch):
    from harmonize.train import build

    monkeypatch.setattr(build, "build_optimizer", _poison_at(4))
    run = tmp_path / "run"
    rc, _, err = _cli(capsys, "train", "--data", require(LABELME), "--out", run, *_TRAIN)
    line = _one_line(err, "train")
    assert rc == 2 and "diverged" in line and "at step 4" in line and f"{run / 'last.pt'} (step 2)" in line
    state = load_checkpoint_state(run / "last.pt")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / "final").exists(), "no final weights from a diverged run"


def test_divergence_before_any_checkpoint_says_there_is_none(tmp_path, capsys, monkeypatch):
    from harmonize.train import build

    monkeypatch.setattr(build, "build_optimizer", _poison_at(2))  # the first checkpoint (step 2) would hold NaN
    run = tmp_path / "run"
    rc, _, err = _cli(capsys, "train", "--data", require(LABELME), "--out", run, *_TRAIN)
    assert rc == 2 and "no checkpoint was written" in _one_line(err, "train")
    assert not (run / "last.pt").exists() and not (run / "final").exists()


@pytest.mark.parametrize("name", ["test_gknet", "test_hdnet"])
def test_nan_weights_leave_the_background_bit_for_bit(name):
    x, m = load_image(require(COMP))[None], load_mask(MASK)[None]
    model = create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
        y = model(x, m)
    bg = (m == 0).expand_as(x)
    assert torch.equal(y[bg], x[bg]), "background bit for bit"
    with pytest.raises(NonFiniteError, match="NaN"):
        harmonize.harmonize(x[0], m[0], model=model)


def test_nan_weights_in_a_checkpoint_are_refused(tmp_path, capsys):
    model = create_model("test_gknet")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_pretrained(model, tmp_path / "nan")
    out = tmp_path / "o.png"
    rc, _, err = _cli(capsys, "run", require(COMP), MASK, "-o", out, "--model", "test_gknet",
                      "--checkpoint", tmp_path / "nan" / "model.safetensors")
    assert rc == 2 and "NaN" in _one_line(err, "run") and not out.exists()


def test_non_finite_input_is_an_error():
    x, m = load_image(require(COMP)), load_mask(MASK)
    x[1, 5, 7] = float("nan")  # one background pixel
    with pytest.raises(InvalidInputError, match="NaN"):
        harmonize.harmonize(x, m, model="reinhard")
    with pytest.raises(InvalidInputError, match="NaN"):
        harmonize.harmonize(x.permute(1, 2, 0).numpy(), m[0].numpy(), model="reinhard")


def test_values_outside_the_range_are_an_error_and_dtypes_are_kept():
    x, m = load_image(require(COMP)), load_mask(MASK)
    for bad in (x * 255, x.permute(1, 2, 0).numpy() * 255):  # a float image in 0..255
        with pytest.raises(InvalidInputError, match="0..1"):
            harmonize.harmonize(bad, m, model="reinhard")
    with pytest.raises(InvalidInputError, match="0..1"):
        harmonize.harmonize(x, m * 255, model="reinhard")  # a float mask in 0..255
    with pytest.raises(InvalidInputError, match="uint8"):
        harmonize.harmonize((x * 255).int(), m, model="reinhard")
    u8 = (x * 255).round().to(torch.uint8)
    out = harmonize.harmonize(u8, m, model="reinhard")
    bg = (m == 0).expand_as(u8)
    assert out.dtype == torch.uint8 and torch.equal(out[bg], u8[bg]) and not torch.equal(out, u8)
    ref = harmonize.harmonize(x, m, model="reinhard")
    assert (out.float() - ref * 255).abs().max() <= 0.5 + 1e-3, "uint8 out is the float result, rounded"
    half = harmonize.harmonize(x.half(), m, model="reinhard")
    assert half.dtype == torch.float16 and torch.equal(half[bg], x.half()[bg])


# ================================================================= half-done work


def _folder_of_composites(root: Path, n: int = 3) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    src = require(LABELME)
    for entry in [ln for ln in (src / "LabelMe_test.txt").read_text().splitlines() if ln.strip()][:n]:
        stem = Path(entry).stem
        shutil.copy(src / "composite_images" / f"{stem}.jpg", images / f"{stem}.jpg")
        shutil.copy(src / "masks" / f"{stem.rsplit('_', 1)[0]}.png", masks)
    return images, masks


def test_unreadable_file_mid_batch_is_skipped_reported_and_resumable(tmp_path, capsys):
    images, masks = _folder_of_composites(tmp_path)
    names = sorted(p.name for p in images.iterdir())
    good = (images / names[1]).read_bytes()
    _truncate(images / names[1])
    out = tmp_path / "out"
    rc, _, err = _cli(capsys, "run", "--images", images, "--masks", masks, "-o", out, "--model", "reinhard", "--quiet")
    assert rc == 1, err
    assert sorted(p.name for p in out.iterdir()) == [names[0], names[2]], "the others are done, nothing partial"
    assert f"skipped: {images / names[1]}" in err and "wrote 2 of 3" in err and "Traceback" not in err
    rc, _, err = _cli(capsys, "run", "--images", images, "--masks", masks, "-o", out, "--model", "reinhard")
    assert rc == 2 and "--skip-existing" in _one_line(err, "run")
    (images / names[1]).write_bytes(good)  # fixed: the rerun does only what is left
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, _, err = _cli(capsys, "run", "--images", images, "--masks", masks, "-o", out, "--model", "reinhard", "--quiet",
                      "--skip-existing")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == names
    assert all((out / k).stat().st_mtime_ns == t for k, t in before.items()), "done outputs are left alone"


def test_bmp_composites_are_written_as_bmp(tmp_path, capsys):
    images, masks = _folder_of_composites(tmp_path, n=2)
    first = sorted(images.iterdir())[0]
    Image.open(first).save(first.with_suffix(".bmp"))
    first.unlink()
    out = tmp_path / "out"
    rc, _, err = _cli(capsys, "run", "--images", images, "--masks", masks, "-o", out, "--model", "reinhard", "--quiet")
    assert rc == 0, err
    written = sorted(out.iterdir())
    assert [p.suffix for p in written] == [".bmp", ".jpg"] and Image.open(written[0]).format == "BMP"
    rc, _, err = _cli(capsys, "run", "--images", images, "--masks", masks, "-o", tmp_path / "o2", "--ext", "gif")
    assert rc == 2 and ".bmp" in _one_line(err, "run")


def test_arguments_are_checked_before_any_model_loads(tmp_path, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    start = time.perf_counter()
    rc, _, err = _cli(capsys, "evaluate", "composite", "--data", require(LABELME), "--out", a_file / "eval")
    assert rc == 2 and "not a folder" in _one_line(err, "evaluate")
    rc, _, err = _cli(capsys, "run", require(COMP), MASK, "-o", a_file / "o.png", "--model", "reinhard")
    assert rc == 2 and "not a folder" in _one_line(err, "run")
    images, masks = _folder_of_composites(tmp_path / "f", n=1)
    rc, _, err = _cli(capsys, "run", "--images", images, "--masks", masks, "-o", a_file / "out", "--model", "reinhard")
    assert rc == 2 and "not a folder" in _one_line(err, "run")
    rc, _, err = _cli(capsys, "export", "gknet", "-o", tmp_path / "g.onnx", "--opset", "99", "--no-verify")
    assert rc == 2 and "--opset" in _one_line(err, "export")
    assert time.perf_counter() - start < 10


# ================================================================= tracebacks where a user needs one line


@pytest.mark.parametrize("command", ["run", "evaluate", "export"])
def test_weights_that_do_not_fit_are_one_line(tmp_path, capsys, command):
    save_pretrained(create_model("test_hdnet"), tmp_path / "hd")
    ckpt = tmp_path / "hd" / "model.safetensors"
    argv = {
        "run": ["run", require(COMP), MASK, "-o", tmp_path / "o.png", "--model", "test_gknet"],
        "evaluate": ["evaluate", "test_gknet", "--data", require(LABELME), "--limit", "1", "--no-progress"],
        "export": ["export", "test_gknet", "-o", tmp_path / "g.onnx", "--no-verify"],
    }[command]
    rc, _, err = _cli(capsys, *argv, "--checkpoint", ckpt)
    assert rc == 2 and "cannot load" in _one_line(err, command)
    assert not list(tmp_path.glob("o.png")) and not list(tmp_path.glob("g.onnx"))


def test_malformed_model_args_and_run_config_are_one_line(tmp_path, capsys):
    save_pretrained(create_model("test_gknet"), tmp_path / "g")
    rc, _, err = _cli(capsys, "evaluate", "test_gknet", "--data", require(LABELME), "--checkpoint",
                      tmp_path / "g" / "model.safetensors", "--model-args", '{"widths": 5}', "--no-progress")
    assert rc == 2 and "'widths' must be a list of integers" in _one_line(err, "evaluate")
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"model": "test_gknet", "data": str(LABELME), "lr": "fast"}))
    rc, _, err = _cli(capsys, "train", "--config", cfg, "--out", tmp_path / "run")
    assert rc == 2 and "lr must be a number" in _one_line(err, "train")


def test_corrupt_image_in_a_dataloader_worker_is_one_line(tmp_path, capsys):
    names = _mini_iharmony4(tmp_path / "data")
    bad = tmp_path / "data" / "composite_images" / names[1]
    _truncate(bad)
    rc, _, err = _cli(capsys, "evaluate", "composite", "--data", tmp_path / "data", "--workers", "1",
                      "--batch-size", "1", "--no-progress")
    line = _one_line(err, "evaluate")
    assert rc == 2 and str(bad) in line and "cannot read" in line and "worker" not in line


def test_ctrl_c_during_start_up_is_130_and_one_line(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "tqdm":  # an import inside the command's main: start-up
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    out = tmp_path / "o.png"
    rc, _, err = _cli(capsys, "run", require(COMP), MASK, "-o", out, "--model", "reinhard")
    assert rc == 130 and _one_line(err, "run") == "harmonize run: interrupted" and not out.exists()


def test_network_size_that_cannot_fit_is_refused_up_front(tmp_path, capsys, monkeypatch):
    from harmonize.cli import run as cli_run
    from harmonize.highres import Harmonizer
    from harmonize.highres.harmonizer import MAX_NETWORK_SIZE

    assert cli_run._MAX_SIZE == MAX_NETWORK_SIZE
    _no_model_loads(monkeypatch)
    rc, _, err = _cli(capsys, "run", require(COMP), MASK, "-o", tmp_path / "o.png", "--size", "5000")
    assert rc == 2 and f"between 16 and {MAX_NETWORK_SIZE}" in _one_line(err, "run")
    with pytest.raises(UsageError, match="size must be between"):
        Harmonizer(create_model("reinhard"), size=5000)


def test_interrupt_and_user_errors_never_leave_a_partial_file(tmp_path):
    # a pickled object in a .pt given as weights is refused too (never unpickled as code)
    (tmp_path / "w.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UsageError, match="refusing to unpickle"):
        harmonize.load_model("test_gknet", tmp_path / "w.pt")
    assert not list(tmp_path.glob(".*.part"))
