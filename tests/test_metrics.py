"""Metrics: golden values computed here with numpy from the files, averaging, presets, DDP."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmonize.data import load_image, load_mask
from harmonize.metrics import (
    FG_RATIO_BUCKETS,
    PRESETS,
    HarmonizationMetrics,
    fmse,
    foreground_ratio,
    fpsnr,
    get_preset,
    image_metrics,
    mse,
    prepare,
    psnr,
    ssim,
    summarize,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE = DATA / "iharmony4-sample"
needs_sample = pytest.mark.skipif(
    not SAMPLE.is_dir(), reason=f"shared sample data not found at {SAMPLE} (the repo's sibling shared/data)"
)
HCOCO = [f"c35030_1_{j}" for j in range(1, 5)]
RTOL = 1e-4


# ----------------------------------------------------------------- independent numpy oracle


def _np_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def _np_mask(path: Path) -> np.ndarray:
    """(H, W, 1) 0/1: grey value (channels averaged) >= half of 255."""
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).mean(axis=2)
    return (a >= 127.5).astype(np.float64)[..., None]


def _np_scores(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """pred, real (H, W, 3) on 0..255; mask (H, W, 1) weights."""
    se = (pred - real) ** 2
    m = se.mean()
    f = (se * mask).sum() / (3 * mask.sum())
    return {
        "mse": m,
        "fmse": f,
        "psnr255": 10 * np.log10(255.0**2 / m),
        "fpsnr255": 10 * np.log10(255.0**2 / f),
        "psnr_tmax": 10 * np.log10(real.max() ** 2 / (m + 1e-6)),
        "fg_ratio": (mask > 0.5).mean(),
    }


def _np_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Half-pixel-centre bilinear resize (OpenCV INTER_LINEAR without antialiasing) of (H, W, C)."""

    def weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        x = np.clip(x, 0, None)
        i0 = np.minimum(np.floor(x).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, x - i0

    y0, y1, wy = weights(a.shape[0], size[0])
    x0, x1, wx = weights(a.shape[1], size[1])
    rows = a[y0] * (1 - wy)[:, None, None] + a[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def _t(a: np.ndarray) -> torch.Tensor:
    """(H, W, C) on 0..255 -> (1, C, H, W) float32 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)) / 255.0).float()[None]


def _close(a: float, b: float, rtol: float = RTOL) -> bool:
    return abs(a - b) <= rtol * abs(b)


# ----------------------------------------------------------------- golden values


@needs_sample
@pytest.mark.parametrize("stem", HCOCO)
def test_golden_hcoco_full_resolution(stem: str) -> None:
    d = SAMPLE / "HCOCO"
    comp_p, real_p, mask_p = d / "composite_images" / f"{stem}.jpg", d / "real_images" / "c35030.jpg", d / "masks" / "c35030_1.png"
    ref = _np_scores(_np_rgb(comp_p), _np_rgb(real_p), _np_mask(mask_p))
    comp, real, mask = load_image(comp_p)[None], load_image(real_p)[None], load_mask(mask_p)[None]
    assert _close(mse(comp, real).item(), ref["mse"])
    assert _close(fmse(comp, real, mask).item(), ref["fmse"])
    assert _close(psnr(comp, real, peak=255).item(), ref["psnr255"])
    assert _close(fpsnr(comp, real, mask, peak=255).item(), ref["fpsnr255"])
    assert _close(psnr(comp, real, peak="target_max", eps=1e-6).item(), ref["psnr_tmax"])
    vals = image_metrics(comp, real, mask, "fullres")
    assert _close(vals["psnr"].item(), ref["psnr_tmax"])
    assert _close(vals["fg_ratio"].item(), ref["fg_ratio"])


def _iharmony4_script_scores(comp_p: Path, real_p: Path, mask_p: Path) -> dict[str, float]:
    """The iHarmony4 evaluation rules, written out with PIL and numpy."""
    size = (256, 256)
    comp = np.asarray(Image.open(comp_p).convert("RGB").resize(size, Image.BICUBIC), dtype=np.float64)
    real = np.asarray(Image.open(real_p).convert("RGB").resize(size, Image.BICUBIC), dtype=np.float64)
    mask = np.asarray(Image.open(mask_p).convert("1").resize(size, Image.BICUBIC), dtype=np.float64)[..., None]
    return _np_scores(comp, real, mask)


@needs_sample
@pytest.mark.parametrize(
    "subset,stem,real,mask",
    [("HCOCO", s, "c35030", "c35030_1") for s in HCOCO] + [("HAdobe5k", "a0002_1_4", "a0002", "a0002_1")],
)
def test_golden_iharmony4_preset(subset: str, stem: str, real: str, mask: str) -> None:
    d = SAMPLE / subset
    paths = d / "composite_images" / f"{stem}.jpg", d / "real_images" / f"{real}.jpg", d / "masks" / f"{mask}.png"
    ref = _iharmony4_script_scores(*paths)
    comp_t, mask_t = prepare(load_image(paths[0]), load_mask(paths[2]), "iharmony4")
    real_t, _ = prepare(load_image(paths[1]), None, "iharmony4")
    assert comp_t.shape == (3, 256, 256) and mask_t.shape == (1, 256, 256)
    vals = image_metrics(comp_t[None], real_t[None], mask_t[None], "iharmony4")
    assert _close(vals["mse"].item(), ref["mse"])
    assert _close(vals["fmse"].item(), ref["fmse"])
    assert _close(vals["psnr"].item(), ref["psnr255"])
    assert _close(vals["fpsnr"].item(), ref["fpsnr255"])
    assert _close(vals["fg_ratio"].item(), ref["fg_ratio"])


@needs_sample
@pytest.mark.parametrize("stem", HCOCO)
def test_golden_issam_preset(stem: str) -> None:
    """iSSAM: bilinear (no antialias) to 256, 8-bit images, soft mask, PSNR peak = target max."""
    d = SAMPLE / "HCOCO"
    comp_p, real_p, mask_p = d / "composite_images" / f"{stem}.jpg", d / "real_images" / "c35030.jpg", d / "masks" / "c35030_1.png"
    size = (256, 256)
    comp = np.round(_np_bilinear(_np_rgb(comp_p), size))
    real = np.round(_np_bilinear(_np_rgb(real_p), size))
    mask = _np_bilinear(_np_mask(mask_p), size)
    ref = _np_scores(comp, real, mask)
    comp_t, mask_t = prepare(load_image(comp_p), load_mask(mask_p), "issam")
    real_t, _ = prepare(load_image(real_p), None, "issam")
    assert ((mask_t > 0) & (mask_t < 1)).any(), "the issam preset keeps the resized mask soft"
    vals = image_metrics(comp_t[None], real_t[None], mask_t[None], "issam")
    assert _close(vals["mse"].item(), ref["mse"])
    assert _close(vals["fmse"].item(), ref["fmse"])
    assert _close(vals["psnr"].item(), ref["psnr_tmax"])
    assert _close(vals["fg_ratio"].item(), ref["fg_ratio"])


# ----------------------------------------------------------------- functions


def _pair(b: int = 2, h: int = 16, w: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)
    mask = torch.zeros(b, 1, h, w)
    mask[..., 2:10, 3:9] = 1
    return pred, target, mask


def test_shapes_and_scale() -> None:
    pred, target, mask = _pair()
    for fn in (lambda: mse(pred, target), lambda: fmse(pred, target, mask), lambda: psnr(pred, target)):
        out = fn()
        assert out.shape == (2,) and out.dtype == torch.float64
    one = torch.full((1, 3, 4, 4), 1 / 255)
    assert mse(torch.zeros(1, 3, 4, 4), one).item() == pytest.approx(1.0)
    assert fmse(torch.zeros(1, 3, 4, 4), one, torch.ones(1, 1, 4, 4)).item() == pytest.approx(1.0)


def test_fmse_is_mean_over_foreground_values() -> None:
    pred, target, mask = _pair()
    se = ((pred.double() - target.double()) * 255) ** 2
    sel = mask.bool().expand_as(se)
    for i in range(2):
        assert fmse(pred, target, mask)[i].item() == pytest.approx(se[i][sel[i]].mean().item(), rel=1e-12)


def test_bad_shapes_raise() -> None:
    pred, target, mask = _pair()
    with pytest.raises(ValueError, match="B, 3, H, W"):
        mse(pred[:, :2], target[:, :2])
    with pytest.raises(ValueError, match="mask"):
        fmse(pred, target, mask[..., :8])
    with pytest.raises(ValueError, match="peak"):
        psnr(pred, target, peak="max")


def test_empty_mask_gives_nan_and_is_left_out_of_fmse_average() -> None:
    pred, target, mask = _pair()
    mask[1] = 0
    f = fmse(pred, target, mask)
    assert math.isfinite(f[0].item()) and math.isnan(f[1].item())
    assert math.isnan(fpsnr(pred, target, mask)[1].item())
    m = HarmonizationMetrics("fullres")
    m.update(pred, target, mask, names=["a", "b"])
    s = m.compute()["overall"]
    assert s["count"] == 2 and s["empty_masks"] == 1
    assert s["fmse"] == pytest.approx(f[0].item())
    assert s["mse"] == pytest.approx(mse(pred, target).mean().item())


def test_psnr_peak_rules() -> None:
    pred, target, _ = _pair()
    target = target * 0.5  # max about 127.5
    e = mse(pred, target)
    assert torch.allclose(psnr(pred, target, peak=255), 10 * torch.log10(255.0**2 / e))
    assert torch.allclose(psnr(pred, target, peak="255"), psnr(pred, target, peak=255.0))
    tmax = target.flatten(1).amax(1).double() * 255
    assert torch.allclose(psnr(pred, target, peak="target_max"), 10 * torch.log10(tmax**2 / e))
    rng = (pred.flatten(1).amax(1) - pred.flatten(1).amin(1)).double() * 255
    assert torch.allclose(psnr(pred, target, peak="pred_range"), 10 * torch.log10(rng**2 / e))
    assert torch.allclose(psnr(pred, target, peak=100, eps=1e-6), 10 * torch.log10(100.0**2 / (e + 1e-6)))
    assert math.isinf(psnr(target, target).max().item())  # eps 0: identical images -> inf
    assert math.isfinite(psnr(target, target, eps=1e-6).max().item())


def test_ssim() -> None:
    pred, target, _ = _pair(h=32, w=32)
    assert torch.allclose(ssim(target, target), torch.ones(2, dtype=torch.float64))
    s = ssim(pred, target)
    assert (s < 1).all() and (s > -1).all()
    assert torch.allclose(s, ssim(target, pred))
    blurred = torch.nn.functional.avg_pool2d(target, 3, 1, 1)
    assert (ssim(blurred, target) > s).all()
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(pred[..., :8, :8], target[..., :8, :8])


# ----------------------------------------------------------------- presets and prepare


def test_presets() -> None:
    assert {"issam", "iharmony4", "fullres"} <= set(PRESETS)
    assert get_preset("issam").size == (256, 256) and get_preset("issam").psnr_peak == "target_max"
    assert get_preset("iharmony4").resize == "pil_bicubic" and get_preset("iharmony4").psnr_peak == 255
    assert get_preset("fullres").size is None
    for p in PRESETS.values():
        assert p.description and p.formula and json.dumps(p.to_dict())
    with pytest.raises(ValueError, match="unknown metrics preset"):
        get_preset("dovenet2")


def test_prepare_shapes_and_masks() -> None:
    img, mask = torch.rand(3, 40, 60), (torch.rand(1, 40, 60) > 0.5).float()
    for name in ("issam", "iharmony4"):
        i2, m2 = prepare(img, mask, name)
        assert i2.shape == (3, 256, 256) and m2.shape == (1, 256, 256)
        assert torch.equal(i2, (i2 * 255).round() / 255), "resized images are 8-bit"
    assert set(prepare(img, mask, "iharmony4")[1].unique().tolist()) <= {0.0, 1.0}
    i3, m3 = prepare(img[None], mask[None], "fullres")
    assert torch.equal(i3[0], img) and torch.equal(m3[0], mask)
    same = torch.rand(3, 256, 256)
    assert torch.equal(prepare(same, None, "issam")[0], same), "no resize at the preset's size"


# ----------------------------------------------------------------- aggregation


def test_fg_ratio_buckets() -> None:
    assert [b[0] for b in FG_RATIO_BUCKETS] == ["0-5%", "5-15%", "15-100%"]
    ratios = [0.0, 0.049, 0.05, 0.1499, 0.15, 0.7, 1.0]
    records = [{"name": str(i), "subset": "S", "fg_ratio": r, "mse": 1.0, "fmse": 2.0, "psnr": 3.0, "fpsnr": 4.0} for i, r in enumerate(ratios)]
    s = summarize(records)
    assert [s["fg_ratio"][k]["count"] for k in ("0-5%", "5-15%", "15-100%")] == [2, 2, 3]
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., :5, :] = 1
    assert foreground_ratio(mask).item() == 0.5


def test_per_image_average_not_pooled() -> None:
    target = torch.zeros(2, 3, 20, 20)
    pred = target.clone()
    mask = torch.zeros(2, 1, 20, 20)
    mask[0, :, :2, :5] = 1  # 10 foreground pixels, each off by 10/255
    pred[0, :, :2, :5] = 10 / 255
    mask[1, :, :10, :] = 1  # 200 foreground pixels, exact
    m = HarmonizationMetrics("fullres")
    m.update(pred, target, mask, subsets=["A", "B"], names=["x", "y"])
    s = m.compute()
    per_image = (100.0 + 0.0) / 2
    pooled = (10 * 3 * 100.0) / (3 * 210)
    assert s["overall"]["fmse"] == pytest.approx(per_image)
    assert s["overall"]["fmse"] != pytest.approx(pooled)
    assert s["subsets"]["A"]["fmse"] == pytest.approx(100.0) and s["subsets"]["B"]["fmse"] == 0.0
    assert s["preset"] == "fullres"


def test_update_records_reset_and_composite() -> None:
    pred, target, mask = _pair()
    m = HarmonizationMetrics("issam", ssim=True)
    recs = m.update(pred, target, mask, composite=target, subsets="HCOCO")
    assert len(recs) == 2 and len(m.records) == 2
    assert set(recs[0]) >= {"name", "subset", "fg_ratio", "mse", "fmse", "psnr", "fpsnr", "ssim", "composite_mse"}
    assert recs[0]["composite_mse"] == 0.0 and recs[0]["subset"] == "HCOCO"
    assert "ssim" in m.compute()["overall"]
    m.update(pred, target, mask)  # unnamed images are never deduplicated
    assert m.compute()["overall"]["count"] == 4
    m.reset()
    assert m.records == [] and m.compute()["overall"]["count"] == 0
    with pytest.raises(ValueError, match="names"):
        m.update(pred, target, mask, names=["only-one"])


# ----------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]]:
    out = []
    for seed in range(3):
        pred, target, mask = _pair(seed=seed)
        mask[:, :, :, : 2 + 4 * seed] = 1  # different foreground ratios
        out.append((pred, target, mask, [f"img{seed}a", f"img{seed}b"]))
    return out


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        batches = _ddp_batches()
        m = HarmonizationMetrics("fullres")
        # rank 0 scores batches 0 and 2, rank 1 batch 1 and (as a DistributedSampler pads) batch 0 again
        for i in ((0, 2) if rank == 0 else (1, 0)):
            pred, target, mask, names = batches[i]
            m.update(pred, target, mask, subsets="S", names=names)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(m.compute()))
    finally:
        dist.destroy_process_group()


def test_ddp_gather_two_gloo_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    s0 = json.loads((tmp_path / "rank0.json").read_text())
    s1 = json.loads((tmp_path / "rank1.json").read_text())
    assert s0 == s1
    single = HarmonizationMetrics("fullres")
    for pred, target, mask, names in _ddp_batches():
        single.update(pred, target, mask, subsets="S", names=names)
    expected = json.loads(json.dumps(single.compute()))
    assert s0["overall"]["count"] == 6
    for key in ("mse", "fmse", "psnr", "fpsnr"):
        assert s0["overall"][key] == pytest.approx(expected["overall"][key], rel=1e-12)
    for label, part in expected["fg_ratio"].items():
        assert s0["fg_ratio"][label]["count"] == part["count"]
        assert s0["fg_ratio"][label]["fmse"] == pytest.approx(part["fmse"], rel=1e-12, nan_ok=True)
