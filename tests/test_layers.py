"""GKNet's layers used alone: SCF, KPB, LRE and the mask-guided attention."""

import pytest
import torch
from torch import nn

from harmonize.layers import (
    KernelModulation,
    KernelPredictionBlock,
    LongDistanceReferenceExtractor,
    Mlp,
    SelectiveCorrelationFusion,
    SelfAttention,
    SpatialSeparatedAttention,
    TransformerBlock,
    channel_spatial_gate,
    kernel_modulation,
    masked_mean,
    sincos_pos_embed_2d,
    weighted_pixel_sums,
)
from harmonize.layers._layout import pointwise_conv_contiguous


class TinySegNet(nn.Module):
    """The docs' example: SCF fusing a decoder's coarse map with an encoder skip in a
    two-level segmentation network (no harmonization anywhere)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fuse = SelectiveCorrelationFusion(in_chs=32, skip_chs=16, groups=4)
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        s = self.enc1(x)
        return self.head(self.fuse(self.enc2(s), s))


def test_scf_in_a_segmentation_network_learns():
    torch.manual_seed(0)
    net = TinySegNet()
    x = torch.rand(4, 3, 16, 16)
    target = (x[:, 0] > 0.5).long() + (x[:, 1] > 0.5).long()  # a per-pixel labelling
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(net(x), target)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is not None for p in net.parameters())


def test_scf_equations_by_hand():
    torch.manual_seed(0)
    scf = SelectiveCorrelationFusion(in_chs=6, skip_chs=4, out_chs=8, groups=4).double()
    with torch.no_grad():
        scf.b.fill_(0.7)
    deep, skip = torch.randn(2, 6, 3, 5, dtype=torch.float64), torch.randn(2, 4, 6, 10, dtype=torch.float64)
    a_deep, a_skip = scf.attn_deep(deep), scf.attn_skip(skip)
    corr = a_deep.view(2, 4, 2) @ a_skip.view(2, 4, 2).transpose(1, 2)  # Eq. 2, n=4 groups of m=2
    sel = scf.corr_conv(corr[:, None])
    bar_deep = sel[:, :2].mean(3).transpose(1, 2).reshape(2, 8)
    bar_skip = sel[:, 2:].mean(2).transpose(1, 2).reshape(2, 8)
    s_deep = torch.sigmoid(a_deep + 0.7 * scf.fc_deep(bar_deep))  # Eq. 3
    s_skip = torch.sigmoid(a_skip + 0.7 * scf.fc_skip(bar_skip))
    got_deep, got_skip = scf.selective_weights(deep, skip)
    torch.testing.assert_close(got_deep, s_deep)
    torch.testing.assert_close(got_skip, s_skip)
    up = nn.functional.interpolate(scf.proj_deep(deep) * s_deep[..., None, None], size=(6, 10), mode="bilinear")
    torch.testing.assert_close(scf(deep, skip), scf.proj_skip(skip) * s_skip[..., None, None] + up)  # Eq. 4


def test_scf_gradcheck_float64():
    scf = SelectiveCorrelationFusion(in_chs=4, skip_chs=4, groups=2).double()
    with torch.no_grad():
        scf.b.fill_(0.5)
    deep = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(scf, (deep, skip))


def test_scf_errors_and_non_contiguous():
    with pytest.raises(ValueError, match="divisible by groups"):
        SelectiveCorrelationFusion(8, 8, out_chs=10, groups=4)
    scf = SelectiveCorrelationFusion(8, 4, groups=2)
    with pytest.raises(ValueError, match="deep must be"):
        scf(torch.randn(1, 7, 4, 4), torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="batch sizes differ"):
        scf(torch.randn(2, 8, 4, 4), torch.randn(1, 4, 8, 8))
    deep = torch.randn(1, 8, 4, 4).permute(0, 1, 3, 2)
    skip = torch.randn(1, 8, 8, 4).permute(0, 3, 1, 2)
    assert not deep.is_contiguous() and not skip.is_contiguous()
    torch.testing.assert_close(scf(deep, skip), scf(deep.contiguous(), skip.contiguous()))


def test_kpb_outputs_and_identity_start():
    kpb = KernelPredictionBlock(in_chs=8, skip_chs=6, out_chs=8, kernel_chs=5, kernel_size=3, groups=4)
    kernels, feat = kpb(torch.randn(2, 6, 8, 8), torch.randn(2, 8, 4, 4))
    assert kernels.shape == (2, 45, 8, 8) and feat.shape == (2, 8, 8, 8)
    # an untrained block's kernels are (nearly) the identity: modulation leaves x unchanged
    x = torch.randn(2, 5, 8, 8)
    torch.testing.assert_close(KernelModulation(3)(x, kernels), x, atol=0.05, rtol=0.05)
    plain = KernelPredictionBlock(8, 6, 8, 5, use_scf=False)
    assert not any(isinstance(m, SelectiveCorrelationFusion) for m in plain.modules())
    assert plain(torch.randn(1, 6, 8, 8), torch.randn(1, 8, 4, 4))[0].shape == (1, 45, 8, 8)


def test_kernel_modulation_in_a_denoiser():
    # Reuse outside harmonization: a kernel-predicting denoiser (Bako et al. 2017 style).
    torch.manual_seed(0)
    predictor = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 9, 3, padding=1))
    clean = torch.rand(2, 3, 24, 24).cumsum(-1) / 24  # smooth ramps
    noisy = clean + 0.1 * torch.randn_like(clean)
    opt = torch.optim.Adam(predictor.parameters(), 1e-2)
    for _ in range(40):
        k = torch.softmax(predictor(noisy), dim=1)  # one 3x3 kernel per pixel, shared by the channels
        loss = ((kernel_modulation(noisy, k, 3) - clean) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * ((noisy - clean) ** 2).mean().item()


def test_lre_any_size_and_position_embedding():
    lre = LongDistanceReferenceExtractor(12, embed_dim=16, depth=2, num_heads=4, out_chs=8)
    for h, w in [(1, 1), (5, 7), (16, 16)]:
        assert lre(torch.randn(2, 12, h, w)).shape == (2, 8, h, w)
    a, b = sincos_pos_embed_2d(4, 4, 16), sincos_pos_embed_2d(8, 8, 16)
    assert a.shape == (16, 16) and b.shape == (64, 16)
    assert len({tuple(r.tolist()) for r in b}) == 64  # every position distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(2, 2, 6)
    with pytest.raises(ValueError, match="expected"):
        lre(torch.randn(1, 11, 4, 4))


def test_lre_is_global():
    # Changing one token changes the output everywhere: the reference is long-distance.
    torch.manual_seed(0)
    lre = LongDistanceReferenceExtractor(4, embed_dim=8, depth=1, num_heads=2).eval()
    x = torch.randn(1, 4, 6, 6)
    y = x.clone()
    y[..., 0, 0] += 5
    diff = (lre(x) - lre(y)).abs()
    assert diff[..., 4:, 4:].max() > 1e-4  # far corner moved (beyond the 3x3 post-conv)


def test_lre_gradcheck_float64():
    lre = LongDistanceReferenceExtractor(4, embed_dim=8, depth=1, num_heads=2).double()
    x = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lre, (x,))


def test_spatial_separated_attention():
    att = SpatialSeparatedAttention(8)
    x, m = torch.randn(2, 8, 6, 6), torch.zeros(2, 1, 12, 12)
    m[..., :6, :] = 1
    assert torch.equal(att(x, m), x)  # zero-initialised projection: identity at start
    nn.init.normal_(att.proj.weight)
    assert not torch.equal(att(x, m), x)
    mm = masked_mean(x, torch.ones(2, 1, 6, 6))
    torch.testing.assert_close(mm, x.mean((2, 3)))


def _attention_by_the_formula(att, x, mask):
    """S2AM's blend as first written: masked means by sums of products, a concatenation."""
    m = nn.functional.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
    fg = (x * m).sum((2, 3)) / (m.sum((2, 3)) + 1e-6)
    bg = (x * (1 - m)).sum((2, 3)) / ((1 - m).sum((2, 3)) + 1e-6)
    stats = torch.cat([fg, bg], 1)
    a_fg = torch.sigmoid(att.attn_fg(stats))[:, :, None, None]
    a_bg = torch.sigmoid(att.attn_bg(stats))[:, :, None, None]
    s = torch.sigmoid(att.spatial(torch.cat([x, m], 1)))
    return x + att.proj(x * (a_fg * s + a_bg * (1 - s)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_spatial_separated_attention_is_its_formula(channels_last):
    torch.manual_seed(0)
    att = SpatialSeparatedAttention(6)
    nn.init.normal_(att.proj.weight, std=0.3)
    x, mask = torch.randn(2, 6, 10, 14), (torch.rand(2, 1, 20, 28) > 0.4).float()
    want = _attention_by_the_formula(att, x, mask)
    if channels_last:
        att, x = att.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    got = att(x, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    xg = x.clone().requires_grad_(True)
    att(xg, mask).square().sum().backward()
    assert xg.grad is not None and att.spatial.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_weighted_pixel_sums_and_gate_in_both_layouts(dtype, channels_last):
    # One thread at 256x256 in bfloat16: the size at which torch's bmm of (24, 65536) by
    # (65536, 2) died of a floating-point exception in the contiguous layout.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(1, 24, 256, 256).to(dtype)
        w = torch.rand(1, 2, 256, 256).to(dtype)
        s = torch.rand(1, 1, 256, 256).to(dtype)
        a_fg, a_bg = torch.rand(1, 24).to(dtype), torch.rand(1, 24).to(dtype)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xl = x.contiguous(memory_format=fmt)
        want_sums = torch.stack([(x.float() * w[:, j : j + 1].float()).sum((2, 3)) for j in range(2)], 1)
        tol = dict(rtol=1e-2, atol=1.0) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(weighted_pixel_sums(xl, w).float(), want_sums, **tol)
        want_gate = x.float() * (a_fg.float()[..., None, None] * s.float() + a_bg.float()[..., None, None] * (1 - s.float()))
        gate = channel_spatial_gate(xl, a_fg, a_bg, s)
        torch.testing.assert_close(gate.float(), want_gate, rtol=2e-2, atol=2e-2)
        assert gate.is_contiguous(memory_format=fmt)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_contiguous_is_the_convolution(channels_last):
    conv = nn.Conv2d(12, 45, 1)
    x = torch.randn(3, 12, 7, 9)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    got = pointwise_conv_contiguous(x, conv.weight, conv.bias)
    torch.testing.assert_close(got, conv(x), rtol=1e-5, atol=1e-5)
    assert got.is_contiguous()
    torch.testing.assert_close(pointwise_conv_contiguous(x, conv.weight, None), conv(x) - conv.bias[:, None, None])
    with torch.no_grad():  # the bias added by baddbmm (with gradients: a channel of ones in the product)
        torch.testing.assert_close(pointwise_conv_contiguous(x, conv.weight, conv.bias), got.detach(), rtol=1e-5, atol=1e-5)
    # the same gradients as the convolution, for the input, the weight and the bias
    g = torch.randn(3, 45, 7, 9)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    pointwise_conv_contiguous(xa, conv.weight, conv.bias).backward(g)
    mine = [xa.grad, conv.weight.grad.clone(), conv.bias.grad.clone()]
    conv.zero_grad()
    conv(xb).backward(g)
    for a, b in zip(mine, [xb.grad, conv.weight.grad, conv.bias.grad]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_kernel_modulation_keeps_the_layout():
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    kernels = torch.randn(2, 36, 6, 6)
    out = kernel_modulation(x, kernels, 3)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, kernel_modulation(x.contiguous(), kernels, 3))
    assert kernel_modulation(x.contiguous(), kernels, 3).is_contiguous()


def test_kpb_softmax_kernels_sum_to_one():
    kpb = KernelPredictionBlock(8, 6, 8, kernel_chs=5, kernel_size=3, groups=4, kernel_norm="softmax")
    kernels, _ = kpb(torch.randn(2, 6, 8, 8), torch.randn(2, 8, 4, 4))
    sums = kernels.view(2, 5, 9, 8, 8).sum(2)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert kernels.view(2, 5, 9, 8, 8)[:, :, 4].min() > 0.8  # starts near the identity
    with pytest.raises(ValueError, match="kernel_norm"):
        KernelPredictionBlock(8, 6, 8, 5, kernel_norm="l1")


def test_kpb_softmax_under_autocast_is_float32_softmax_rounded_once():
    # Under bfloat16 autocast the softmax runs on the logits' dtype (autocast would upcast it to
    # float32 and kernel_modulation cast it back): the same kernels, in the features' dtype.
    torch.manual_seed(0)
    kpb = KernelPredictionBlock(8, 6, 8, kernel_chs=5, kernel_size=3, groups=4, kernel_norm="softmax")
    nn.init.normal_(kpb.kernel_head.weight, std=1.0)  # logits far from the identity start
    skip, deep = torch.randn(2, 6, 8, 8), torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernels, feat = kpb(skip, deep)
        logits = pointwise_conv_contiguous(feat, kpb.kernel_head.weight, kpb.kernel_head.bias)
    assert kernels.dtype == torch.bfloat16
    want = logits.float().view(2, 5, 9, 8, 8).softmax(2).to(torch.bfloat16).view_as(kernels)
    assert torch.equal(kernels, want)
    assert float(logits.detach().float().view(2, 5, 9, 8, 8).softmax(2).amax()) < 0.99  # not all one-hot


@pytest.mark.parametrize("dim,heads,tokens", [(32, 2, 10), (160, 4, 256)])
def test_transformer_block_is_timms_vit_block(dim, heads, tokens):
    # same parameter names, same initialisation from the same seed, same outputs: weights trained
    # with timm's Block load and run unchanged
    from timm.models.vision_transformer import Block

    torch.manual_seed(0)
    theirs = Block(dim, heads, mlp_ratio=4.0, qkv_bias=True).eval()
    torch.manual_seed(0)
    ours = TransformerBlock(dim, heads, mlp_ratio=4.0, qkv_bias=True).eval()
    sd_theirs, sd_ours = theirs.state_dict(), ours.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    for k in sd_theirs:
        assert torch.equal(sd_ours[k], sd_theirs[k]), k
    with torch.no_grad():
        for p in theirs.parameters():  # LayerNorm starts at 1/0: move it so it matters
            p.add_(0.05 * torch.randn_like(p))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, tokens, dim)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6, rtol=1e-5)


def test_mlp_is_timms_mlp():
    from timm.layers import Mlp as TimmMlp

    torch.manual_seed(1)
    theirs = TimmMlp(24, 6, 24, act_layer=nn.ReLU)
    torch.manual_seed(1)
    ours = Mlp(24, 6, 24, act_layer=nn.ReLU)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(5, 24)
    assert torch.equal(ours(x), theirs(x))


def test_self_attention_mixes_every_token():
    attn = SelfAttention(16, num_heads=4, qkv_bias=True)
    x = torch.randn(1, 9, 16, requires_grad=True)
    attn(x)[0, 0].sum().backward()
    assert bool((x.grad[0].abs().sum(dim=1) > 0).all())
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(10, num_heads=4)
