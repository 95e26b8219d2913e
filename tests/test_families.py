from pathlib import Path

import pytest
import torch

from harmonize.data import (
    FAMILIES,
    HELDOUT_FAMILIES,
    TRAIN_FAMILIES,
    UNEDITED,
    FamilySynthesizer,
    IHarmony4Dataset,
    RobustnessDataset,
    SyntheticCompositeDataset,
    local_variation,
    split_train_val,
    stat_transfer,
    train_val_indices,
    transfer_histogram,
    transfer_idt,
)
from harmonize.data.families import kelvin_gains

LABELME = Path(__file__).resolve().parents[2] / "shared" / "data" / "labelme-harmony"


@pytest.fixture(scope="module")
def train_set():
    if not LABELME.exists():
        pytest.skip(f"shared data not found at {LABELME}")
    return IHarmony4Dataset(LABELME, split="train", cache=True)


@pytest.fixture(scope="module")
def photos(train_set):
    """(mask, real) of three training photos."""
    return [train_set.load(i)[1:] for i in (24, 21, 28)]


def _fg(x, m):
    return x[:, m[0] >= 0.5]


def _bg(x, m):
    return x[:, m[0] < 0.5]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_contract(family, photos):
    fn = FAMILIES[family]
    changes = []
    for k, (mask, real) in enumerate(photos):
        ref_mask, ref = photos[(k + 1) % len(photos)]
        outs = [fn(real, mask, ref, ref_mask, torch.Generator().manual_seed(s)) for s in (0, 1, 0)]
        a, b, again = outs
        assert torch.equal(a, again), "same seed, same composite"
        assert not torch.equal(a, b), "another seed, another composite"
        for out in (a, b):
            assert out.shape == real.shape and out.dtype == real.dtype
            assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
            assert torch.equal(_bg(out, mask), _bg(real, mask)), "background must be bit-for-bit the real photo"
            change = (_fg(out, mask) - _fg(real, mask)).abs().mean().item()
            assert change > 0.005
            changes.append(change)
    assert sum(changes) / len(changes) > 0.02


def test_idt_matches_the_reference_distribution(photos):
    (mask, real), (ref_mask, ref) = photos[1], photos[2]
    out = transfer_idt(real, mask, ref, ref_mask, torch.Generator().manual_seed(0), iterations=20)
    src, dst = _fg(out, mask), _fg(ref, ref_mask)
    q = torch.tensor([0.1, 0.5, 0.9])
    assert (torch.quantile(_fg(real, mask), q, dim=1) - torch.quantile(dst, q, dim=1)).abs().max() > 0.1
    torch.testing.assert_close(torch.quantile(src, q, dim=1), torch.quantile(dst, q, dim=1), atol=0.015, rtol=0)
    # unlike per-channel histogram matching, IDT matches the joint distribution: correlations too
    torch.testing.assert_close(torch.corrcoef(src), torch.corrcoef(dst), atol=0.015, rtol=0)
    per_channel = _fg(transfer_histogram(real, mask, ref, ref_mask), mask)
    assert (torch.corrcoef(per_channel) - torch.corrcoef(dst)).abs().max() > 0.05


def test_stat_transfer_rejects_unknown_method(photos):
    (mask, real), (ref_mask, ref) = photos[0], photos[1]
    with pytest.raises(ValueError, match="method"):
        stat_transfer(real, mask, ref, ref_mask, torch.Generator(), method="rgb")


def test_kelvin_gains_follow_the_black_body():
    torch.testing.assert_close(kelvin_gains(6500.0), torch.ones(3, dtype=torch.float64))
    warm, cool = kelvin_gains(3000.0), kelvin_gains(10000.0)
    assert warm[0] > warm[1] > warm[2] and cool[2] > cool[1] > cool[0]
    luma = torch.tensor([0.2126, 0.7152, 0.0722], dtype=torch.float64)
    torch.testing.assert_close(luma @ warm, torch.tensor(1.0, dtype=torch.float64))


def test_local_variation_is_smooth_and_varies_across_the_object(photos):
    mask, real = photos[0]
    out = local_variation(real, mask, torch.Generator().manual_seed(1))
    luma = lambda x: 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    log_ratio = torch.log(luma(out) / luma(real))
    ok = (mask[0] >= 0.5) & (luma(real) > 0.1) & (luma(out) < 0.95)
    assert log_ratio[ok].std() > 0.03  # not one global gain
    step = (log_ratio[:, 1:] - log_ratio[:, :-1]).abs()[ok[:, 1:] & ok[:, :-1]]
    assert step.mean() < 0.15 * log_ratio[ok].std()  # and no pixel noise


