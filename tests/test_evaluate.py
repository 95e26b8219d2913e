"""``harmonize evaluate``, the reference models, and the LabelMe composite numbers."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
from safetensors.torch import save_file

import harmonize
from harmonize.cli import main as cli_main
from harmonize.data import IHarmony4Dataset
from harmonize.data.color import rgb_to_lab
from harmonize.evaluate import (
    default_batch_size,
    evaluate,
    evaluate_models,
    format_table1,
    format_table2,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LABELME = DATA / "labelme-harmony"
needs_labelme = pytest.mark.skipif(
    not (LABELME / "LabelMe_test.txt").is_file(),
    reason=f"LabelMe development data not found at {LABELME} (the repo's sibling shared/data)",
)


# ----------------------------------------------------------------- reference models


def _inputs(b: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = 0.2 + 0.6 * torch.rand(b, 3, size, size, generator=g)
    image[:, 0, : size // 2] *= 0.5  # a foreground with other colours than the background
    mask = torch.zeros(b, 1, size, size)
    mask[..., : size // 2, : size // 2] = 1
    return image, mask


@pytest.mark.parametrize("name", ["composite", "reinhard"])
def test_reference_models_registered_without_weights(name: str) -> None:
    assert name in harmonize.list_models()
    assert not any(n.startswith(name + ".") for n in harmonize.list_pretrained())
    model = harmonize.create_model(name, pretrained=True)  # nothing to load, not an error
    assert getattr(model, "needs_weights", True) is False
    assert sum(p.numel() for p in model.parameters()) == 0
    image, mask = _inputs()
    out = model(image, mask)
    assert out.shape == image.shape and torch.isfinite(out).all()
    bg = mask.expand_as(image) == 0
    assert torch.equal(out[bg], image[bg]), "background must come back bit for bit"
    with pytest.raises(ValueError, match="mask"):
        model(image, mask[:, :, :8])


def test_composite_returns_input() -> None:
    image, mask = _inputs()
    out = harmonize.create_model("composite")(image, mask)
    assert torch.equal(out, image) and out is not image


def test_reinhard_matches_background_statistics() -> None:
    image, mask = _inputs(b=1, size=48)
    out = harmonize.create_model("reinhard")(image, mask)
    lab_in, lab_out = rgb_to_lab(image)[0], rgb_to_lab(out)[0]
    fg, bg = mask[0, 0] == 1, mask[0, 0] == 0
    assert torch.allclose(lab_out[:, fg].mean(1), lab_in[:, bg].mean(1), atol=0.5)
    assert torch.allclose(lab_out[:, fg].std(1, unbiased=False), lab_in[:, bg].std(1, unbiased=False), rtol=0.05)
    assert not torch.allclose(out, image)
    empty = torch.zeros_like(mask)
    assert torch.equal(harmonize.create_model("reinhard")(image, empty), image)


# ----------------------------------------------------------------- LabelMe numbers


@needs_labelme
def test_labelme_composite_iharmony4_numbers() -> None:
    """The composite under the iHarmony4 script's rules: MSE 400.2, fMSE 1767.6, PSNR 25.05 (peak 255)."""
    data = IHarmony4Dataset(LABELME, split="test")
    assert len(data) == 200
    summary, records = evaluate(harmonize.create_model("composite"), data, preset="iharmony4", batch_size=50, progress=False)
    overall = summary["overall"]
    assert overall["count"] == 200 and len(records) == 200
    assert overall["mse"] == pytest.approx(400.2, rel=0.01)
    assert overall["fmse"] == pytest.approx(1767.6, rel=0.01)
    assert overall["psnr"] == pytest.approx(25.05, rel=0.01)
    assert summary["subsets"]["LabelMe"]["count"] == 200
    assert sum(b["count"] for b in summary["fg_ratio"].values()) == 200


@needs_labelme
def test_evaluate_models_one_pass_and_tables() -> None:
    data = IHarmony4Dataset(LABELME, split="test")
    models = {"composite": harmonize.create_model("composite"), "reinhard": harmonize.create_model("reinhard")}
    summaries, records = evaluate_models(models, data, "issam", batch_size=4, progress=False, indices=range(6))
    assert [len(r) for r in records.values()] == [6, 6]
    mean_mse = sum(r["mse"] for r in records["composite"]) / 6
    assert summaries["composite"]["overall"]["mse"] == pytest.approx(mean_mse)
    assert all(r["mse"] == pytest.approx(r["composite_mse"]) for r in records["composite"])
    t1, t2 = format_table1(summaries), format_table2(summaries)
    for name in models:
        assert name in t1 and name in t2
    assert "LabelMe (n=6)" in t1 and "fMSE" in t1
    assert "0-5%" in t2 and "15-100%" in t2 and "0-100% (n=6)" in t2
    assert format_table1(summaries["composite"]).splitlines()[-1].startswith("composite")


def test_default_batch_size_by_device() -> None:
    assert default_batch_size(torch.device("cpu")) == 1
    assert default_batch_size(torch.device("cuda", 0)) == 8


