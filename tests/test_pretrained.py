"""The shipped weights: every tag loads strictly on the architecture its name builds, offline,
gives pinned outputs, and harmonizes real composites."""

import warnings

import pytest
import torch

import harmonize
from harmonize._hub import load_state_dict, load_weights
from harmonize._registry import split_model_name_tag
from harmonize.data import IHarmony4Dataset
from harmonize.metrics import fmse

# family name -> its best shipped weights: the family's default tag
BEST = {"gknet": "gknet.labelme_families", "hdnet": "hdnet.labelme_families_long"}

# A few numbers of each shipped weight's output on a fixed input: the foreground's mean
# per channel, its std, and one pixel. Measured before the registry refactor (commit
# 14ca5a0, when the tags were gknet_small.* / hdnet_small.*) and unchanged by it; a change
# of results (a refactor, a new op) fails here.
PINNED = {
    "gknet.labelme": ([0.62298, 0.56292, 0.47627], 0.16162, [0.72912, 0.62676, 0.61199]),
    "gknet.labelme_long": ([0.64636, 0.57628, 0.49656], 0.16280, [0.76107, 0.66082, 0.64115]),
    "hdnet.labelme": ([0.54695, 0.54091, 0.48808], 0.12641, [0.59677, 0.55892, 0.54644]),
    # measured when they were published (tools/publish_weights.py)
    "gknet.labelme_families": ([0.6463, 0.56648, 0.4795], 0.16750, [0.75738, 0.63536, 0.6164]),
    "hdnet.labelme_families": ([0.53124, 0.52471, 0.4674], 0.13131, [0.57394, 0.54075, 0.53636]),
    "hdnet.labelme_families_long": ([0.57027, 0.55956, 0.4774], 0.14052, [0.64014, 0.59803, 0.57908]),
}


def _fixed_input() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    torch.rand(1, 3, 64, 80, generator=g)  # keeps the draws of the pinned numbers
    image = torch.nn.functional.interpolate(
        torch.rand(1, 3, 8, 10, generator=g), size=(64, 80), mode="bilinear", align_corners=False
    )
    mask = torch.zeros(1, 1, 64, 80)
    mask[..., 16:48, 20:60] = 1
    image[..., 16:48, 20:60] = image[..., 16:48, 20:60] * torch.tensor([1.2, 0.8, 0.7]).view(1, 3, 1, 1)
    return image.clamp(0, 1), mask


def test_every_shipped_weight_is_pinned():
    assert set(PINNED) == set(harmonize.list_pretrained())


@pytest.mark.parametrize("tag", harmonize.list_pretrained())
def test_tag_loads_strictly_on_the_architecture_its_name_builds(tag):
    arch, _ = split_model_name_tag(tag)
    plain = harmonize.create_model(arch).eval()
    cfg = harmonize.get_pretrained_cfg(tag)
    from harmonize._builder import resolve_weights_file

    load_weights(plain, load_state_dict(resolve_weights_file(cfg)), source=tag)  # strict: raises on any mismatch
    pretrained = harmonize.create_model(tag, pretrained=True).eval()
    assert type(plain) is type(pretrained) and plain.model_args == pretrained.model_args == {}
    assert repr(plain) == repr(pretrained)  # the same modules, sizes and settings
    image, mask = _fixed_input()
    with torch.no_grad():
        assert torch.equal(plain(image, mask), pretrained(image, mask))


@pytest.mark.parametrize("tag", sorted(PINNED))
def test_pinned_outputs(tag):
    model = harmonize.create_model(tag, pretrained=True).eval()
    image, mask = _fixed_input()
    with torch.no_grad():
        out = model(image, mask)
    fg = out[..., 16:48, 20:60]
    means, std, pixel = PINNED[tag]
    assert fg.mean((0, 2, 3)).tolist() == pytest.approx(means, abs=2e-5)
    assert float(fg.std()) == pytest.approx(std, abs=2e-5)
    assert out[0, :, 30, 40].tolist() == pytest.approx(pixel, abs=2e-5)
    assert torch.equal(out[mask.expand_as(out) == 0], image[mask.expand_as(image) == 0])


