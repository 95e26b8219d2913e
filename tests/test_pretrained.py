"""The shipped weights: load offline from the package, strictly, and harmonize real composites."""

import torch

import harmonize
from harmonize.data import IHarmony4Dataset
from harmonize.metrics import fmse


def test_gknet_pretrained_is_the_best_gknet_we_have():
    assert "gknet.labelme" in harmonize.list_pretrained()
    assert harmonize.get_pretrained_cfg("gknet").tag == "labelme"  # the default tag
    model = harmonize.create_model("gknet", pretrained=True)
    small = harmonize.create_model("gknet_small.labelme", pretrained=True)
    assert model.widths == small.widths
    for a, b in zip(model.state_dict().values(), small.state_dict().values()):
        assert torch.equal(a, b)
    # without weights, "gknet" is the paper-scale network
    assert harmonize.create_model("gknet").widths == (32, 64, 128, 256, 256)


def test_pretrained_gknet_improves_real_composites(labelme):
    model = harmonize.create_model("gknet", pretrained=True).eval()
    ds = IHarmony4Dataset(labelme, ["LabelMe"], split="test")
    batch = [ds[i] for i in range(0, 200, 12)]  # 17 images spread over the list
    comp, mask, real = (torch.stack([b[k] for b in batch]) for k in ("composite", "mask", "real"))
    with torch.no_grad():
        out = model(comp, mask)
    assert torch.equal(out[mask.expand_as(out) == 0], comp[mask.expand_as(comp) == 0])
    before, after = fmse(comp, real, mask).mean().item(), fmse(out, real, mask).mean().item()
    assert after < 0.9 * before, (before, after)


def test_save_pretrained_of_shipped_weights_roundtrips(tmp_path):
    model = harmonize.create_model("gknet", pretrained=True)
    out = harmonize.save_pretrained(model, tmp_path / "gknet")
    card = (out / "README.md").read_text()
    assert "LabelMe" in card and "1439" in card
    again = harmonize.create_model(f"local-dir:{out}", pretrained=True)
    assert again.architecture == "gknet" and again.widths == model.widths
