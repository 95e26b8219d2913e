"""The shipped weights: load offline from the package, strictly, and harmonize real composites."""

import pytest
import torch

import harmonize
from harmonize.data import IHarmony4Dataset
from harmonize.metrics import fmse

# family name -> its best shipped weights; the family's default tag carries them (the small
# variant's weights, with the widths they need)
SHIPPED = {"gknet": "gknet_small.labelme_long", "hdnet": "hdnet_small.labelme"}
PAPER_WIDTH = {"gknet": ("widths", (32, 64, 128, 256, 256)), "hdnet": ("base_width", 32)}


@pytest.mark.parametrize("family", sorted(SHIPPED))
def test_family_pretrained_is_the_best_we_have(family):
    tag = SHIPPED[family].split(".")[1]
    assert {f"{family}.{tag}", SHIPPED[family], f"{family}.labelme"} <= set(harmonize.list_pretrained())
    assert harmonize.get_pretrained_cfg(family).tag == tag  # the default tag
    model = harmonize.create_model(family, pretrained=True)
    small = harmonize.create_model(SHIPPED[family], pretrained=True)
    attr, paper = PAPER_WIDTH[family]
    assert getattr(model, attr) == getattr(small, attr) != paper
    for a, b in zip(model.state_dict().values(), small.state_dict().values()):
        assert torch.equal(a, b)
    # without weights, the family name is the paper-scale network
    assert getattr(harmonize.create_model(family), attr) == paper


@pytest.mark.parametrize("name", ["gknet", "gknet_small.labelme", "hdnet"])
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


@pytest.mark.parametrize("family", sorted(SHIPPED))
def test_save_pretrained_of_shipped_weights_roundtrips(tmp_path, family):
    model = harmonize.create_model(family, pretrained=True)
    fmse_card = model.pretrained_cfg.metrics["LabelMe test fMSE / MSE / PSNR (iHarmony4 protocol)"].split(" / ")[0]
    out = harmonize.save_pretrained(model, tmp_path / family)
    card = (out / "README.md").read_text()
    assert "LabelMe" in card and fmse_card in card
    again = harmonize.create_model(f"local-dir:{out}", pretrained=True)
    assert again.architecture == family and again.model_args == model.model_args
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