@pytest.mark.parametrize("family", sorted(BEST))
def test_family_pretrained_is_the_best_we_have_on_the_same_network(family):
    assert harmonize.get_pretrained_cfg(family).name == BEST[family]  # the default tag
    model = harmonize.create_model(family, pretrained=True)
    best = harmonize.create_model(BEST[family], pretrained=True)
    untrained = harmonize.create_model(family)
    assert repr(model) == repr(best) == repr(untrained)  # a tag never changes the network
    for a, b in zip(model.state_dict().values(), best.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("old, new", [("gknet_small.labelme_long", "gknet.labelme_long"), ("hdnet_small", "hdnet")])
def test_deprecated_names_warn_and_give_the_same_weights(old, new):
    with pytest.warns(FutureWarning, match=f"use '{new}'"):
        a = harmonize.create_model(old, pretrained=True)
    b = harmonize.create_model(new, pretrained=True)
    assert a.architecture == split_model_name_tag(new)[0]
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        harmonize.create_model(new)  # current names do not warn


@pytest.mark.parametrize("name", ["gknet", "gknet.labelme_long", "gknet.labelme", "hdnet", "hdnet.labelme"])
def test_pretrained_model_improves_real_composites(labelme, name):
    model = harmonize.create_model(name, pretrained=True).eval()
    ds = IHarmony4Dataset(labelme, ["LabelMe"], split="test")
    batch = [ds[i] for i in range(0, 200, 12)]  # 17 images spread over the list
    comp, mask, real = (torch.stack([b[k] for b in batch]) for k in ("composite", "mask", "real"))
    with torch.no_grad():
        out = model(comp, mask)
    assert torch.equal(out[mask.expand_as(out) == 0], comp[mask.expand_as(comp) == 0])
    before, after = fmse(comp, real, mask).mean().item(), fmse(out, real, mask).mean().item()
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("family", sorted(BEST))
def test_save_pretrained_of_shipped_weights_roundtrips(tmp_path, family):
    model = harmonize.create_model(family, pretrained=True)
    fmse_card = model.pretrained_cfg.metrics["LabelMe test fMSE / MSE / PSNR (iHarmony4 protocol)"].split(" / ")[0]
    out = harmonize.save_pretrained(model, tmp_path / family)
    card = (out / "README.md").read_text()
    assert "LabelMe" in card and fmse_card in card
    again = harmonize.create_model(f"local-dir:{out}", pretrained=True)
    assert again.architecture == family and again.model_args == model.model_args == {}
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tag", harmonize.list_pretrained())
def test_shipped_folder_config_names_the_architecture(tag):
    import json

    from harmonize._builder import resolve_weights_file

    folder = resolve_weights_file(harmonize.get_pretrained_cfg(tag))
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == split_model_name_tag(tag)[0] and config["model_args"] == {}
    loaded = harmonize.create_model(f"local-dir:{folder}", pretrained=True)
    assert repr(loaded) == repr(harmonize.create_model(split_model_name_tag(tag)[0]))


def test_old_gknet_small_keeps_its_free_kernels_without_weights(tmp_path):
    import json

    with pytest.warns(FutureWarning, match="kernel_norm='none'"):
        old = harmonize.create_model("gknet_small")
    assert old.model_args == {"kernel_norm": "none"} and repr(old) != repr(harmonize.create_model("gknet"))
    # a folder saved by harmonize 0.1 under the old name, free kernels left at their default
    folder = harmonize.save_pretrained(harmonize.create_model("gknet", kernel_norm="none"), tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    config["architecture"], config["model_args"] = "gknet_small", {}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.warns(FutureWarning):
        loaded = harmonize.create_model(f"local-dir:{folder}", pretrained=True)
    assert loaded.architecture == "gknet" and loaded.model_args == {"kernel_norm": "none"}
