"""Registry-wide model tests: every registered model honours the same contract."""

import pytest
import torch

import harmonize

MODELS = harmonize.list_models()
# Paper-scale models are checked at a tiny size but take long to build; the tiny variants
# cover every code path quickly, the larger ones are checked in the slow run.
FAST = [m for m in MODELS if m.startswith("test_") or m in ("composite", "reinhard")]
SLOW = [m for m in MODELS if m not in FAST]


def _inputs(b=2, h=37, w=50):
    image = torch.rand(b, 3, h, w)
    mask = torch.zeros(b, 1, h, w)
    mask[:, :, 8:25, 10:30] = 1
    return image, mask


def _check_contract(name: str) -> None:
    model = harmonize.create_model(name)
    image, mask = _inputs()
    image.requires_grad_(False)
    out = model(image, mask)
    assert out.shape == image.shape
    assert torch.isfinite(out).all()
    bg = (mask == 0).expand_as(image)
    assert torch.equal(out[bg], image[bg]), "the background must come back bit for bit"
    params = [p for p in model.parameters() if p.requires_grad]
    if params:
        model.zero_grad()
        ((out - image) ** 2).sum().backward() if out.requires_grad else None
        missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None)]
        assert not missing, f"parameters without a gradient: {missing[:5]}"
    model.eval()
    with torch.no_grad():
        out = model(image, mask)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", FAST)
def test_model_contract(name):
    _check_contract(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_model_contract_large(name):
    _check_contract(name)


@pytest.mark.parametrize("name", FAST)
def test_model_rejects_bad_shapes(name):
    model = harmonize.create_model(name)
    image, mask = _inputs(1, 16, 16)
    with pytest.raises(ValueError, match="image must be"):
        model(image[:, :2], mask)
    with pytest.raises(ValueError, match="mask must be"):
        model(image, mask.expand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="must match image"):
        model(image, mask[..., :15])
    with pytest.raises(ValueError, match="image must be"):
        model(image[0], mask[0])


def test_every_registered_model_has_a_test_variant_or_is_reference():
    families = {n.removeprefix("test_") for n in MODELS if n.startswith("test_")}
    for name in MODELS:
        family = name.split("_")[0]
        assert name in FAST or family in families, f"{name} has no tiny test_ variant"