@needs_labelme
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_cpu_scoring_is_batch_and_layout_free_and_gives_the_model_back_as_it_was(layout: torch.memory_format) -> None:
    """The CPU's default (one image per batch, channels-last) prints the scores a batch of 8
    in the contiguous layout gives, to the last digit, and leaves the model's layout as it was."""
    data = IHarmony4Dataset(LABELME, split="test")
    model = harmonize.create_model("gknet", pretrained=True).to(memory_format=layout)
    fast, fast_records = evaluate(model, data, "iharmony4", device="cpu", progress=False, indices=range(10))
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=layout)
    assert conv.is_contiguous() == (layout == torch.contiguous_format)
    ref_model = harmonize.create_model("gknet", pretrained=True)
    with patch("harmonize.evaluate._fastest_layouts", lambda models, device: contextlib.nullcontext()):
        ref, ref_records = evaluate(ref_model, data, "iharmony4", batch_size=8, device="cpu", progress=False, indices=range(10))
    assert format_table1({"gknet": fast}) == format_table1({"gknet": ref})
    assert format_table2({"gknet": fast}) == format_table2({"gknet": ref})
    # Per image, a pixel may round to the other 8-bit level (one such flip moved an fMSE by 4e-6).
    assert [r["fmse"] for r in fast_records] == pytest.approx([r["fmse"] for r in ref_records], rel=2e-5)
    mean = lambda key: sum(r[key] for r in fast_records) / len(fast_records)  # noqa: E731
    assert mean("fmse") < 0.6 * mean("composite_fmse")  # the weights really ran
    model.train()  # its parameters are still normal tensors (not inference-mode ones): it trains
    image, mask = data[0]["composite"][None, :, :64, :64], torch.ones(1, 1, 64, 64)
    model(image, mask).mean().backward()
    assert conv.grad is not None


# ----------------------------------------------------------------- command line


@needs_labelme
def test_cli_evaluate_writes_csv_and_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    rc = cli_main(["evaluate", "composite", "--data", str(LABELME), "--limit", "8", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["model"] for r in rows} == {"composite"}
    assert {"name", "subset", "fg_ratio", "mse", "fmse", "psnr"} <= set(rows[0])
    doc = json.loads((out / "summary.json").read_text())
    assert doc["preset"]["name"] == "issam" and doc["limit"] == 8
    assert doc["models"]["composite"]["overall"]["count"] == 8
    assert not list(out.glob(".*tmp")), "no temporary files left behind"


def test_cli_bad_data_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = cli_main(["evaluate", "composite", "--data", str(tmp_path / "nowhere"), "--no-progress"])
    assert rc == 2
    assert "nowhere" in capsys.readouterr().err


@needs_labelme
def test_cli_model_without_weights_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    rc = cli_main(["evaluate", "test_gknet", "--data", str(LABELME), "--limit", "1", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "test_gknet has no pretrained weights" in err and "--checkpoint" in err


@needs_labelme
def test_cli_checkpoint_needs_one_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = cli_main(
        ["evaluate", "composite", "reinhard", "--data", str(LABELME), "--checkpoint", str(tmp_path / "w.safetensors")]
    )
    assert rc == 2 and "exactly one MODEL" in capsys.readouterr().err


@needs_labelme
def test_cli_local_checkpoint_and_local_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = harmonize.create_model("test_gknet")
    folder = harmonize.save_pretrained(model, tmp_path / "test_gknet")
    weights = folder / "model.safetensors"
    for argv in (["test_gknet", "--checkpoint", str(weights)], [f"local-dir:{folder}"]):
        out = tmp_path / argv[0].replace(":", "_").replace("/", "_")
        rc = cli_main(["evaluate", *argv, "--data", str(LABELME), "--limit", "2", "--out", str(out), "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        doc = json.loads((out / "summary.json").read_text())
        (summary,) = doc["models"].values()
        assert summary["overall"]["count"] == 2


@needs_labelme
def test_cli_checkpoint_with_model_args(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # softmax kernels change no weight shape: only --model-args tells the checkpoint's model apart
    torch.manual_seed(0)
    model = harmonize.create_model("test_gknet", kernel_norm="softmax").eval()
    for p in model.parameters():  # far from the identity, so the two kernel norms disagree
        p.data.add_(0.3 * torch.randn_like(p))
    weights = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(weights))
    scores = {}
    for extra in ([], ["--model-args", '{"kernel_norm": "softmax"}']):
        out = tmp_path / f"out{len(extra)}"
        argv = ["evaluate", "test_gknet", "--checkpoint", str(weights), *extra, "--data", str(LABELME)]
        rc = cli_main([*argv, "--limit", "2", "--out", str(out), "--no-progress", "--preset", "iharmony4"])
        assert rc == 0, capsys.readouterr().err
        (summary,) = json.loads((out / "summary.json").read_text())["models"].values()
        scores[len(extra)] = summary["overall"]["fmse"]
    ds = IHarmony4Dataset(LABELME, ["LabelMe"], split="test")
    expected = evaluate(model, ds, preset="iharmony4", indices=[0, 1], progress=False)[0]["overall"]["fmse"]
    assert scores[2] == pytest.approx(expected, rel=1e-6) and scores[0] != pytest.approx(expected, rel=1e-3)
    for bad, msg in (("[1]", "must be a JSON object"), ("{x", "not JSON"), ('{"nope": 1}', "do not fit test_gknet")):
        rc = cli_main(["evaluate", "test_gknet", "--checkpoint", str(weights), "--model-args", bad, "--data", str(LABELME)])
        assert rc == 2 and msg in capsys.readouterr().err
    rc = cli_main(["evaluate", "composite", "--model-args", '{"a": 1}', "--data", str(LABELME), "--limit", "1"])
    assert rc == 2 and "--model-args goes with --checkpoint" in capsys.readouterr().err