def test_family_synthesizer_draws_from_its_families(photos):
    (mask, real), (ref_mask, ref) = photos[0], photos[1]
    assert FamilySynthesizer().families == TRAIN_FAMILIES
    assert not set(TRAIN_FAMILIES) & set(HELDOUT_FAMILIES)
    synth = FamilySynthesizer(["global_edit", "relight", "stat_idt"], weights=[1.0, 1.0, 0.0])
    drawn = set()
    for s in range(12):
        comp, family = synth.draw(real, mask, ref, ref_mask, torch.Generator().manual_seed(s))
        drawn.add(family)
        assert (_fg(comp, mask) - _fg(real, mask)).abs().mean() >= 0.02
        again = synth(real, mask, ref, ref_mask, torch.Generator().manual_seed(s))
        assert torch.equal(comp, again)
    assert drawn == {"global_edit", "relight"}
    with pytest.raises(ValueError, match="families"):
        FamilySynthesizer(["retouch"])
    with pytest.raises(ValueError, match="weights"):
        FamilySynthesizer(["relight"], weights=[1.0, 2.0])


def test_mild_composites_lie_between_the_real_photo_and_the_full_edit(photos):
    (mask, real), (ref_mask, ref) = photos[0], photos[1]
    full, mild = FamilySynthesizer(["global_edit"]), FamilySynthesizer(["global_edit"], mild=1.0)
    ratios = []
    for s in range(16):
        edit = full(real, mask, ref, ref_mask, torch.Generator().manual_seed(s)) - real
        scaled = mild(real, mask, ref, ref_mask, torch.Generator().manual_seed(s)) - real
        t = (scaled * edit).sum() / (edit * edit).sum()  # the same edit, scaled by t
        assert torch.allclose(scaled, t * edit, atol=1e-5)
        ratios.append(float(t))
        assert torch.equal(_bg(scaled, mask), torch.zeros_like(_bg(scaled, mask)))
    assert min(ratios) >= 0 and max(ratios) < 1
    assert min(ratios) < 0.3 and max(ratios) > 0.7  # from nearly untouched to nearly the full edit
    some = FamilySynthesizer(["global_edit"], mild=0.5)
    scaled = [
        not torch.equal(some(real, mask, ref, ref_mask, torch.Generator().manual_seed(s)),
                        full(real, mask, ref, ref_mask, torch.Generator().manual_seed(s)))
        for s in range(40)
    ]
    assert 8 <= sum(scaled) <= 32
    with pytest.raises(ValueError, match="mild"):
        FamilySynthesizer(mild=1.5)


def test_identity_composites_are_the_real_photo_and_leave_the_other_draws_alone(photos):
    (mask, real), (ref_mask, ref) = photos[0], photos[1]
    plain, ident = FamilySynthesizer(["global_edit"]), FamilySynthesizer(["global_edit"], identity=0.3)
    drawn = [ident.draw(real, mask, ref, ref_mask, torch.Generator().manual_seed(s)) for s in range(60)]
    same = [name == "identity" for _, name in drawn]
    assert 8 <= sum(same) <= 30  # about 30% of 60
    for comp, name in drawn:
        if name == "identity":
            assert torch.equal(comp, real) and comp is not real
        else:
            assert (comp - real).abs().max() > 0.02  # an edited foreground
    # identity=0 draws exactly what the synthesizer drew before the option existed
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(plain(real, mask, ref, ref_mask, g1), FamilySynthesizer(["global_edit"], identity=0.0)(real, mask, ref, ref_mask, g2))
    assert torch.equal(FamilySynthesizer(["global_edit"], identity=1.0)(real, mask, ref, ref_mask, g1), real)
    with pytest.raises(ValueError, match="identity"):
        FamilySynthesizer(identity=-0.1)


def test_family_synthesizer_in_the_synthetic_dataset(train_set):
    ds = SyntheticCompositeDataset(train_set, FamilySynthesizer(), p_original=0.0, seed=3)
    a, b = ds[7], ds[7]
    assert torch.equal(a["composite"], b["composite"])
    assert not torch.equal(a["composite"], a["real"])


@pytest.fixture(scope="module")
def robust(train_set):
    return RobustnessDataset(train_set.root, seed=0)


