import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from harmonize.data import (
    CompositeSynthesizer,
    IHarmony4Dataset,
    PairedCompose,
    PairedRandomHorizontalFlip,
    PairedRandomResizedCrop,
    PairedResize,
    SyntheticCompositeDataset,
    find_subsets,
    load_mask,
    retouch,
    transfer_histogram,
    transfer_lab_mean_std,
    transfer_rgb_mean_cov,
)
from harmonize.data.color import lab_to_rgb, rgb_to_lab


def test_labelme_train_and_test_lists(labelme):
    train = IHarmony4Dataset(labelme, split="train")
    test = IHarmony4Dataset(labelme, ["LabelMe"], split="test")
    assert (len(train), len(test)) == (1402, 200)
    assert train.subsets == ["LabelMe"]
    assert not {t.name.split("_")[0] for t in train.triplets} & {t.name.split("_")[0] for t in test.triplets}
    s = test[0]
    assert s["composite"].shape == (3, 256, 256) and s["mask"].shape == (1, 256, 256)
    assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    assert s["subset"] == "LabelMe" and s["name"] == "l100044_1_1"
    bg = s["mask"][0] == 0
    # A composite differs from its real photo in the foreground only (up to JPEG noise).
    diff = (s["composite"] - s["real"]).abs().mean(0)
    assert diff[~bg].mean() > 5 * diff[bg].mean()


def test_several_subsets_and_rgb_mask(sample_root):
    ds = IHarmony4Dataset(sample_root, split="test")
    assert ds.subsets == ["HAdobe5k", "HCOCO", "INR2k"]
    assert len(ds) == 6
    hcoco = IHarmony4Dataset(sample_root, ["HCOCO"], split="test")
    assert [t.name for t in hcoco.triplets] == [f"c35030_1_{j}" for j in range(1, 5)]
    # HAdobe5k ships an RGB mask: read as binary foreground
    m = load_mask(sample_root / "HAdobe5k" / "masks" / "a0002_1.png")
    assert m.shape[0] == 1 and set(m.unique().tolist()) == {0.0, 1.0}
    assert 0.01 < m.mean() < 0.99


def test_find_subsets_on_a_subset_folder(labelme):
    assert find_subsets(labelme, "train") == {"LabelMe": labelme}


def _mini_subset(tmp_path, labelme, names=("l100044_1_1", "l100116_1_1")):
    root = tmp_path / "Mini"
    for d in ("composite_images", "masks", "real_images"):
        (root / d).mkdir(parents=True)
    for n in names:
        base = n.rsplit("_", 2)[0]
        shutil.copy(labelme / "composite_images" / f"{n}.jpg", root / "composite_images")
        shutil.copy(labelme / "masks" / f"{n.rsplit('_', 1)[0]}.png", root / "masks")
        shutil.copy(labelme / "real_images" / f"{base}.jpg", root / "real_images")
    (root / "Mini_test.txt").write_text("\n".join(f"{n}.jpg" for n in names) + "\n")
    return root


def test_missing_file_is_named(tmp_path, labelme):
    root = _mini_subset(tmp_path, labelme)
    (root / "masks" / "l100116_1.png").unlink()
    with pytest.raises(FileNotFoundError, match="l100116_1.png"):
        IHarmony4Dataset(root, split="test")


def test_empty_list_is_named(tmp_path, labelme):
    root = _mini_subset(tmp_path, labelme)
    (root / "Mini_test.txt").write_text("\n")
    with pytest.raises(ValueError, match="Mini_test.txt: the list is empty"):
        IHarmony4Dataset(root, split="test")


def test_unknown_subset_and_unreadable_image(tmp_path, labelme):
    root = _mini_subset(tmp_path, labelme)
    with pytest.raises(FileNotFoundError, match="HCOCO"):
        IHarmony4Dataset(root, ["HCOCO"], split="test")
    (root / "real_images" / "l100044.jpg").write_bytes(b"garbage")
    ds = IHarmony4Dataset(root, split="test")
    with pytest.raises(ValueError, match="l100044.jpg: cannot read as an image"):
        ds[0]


