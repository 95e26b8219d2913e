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
    g = torch.Generator().manual_seed(b * 1000 + h * w)
    # images of different colours, so that the pooled statistics differ between them
    image = torch.rand(b, 3, h, w, generator=g) * (0.3 + 0.7 * torch.rand(b, 3, 1, 1, generator=g))
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
        # Nudge every weight: GKNet's zero-initialised output head would otherwise pass
        # all-zero gradients upstream, and a test of "a gradient exists" could not fail.
        torch.manual_seed(0)
        with torch.no_grad():
            for p in params:
                p.add_(0.05 * torch.randn_like(p))
        out = model(image, mask)
        target = torch.rand_like(image)
        model.zero_grad()
        ((out - target) ** 2).sum().backward()
        dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
        assert not dead, f"parameters without a non-zero gradient: {dead[:5]}"
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