def test_robustness_list_uses_test_photos_only(robust, train_set):
    assert robust.families == HELDOUT_FAMILIES
    assert len(robust) == 200 * len(HELDOUT_FAMILIES)
    train_photos = {t.real.name for t in train_set.triplets}
    test_photos = {t.real.name for t in IHarmony4Dataset(train_set.root, split="test").triplets}
    used = {robust.triplet(i).real.name for i in range(0, len(robust), len(robust.families))}
    assert used == test_photos and not used & train_photos


def test_robustness_items(robust):
    for i in (0, 1, 2, 301):
        item = robust[i]
        family = HELDOUT_FAMILIES[i % 3]
        assert item["family"] == family and item["subset"] == f"LabelMe/{family}"
        assert item["name"] == f"{robust.triplet(i).mask.stem}_{family}"
        assert {"composite", "mask", "real", "name", "subset"} <= set(item)
        comp, mask, real = item["composite"], item["mask"], item["real"]
        assert comp.shape == real.shape and mask.shape == (1, *real.shape[1:])
        assert torch.equal(_bg(comp, mask), _bg(real, mask))
        assert (_fg(comp, mask) - _fg(real, mask)).abs().mean() >= 0.02
    assert robust.indices_of("relight")[:3] == [1, 4, 7]
    with pytest.raises(IndexError):
        robust[len(robust)]


def test_robustness_list_is_identical_for_a_seed(robust, train_set):
    same = RobustnessDataset(train_set.root, families=["relight", "stat_idt"], seed=0)
    other = RobustnessDataset(train_set.root, families=["relight", "stat_idt"], seed=1)
    for i in (0, 151):  # robust's items: photo 0 by stat_idt, photo 50 by relight
        j = {0: 1, 1: 0}[i % 3] + 2 * (i // 3)
        assert robust[i]["name"] == same[j]["name"]
        assert torch.equal(robust[i]["composite"], same[j]["composite"])  # a family's draw ignores the others
        assert not torch.equal(robust[i]["composite"], other[j]["composite"])


def test_unedited_items_are_the_test_photos_themselves(robust, train_set):
    unedited = RobustnessDataset(train_set.root, families=[UNEDITED, "relight"], seed=0)
    assert len(unedited) == 400
    for i in (0, 2, 398):
        item = unedited[i]
        assert item["family"] == UNEDITED and item["subset"] == f"LabelMe/{UNEDITED}"
        assert torch.equal(item["composite"], item["real"]) and item["composite"] is not item["real"]
        assert item["real"].shape[1:] == item["mask"].shape[1:] and item["mask"].sum() > 0
    # the families beside it draw what they draw without it
    assert torch.equal(unedited[1]["composite"], robust[robust.indices_of("relight")[0]]["composite"])
    with pytest.raises(ValueError, match="families must be"):
        RobustnessDataset(train_set.root, families=[UNEDITED, "nope"])
    with pytest.raises(ValueError, match="families must be"):
        RobustnessDataset(train_set.root, families=[])


def test_cli_scores_what_a_model_changes_in_unedited_photos(train_set, capsys):
    from harmonize.cli import main as cli_main

    args = ["evaluate", "composite", "gknet", "--data", str(train_set.root), "--split", "unedited", "--limit", "4",
            "--preset", "iharmony4", "--no-progress"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    table1 = out.split("\n\n")[0].splitlines()  # title, subset, column names, rule, a row per model
    assert "LabelMe/unedited (n=4)" in table1[1] and table1[2].split("|")[1].split() == ["PSNR", "MSE", "fMSE"]
    rows = {line.split("|")[0].strip(): line.split("|")[1].split() for line in table1[4:]}
    composite_fmse, gknet_fmse = float(rows["composite"][2]), float(rows["gknet"][2])
    assert composite_fmse == 0.0 and gknet_fmse > 1.0  # the composite is the real photo; a network changes it


def test_validation_split_holds_out_whole_training_photos(train_set):
    triplets = train_set.triplets
    train, val = split_train_val(triplets)
    assert (len(train), len(val)) == (1302, 100)
    assert not {t.real for t in train} & {t.real for t in val}
    assert sorted(t.name for t in train + val) == sorted(t.name for t in triplets)
    # the split depends on the photos and the seed only, not on the list's order
    assert [t.name for t in split_train_val(triplets[::-1])[1][::-1]] == [t.name for t in val]
    assert {t.name for t in split_train_val(triplets, seed=1)[1]} != {t.name for t in val}
    tr_idx, va_idx = train_val_indices(triplets, val_size=10)
    assert len(va_idx) == 10 and not set(tr_idx) & set(va_idx) and len(tr_idx) + 10 == len(triplets)
    with pytest.raises(ValueError, match="val_size"):
        split_train_val(triplets, val_size=len(triplets))