def test_mask_formats_threshold_at_half(tmp_path):
    a = np.zeros((4, 4), np.uint8)
    a[:, 2:] = 255
    a[0, 0] = 127  # below half
    a[1, 0] = 128  # at/above half
    Image.fromarray(a).save(tmp_path / "m.png")
    Image.fromarray(np.stack([a] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(a).save(tmp_path / "m.jpg", quality=100)
    for name in ("m.png", "rgb.png", "m.jpg"):
        m = load_mask(tmp_path / name)[0]
        assert m[0, 0] == 0 and m[1, 0] == 1 and m[:, 2:].eq(1).all(), name
    soft = load_mask(tmp_path / "m.png", threshold=None)[0]
    assert abs(soft[0, 0].item() - 127 / 255) < 1e-6


def test_lab_roundtrip():
    x = torch.rand(3, 16, 16)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4, rtol=0)
    white = rgb_to_lab(torch.ones(3, 1, 1))
    torch.testing.assert_close(white.flatten(), torch.tensor([100.0, 0.0, 0.0]), atol=1e-2, rtol=0)


@pytest.fixture
def photos(labelme):
    ds = IHarmony4Dataset(labelme, split="train")
    _, m1, r1 = ds.load(24)  # mid-tone foregrounds, nothing saturated: transfers are exact up to rounding
    _, m2, r2 = ds.load(21)
    return r1, m1, r2, m2


def _fg(x, m):
    return x[:, m[0] >= 0.5]


def test_transfers_touch_only_the_foreground(photos):
    real, mask, ref, ref_mask = photos
    g = torch.Generator().manual_seed(0)
    for out in (
        transfer_lab_mean_std(real, mask, ref, ref_mask),
        transfer_rgb_mean_cov(real, mask, ref, ref_mask),
        transfer_histogram(real, mask, ref, ref_mask),
        retouch(real, mask, g),
    ):
        assert torch.equal(out[:, mask[0] == 0], real[:, mask[0] == 0])
        assert (_fg(out, mask) - _fg(real, mask)).abs().mean() > 0.01
        assert out.min() >= 0 and out.max() <= 1


def test_lab_transfer_matches_reference_statistics(photos):
    real, mask, ref, ref_mask = photos
    out = rgb_to_lab(transfer_lab_mean_std(real, mask, ref, ref_mask))
    src, dst = _fg(out, mask), _fg(rgb_to_lab(ref), ref_mask)
    # clamping to the sRGB gamut moves them a little
    torch.testing.assert_close(src.mean(1), dst.mean(1), atol=3.0, rtol=0)
    torch.testing.assert_close(src.std(1), dst.std(1), atol=3.0, rtol=0.15)


def test_rgb_transfer_matches_mean_and_covariance(photos):
    real, mask, ref, ref_mask = photos
    src, dst = _fg(transfer_rgb_mean_cov(real, mask, ref, ref_mask), mask), _fg(ref, ref_mask)
    torch.testing.assert_close(src.mean(1), dst.mean(1), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(src), torch.cov(dst), atol=0.004, rtol=0)


def test_histogram_transfer_matches_quantiles(photos):
    real, mask, ref, ref_mask = photos
    src, dst = _fg(transfer_histogram(real, mask, ref, ref_mask), mask), _fg(ref, ref_mask)
    q = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(torch.quantile(src, q, dim=1), torch.quantile(dst, q, dim=1), atol=0.03, rtol=0)


def test_synthetic_dataset_is_reproducible_and_fresh_each_epoch(labelme):
    base = IHarmony4Dataset(labelme, split="train")
    ds = SyntheticCompositeDataset(base, p_original=0.0, seed=1)
    a, b = ds[5], ds[5]
    assert torch.equal(a["composite"], b["composite"])
    assert torch.equal(a["real"], base.load(5)[2])
    ds.set_epoch(1)
    c = ds[5]
    assert not torch.equal(a["composite"], c["composite"])
    other = SyntheticCompositeDataset(base, p_original=0.0, seed=2)[5]
    assert not torch.equal(a["composite"], other["composite"])
    keep = SyntheticCompositeDataset(base, p_original=1.0)[5]
    assert torch.equal(keep["composite"], base.load(5)[0])


def test_synthesizer_rejects_bad_methods():
    with pytest.raises(ValueError, match="methods"):
        CompositeSynthesizer(["nope"])
    with pytest.raises(ValueError, match="weights"):
        CompositeSynthesizer(["lab", "rgb"], weights=[1.0])


def test_paired_transforms_keep_alignment():
    h, w = 60, 80
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    coords = torch.stack([yy / h, xx / w, torch.zeros_like(yy)])
    mask = (xx > 40).float()[None]
    sample = {"composite": coords.clone(), "real": coords.clone(), "mask": mask}
    g = torch.Generator().manual_seed(3)
    t = PairedCompose([PairedRandomResizedCrop(32, scale=(0.3, 0.6)), PairedRandomHorizontalFlip(p=1.0)])
    out = t(sample, g)
    assert out["composite"].shape == (3, 32, 32) and out["mask"].shape == (1, 32, 32)
    assert torch.equal(out["composite"], out["real"])
    # The mask's edge sits where the x coordinate crosses 40/80 in the transformed image.
    x_at = out["composite"][1]
    inside = out["mask"][0] == 1
    if inside.any() and (~inside).any():
        assert x_at[inside].min() >= 0.45 and x_at[~inside].max() <= 0.55
    r = PairedResize((20, 30))(sample)
    assert r["composite"].shape == (3, 20, 30) and set(r["mask"].unique().tolist()) <= {0.0, 1.0}
