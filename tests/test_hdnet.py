"""HDNet and its layers: Local Dynamic, Mask-aware Global Dynamic, RAIN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import harmonize
from harmonize.layers import (
    LocalDynamic,
    MaskGlobalDynamic,
    RegionAwareInstanceNorm,
    dynamic_conv1x1,
    foreground_positions,
    local_dynamic,
    region_aware_instance_norm,
)


def _box_mask(b: int, h: int, w: int, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    m = torch.zeros(b, 1, h, w)
    m[..., top:bottom, left:right] = 1
    return m


def _local_dynamic_reference(query, key, mask, top_k):
    """Plain loops over images and foreground positions: the oracle for local_dynamic."""
    b, c, h, w = query.shape
    fg = foreground_positions(mask, (h, w)).flatten(1)
    out = torch.zeros(b, c, h * w, dtype=query.dtype)
    for i in range(b):
        q, k = query[i].flatten(1), key[i].flatten(1)
        bg_idx = (~fg[i]).nonzero().flatten()
        if len(bg_idx) == 0:
            continue
        for p in fg[i].nonzero().flatten():
            sim = q[:, p] @ k[:, bg_idx]
            best = bg_idx[sim.topk(min(top_k, len(bg_idx))).indices]
            out[i, :, p] = k[:, best].mean(dim=1)
    return out.view(b, c, h, w)


# ----------------------------------------------------------------------------- local dynamic


@pytest.mark.parametrize("top_k", [1, 3])
def test_local_dynamic_matches_reference(top_k):
    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7)
    mask = _box_mask(2, 12, 14, 2, 3, 9, 10)
    out = local_dynamic(q, k, mask, top_k=top_k, chunk_size=8)
    ref = _local_dynamic_reference(q, k, mask, top_k)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert out.abs().sum() > 0


@pytest.mark.parametrize("top_k", [1, 2])
def test_local_dynamic_chunked_equals_unchunked(top_k):
    torch.manual_seed(1)
    f = torch.randn(2, 8, 9, 11)  # HW = 99
    mask = _box_mask(2, 9, 11, 1, 2, 7, 8)
    full = local_dynamic(f, f, mask, top_k=top_k, chunk_size=99)
    for chunk in (1, 7, 32, 98, 500):  # 7 and 32 do not divide 99
        assert torch.equal(local_dynamic(f, f, mask, top_k=top_k, chunk_size=chunk), full), chunk


def test_local_dynamic_zero_outside_foreground_and_top_k_exceeding_background():
    torch.manual_seed(2)
    f = torch.randn(1, 4, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., 0, :2] = 0  # two background positions only
    out = local_dynamic(f, f, mask, top_k=5)
    bg = mask[0, 0] == 0
    assert torch.equal(out[0][:, bg], torch.zeros(4, 2))
    # every foreground position averages the two background features
    expected = f[0][:, bg].mean(dim=1)
    torch.testing.assert_close(out[0][:, ~bg], expected[:, None].expand(4, 14))


def test_local_dynamic_gradcheck():
    torch.manual_seed(3)
    q = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = _box_mask(1, 3, 4, 0, 0, 2, 2).double()
    for top_k in (1, 2):
        assert torch.autograd.gradcheck(
            lambda q, k, v, top_k=top_k: local_dynamic(
                q, k, mask, top_k=top_k, chunk_size=5, value_feat=v
            ),
            (q, k, v),
        )


def test_local_dynamic_module_equals_function():
    torch.manual_seed(4)
    ld = LocalDynamic(6, top_k=2, chunk_size=5)
    x = torch.randn(2, 6, 5, 6)
    mask = _box_mask(2, 10, 12, 2, 2, 8, 7)
    f = ld.proj(x)
    fused = ld.fuse(torch.cat([f, local_dynamic(f, f, mask, top_k=2, chunk_size=5)], dim=1))
    fg = foreground_positions(mask, (5, 6))
    assert torch.equal(ld(x, mask), torch.where(fg, fused, x))


def test_local_dynamic_module_keeps_background():
    torch.manual_seed(5)
    ld = LocalDynamic(4)
    x = torch.randn(2, 4, 6, 6)
    mask = _box_mask(2, 6, 6, 1, 1, 4, 5)
    out = ld(x, mask)
    bg = mask.expand_as(x) == 0
    assert torch.equal(out[bg], x[bg])
    assert not torch.allclose(out[~bg], x[~bg])


def test_local_dynamic_empty_regions():
    torch.manual_seed(6)
    ld = LocalDynamic(4)
    x = torch.randn(2, 4, 5, 5)
    all_fg, all_bg = torch.ones(2, 1, 5, 5), torch.zeros(2, 1, 5, 5)
    # nothing to match (no background) or nothing to rewrite (no foreground): unchanged
    assert torch.equal(ld(x, all_fg), x)
    assert torch.equal(ld(x, all_bg), x)
    assert torch.equal(local_dynamic(x, x, all_fg), torch.zeros_like(x))
    # a batch mixing an image without background and one with both regions
    mixed = torch.cat([all_fg[:1], _box_mask(1, 5, 5, 1, 1, 3, 3)])
    out = ld(x, mixed)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], x[0])
    assert not torch.equal(out[1], x[1])


def test_local_dynamic_non_contiguous():
    torch.manual_seed(7)
    f = torch.randn(2, 6, 7, 5).transpose(2, 3)  # (2, 6, 5, 7), non-contiguous
    mask = _box_mask(2, 5, 7, 1, 1, 4, 4)
    assert not f.is_contiguous()
    assert torch.equal(
        local_dynamic(f, f, mask, chunk_size=4), local_dynamic(f.contiguous(), f.contiguous(), mask)
    )


def test_local_dynamic_bad_inputs():
    f = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="key_feat"):
        local_dynamic(f, torch.randn(1, 3, 5, 5), torch.ones(1, 1, 5, 5))
    with pytest.raises(ValueError, match="mask must be"):
        local_dynamic(f, f, torch.ones(1, 2, 5, 5))
    with pytest.raises(ValueError, match="top_k"):
        local_dynamic(f, f, torch.ones(1, 1, 5, 5), top_k=0)
    with pytest.raises(ValueError, match="x must be"):
        LocalDynamic(8)(f, torch.ones(1, 1, 5, 5))


# ------------------------------------------------------------------ mask-aware global dynamic


def test_dynamic_conv1x1_equals_grouped_conv():
    torch.manual_seed(8)
    x, wt, b = torch.randn(3, 4, 5, 6), torch.randn(3, 7, 4), torch.randn(3, 7)
    ref = F.conv2d(x.reshape(1, 12, 5, 6), wt.reshape(21, 4, 1, 1), b.reshape(21), groups=3).view(
        3, 7, 5, 6
    )
    torch.testing.assert_close(dynamic_conv1x1(x, wt, b), ref)
    xt = torch.randn(3, 4, 6, 5).transpose(2, 3)
    torch.testing.assert_close(dynamic_conv1x1(xt, wt), dynamic_conv1x1(xt.contiguous(), wt))


def test_dynamic_conv1x1_gradcheck():
    torch.manual_seed(9)
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dynamic_conv1x1, (x, wt, b))


def test_mask_global_dynamic_module_equals_function():
    torch.manual_seed(10)
    mgd = MaskGlobalDynamic(6)
    x = torch.randn(2, 6, 4, 4)
    mask = _box_mask(2, 4, 4, 0, 0, 2, 4)
    d = torch.sigmoid(mgd.squeeze(x.mean(dim=(2, 3))))  # (2, 4)
    # the grouped 1x1 conv as a real grouped conv: group 0 (descriptor 0-1) -> foreground
    conv_w = mgd.kernel_weight.reshape(72, 2, 1, 1)
    k = F.conv2d(d[:, :, None, None], conv_w, mgd.kernel_bias.reshape(72), groups=2)
    k = k.view(2, 2, 6, 6)
    k_fg, k_bg = mgd.kernels(x)
    torch.testing.assert_close(k_fg, k[:, 0])
    torch.testing.assert_close(k_bg, k[:, 1])
    k = torch.stack([k_fg, k_bg], dim=1)
    expected = mask * dynamic_conv1x1(x, k[:, 0]) + (1 - mask) * dynamic_conv1x1(x, k[:, 1])
    out = mgd(x, mask)
    assert torch.equal(out, expected)
    # a binary mask: each pixel takes exactly its region's kernel
    assert torch.equal(out[..., :2, :], dynamic_conv1x1(x, k[:, 0])[..., :2, :])
    assert torch.equal(out[..., 2:, :], dynamic_conv1x1(x, k[:, 1])[..., 2:, :])


def test_mask_global_dynamic_gradcheck():
    torch.manual_seed(11)
    mgd = MaskGlobalDynamic(2).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 6, 6, dtype=torch.float64)  # soft, resized
    params = tuple(mgd.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: mgd(x, mask), (x, *params))


def test_mask_global_dynamic_empty_regions_and_bad_shape():
    mgd = MaskGlobalDynamic(4)
    x = torch.randn(1, 4, 5, 5)
    k_fg, k_bg = mgd.kernels(x)
    assert torch.equal(mgd(x, torch.ones(1, 1, 5, 5)), dynamic_conv1x1(x, k_fg))
    assert torch.equal(mgd(x, torch.zeros(1, 1, 5, 5)), dynamic_conv1x1(x, k_bg))
    with pytest.raises(ValueError, match=r"x must be \(B, 4, H, W\)"):
        mgd(torch.randn(1, 3, 5, 5), torch.ones(1, 1, 5, 5))
    with pytest.raises(ValueError, match="weight must be"):
        dynamic_conv1x1(x, torch.randn(1, 4, 3))


# ---------------------------------------------------------------------------------- RAIN


def test_rain_statistics():
    torch.manual_seed(12)
    x = torch.randn(2, 3, 8, 8) * 3 + 1
    x[..., :4, :] = x[..., :4, :] * 0.2 - 5  # foreground far from the background
    mask = _box_mask(2, 8, 8, 0, 0, 4, 8)
    y = region_aware_instance_norm(x, mask, eps=1e-8)
    fg, bg = y[..., :4, :], y[..., 4:, :]
    sd = lambda t: t.std(dim=(2, 3), unbiased=False)
    mean = lambda t: t.mean(dim=(2, 3))
    torch.testing.assert_close(mean(bg), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(sd(bg), torch.ones(2, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(mean(fg), mean(x[..., 4:, :]), atol=1e-4, rtol=0)
    torch.testing.assert_close(sd(fg), sd(x[..., 4:, :]), atol=1e-4, rtol=0)


def test_rain_module_equals_function():
    torch.manual_seed(13)
    rain = RegionAwareInstanceNorm(4)
    with torch.no_grad():
        for p in rain.parameters():
            p.normal_()
    x, mask = torch.randn(2, 4, 6, 6), torch.rand(2, 1, 12, 12)
    expected = region_aware_instance_norm(
        x, mask, rain.weight_fg, rain.bias_fg, rain.weight_bg, rain.bias_bg
    )
    assert torch.equal(rain(x, mask), expected)
    assert not torch.equal(expected, region_aware_instance_norm(x, mask))
    assert len(list(RegionAwareInstanceNorm(4, affine=False).parameters())) == 0


def test_rain_gradcheck():
    torch.manual_seed(14)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    for mask in (
        _box_mask(2, 4, 4, 0, 0, 2, 3).double(),
        torch.rand(2, 1, 4, 4, dtype=torch.float64),
    ):
        assert torch.autograd.gradcheck(
            lambda x, *p, mask=mask: region_aware_instance_norm(x, mask, *p), (x, *params)
        )


def test_rain_empty_regions():
    torch.manual_seed(15)
    x = torch.randn(2, 3, 5, 5) * 2 + 3
    rain = RegionAwareInstanceNorm(3)
    no_bg = rain(x, torch.ones(2, 1, 5, 5))  # the foreground keeps its own statistics
    assert torch.isfinite(no_bg).all()
    torch.testing.assert_close(no_bg, x, atol=1e-4, rtol=1e-4)
    no_fg = rain(x, torch.zeros(2, 1, 5, 5))  # plain instance norm
    torch.testing.assert_close(no_fg, F.instance_norm(x), atol=1e-5, rtol=1e-5)
    x.requires_grad_(True)
    rain(x, torch.ones(2, 1, 5, 5)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_rain_bad_shape():
    with pytest.raises(ValueError, match="mask must be"):
        region_aware_instance_norm(torch.randn(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="weight_fg"):
        region_aware_instance_norm(torch.randn(1, 3, 4, 4), torch.ones(1, 1, 4, 4), torch.ones(4))


# --------------------------------------------------------------------------------- HDNet


def test_hdnet_forward_odd_size_background_exact_and_gradients():
    torch.manual_seed(16)
    model = harmonize.create_model("test_hdnet")
    assert isinstance(model, harmonize.models.HDNet)
    assert 1_000 < sum(p.numel() for p in model.parameters()) < 50_000
    image = torch.rand(2, 3, 37, 50)
    mask = _box_mask(2, 37, 50, 6, 9, 30, 38)
    out = model(image, mask)
    assert out.shape == (2, 3, 37, 50)
    assert torch.isfinite(out).all()
    bg = mask.expand_as(image) == 0
    assert torch.equal(out[bg], image[bg])
    assert not torch.allclose(out[~bg], image[~bg])
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_hdnet_eval_range_and_empty_masks():
    torch.manual_seed(17)
    model = harmonize.create_model("test_hdnet", top_k=2, concat_mask=False).eval()
    image = torch.rand(2, 3, 24, 17)
    with torch.no_grad():
        for mask in (torch.zeros(2, 1, 24, 17), torch.ones(2, 1, 24, 17)):
            out = model(image, mask)
            assert torch.isfinite(out).all()
            assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(model(image, torch.zeros(2, 1, 24, 17)), image)


def test_hdnet_ablations_and_bad_input():
    model = harmonize.create_model("test_hdnet", use_ld=False, use_mgd=False, use_rain=False)
    assert model.ld is None and model.mgd is None
    out = model(torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16))
    assert out.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.rand(1, 3, 16, 16), torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match="image must be"):
        model(torch.rand(1, 4, 16, 16), torch.ones(1, 1, 16, 16))


def test_hdnet_registered():
    assert {"hdnet", "hdnet_large", "test_hdnet"} <= set(harmonize.list_models(module="hdnet"))
    cfg = harmonize.get_pretrained_cfg("hdnet")
    assert cfg.tag == "labelme_families_long" and cfg.has_weights and cfg.paper_url.endswith("2312.06886")
    assert harmonize.create_model("hdnet").base_width == 16 and harmonize.create_model("hdnet_large").base_width == 32
    untrained = harmonize.get_pretrained_cfg("hdnet_large.untrained")
    assert not untrained.has_weights and untrained.paper_url.endswith("2312.06886")
