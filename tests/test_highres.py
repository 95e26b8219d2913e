"""``harmonize.harmonize`` and :class:`Harmonizer`: any size, any input kind, the high-resolution path."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLE, require
from PIL import Image
from torch import Tensor, nn

import harmonize
from harmonize.data.io import load_image, load_mask
from harmonize.data.transforms import resize_image
from harmonize.highres import (
    Harmonizer,
    apply_color_transform,
    clean_mask,
    fit_color_transform,
    mask_is_empty,
    upsample_blend,
)
from harmonize.metrics import fmse

# A fixed colour change: out = A rgb + b.
_A = torch.tensor([[0.80, 0.10, 0.00], [0.05, 0.70, 0.10], [0.00, 0.15, 0.60]])
_B = torch.tensor([0.10, 0.05, 0.20])


class GlobalColorChange(nn.Module):
    """A stub "model": a known affine colour change of the foreground, background untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    @staticmethod
    def change(image: Tensor) -> Tensor:
        return (torch.einsum("ij,bjhw->bihw", _A, image) + _B[:, None, None]).clamp(0, 1)

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        self.calls.append(tuple(image.shape))
        return self.change(image) * mask + image * (1 - mask)


def _textured(h: int, w: int, seed: int = 0) -> Tensor:
    """A photo-like image with detail at every scale: smooth gradients plus fine texture."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx * yy])
    fine = 0.15 * (torch.rand(3, h, w, generator=g) - 0.5)
    stripes = 0.1 * torch.sin(xx * w / 1.7)[None]  # period under 2 px of the 256-pixel copy
    return (base + fine + stripes).clamp(0, 1)


def _rect_mask(h: int, w: int) -> Tensor:
    m = torch.zeros(1, h, w)
    m[:, h // 5 : 3 * h // 4, w // 4 : 2 * w // 3] = 1
    return m


# ----------------------------------------------------------------- the colour transform


def test_fit_reproduces_a_global_affine_change() -> None:
    x = _textured(64, 80)[None]
    coeffs = fit_color_transform(x, GlobalColorChange.change(x))
    assert coeffs.shape == (1, 12, 64, 80)
    assert torch.allclose(apply_color_transform(x, coeffs), GlobalColorChange.change(x), atol=1e-4)


def test_fit_falls_back_to_the_global_transform_outside_the_weights() -> None:
    x = _textured(48, 48)[None]
    w = torch.zeros(1, 1, 48, 48)
    w[..., :16, :16] = 1  # the change is only observed in a corner
    coeffs = fit_color_transform(x, GlobalColorChange.change(x), w, radius=3)
    out = apply_color_transform(x, coeffs)
    assert torch.allclose(out[..., 32:, 32:], GlobalColorChange.change(x)[..., 32:, 32:], atol=1e-3)


def test_upsampling_in_strips_equals_interpolate() -> None:
    low = torch.rand(2, 3, 17, 23)
    image = torch.zeros(2, 3, 101, 77)
    ref = F.interpolate(low, size=(101, 77), mode="bilinear", align_corners=False)
    out = upsample_blend(image, low, max_strip_elems=3000)  # many strips
    assert torch.allclose(out, ref, atol=1e-6)


def test_apply_keeps_the_background_bit_for_bit() -> None:
    x = _textured(90, 70)[None]
    mask = _rect_mask(90, 70)[None]
    mask[..., 30:40, 20:50] = 0.5  # soft pixels too
    coeffs = fit_color_transform(x[..., ::3, ::3], GlobalColorChange.change(x[..., ::3, ::3]))
    out = apply_color_transform(x, coeffs, mask, max_strip_elems=5000)
    bg = (mask == 0).expand_as(x)
    assert torch.equal(out[bg], x[bg])
    soft = (mask == 0.5).expand_as(x)
    assert not torch.equal(out[soft], x[soft])


def test_clean_mask_snaps_jpeg_noise_and_keeps_soft_edges() -> None:
    m = torch.tensor([0.0, 2 / 255, 0.3, 0.5, 253 / 255, 1.0, 1.2])
    assert clean_mask(m).tolist() == pytest.approx([0, 0, 0.3, 0.5, 1, 1, 1])


# ----------------------------------------------------------------- the high-resolution path


def test_high_resolution_affine_is_sharp_and_beats_upsampling() -> None:
    h, w = 1500, 1000
    image, mask = _textured(h, w), _rect_mask(h, w)
    truth = GlobalColorChange.change(image[None])[0] * mask + image * (1 - mask)
    stub = GlobalColorChange()
    affine = Harmonizer(stub, device="cpu", size=256, method="affine")(image, mask)
    assert stub.calls == [(1, 3, 256, 256)], "the network sees the 256-pixel copy only"
    upsample = Harmonizer(stub, device="cpu", size=256, method="upsample")(image, mask)
    assert affine.shape == upsample.shape == (3, h, w)
    f_affine = fmse(affine[None], truth[None], mask[None]).item()
    f_upsample = fmse(upsample[None], truth[None], mask[None]).item()
    assert f_affine < 0.5, f"the affine method should reproduce a global change at full resolution: {f_affine}"
    assert f_affine < f_upsample / 20, (f_affine, f_upsample)
    bg = (mask == 0).expand_as(image)
    assert torch.equal(affine[bg], image[bg]) and torch.equal(upsample[bg], image[bg])


def test_small_images_go_to_the_network_directly() -> None:
    image, mask = _textured(120, 200), _rect_mask(120, 200)
    stub = GlobalColorChange()
    out = Harmonizer(stub, device="cpu", size=256)(image, mask)
    assert stub.calls == [(1, 3, 120, 200)]
    assert torch.equal(out, stub(image[None], mask[None])[0])


@pytest.mark.parametrize("size", [(120, 200), (700, 500)])
def test_soft_masks_blend_softly(size: tuple[int, int]) -> None:
    h, w = size
    image = _textured(h, w)
    mask = torch.linspace(0, 1, w).expand(1, h, w).clone()  # a ramp: soft everywhere
    out = Harmonizer(GlobalColorChange(), device="cpu", size=256)(image, mask)
    m = clean_mask(mask)
    expected = GlobalColorChange.change(image[None])[0] * m + image * (1 - m)
    assert (out - expected).abs().max() < 2e-3
    assert torch.equal(out[:, :, 0], image[:, :, 0])  # mask 0: unchanged


def test_empty_mask_returns_the_image_with_a_warning() -> None:
    image = _textured(300, 400)
    stub = GlobalColorChange()
    with pytest.warns(UserWarning, match="empty"):
        out = Harmonizer(stub, device="cpu")(image, torch.zeros(1, 300, 400))
    assert torch.equal(out, image) and stub.calls == []


def test_resize_keep_preserves_the_aspect_ratio() -> None:
    stub = GlobalColorChange()
    h = Harmonizer(stub, device="cpu", size=256, resize="keep")
    assert h.network_size(1500, 1000) == (256, 171)
    assert h.network_size(200, 100) == (200, 100)
    h(_textured(1500, 1000), _rect_mask(1500, 1000))
    assert stub.calls == [(1, 3, 256, 171)]


def test_harmonize_many_batches_and_matches_single_calls() -> None:
    stub = GlobalColorChange()
    h = Harmonizer(stub, device="cpu", size=128, batch_size=2)
    images = [_textured(300, 500, 0), _textured(640, 480, 1), _textured(100, 90, 2)]
    masks = [_rect_mask(*x.shape[-2:]) for x in images]
    outs = h.harmonize_many(images, masks)
    assert sorted(stub.calls) == sorted([(2, 3, 128, 128), (1, 3, 100, 90)])  # two 128x128 in one call
    for x, m, o in zip(images, masks, outs):
        assert o.shape == x.shape
        assert torch.allclose(o, h(x, m), atol=1e-6)


def test_real_models_at_any_size() -> None:
    model = harmonize.create_model("test_gknet")
    image, mask = _textured(300, 500), _rect_mask(300, 500)
    out = Harmonizer(model, device="cpu", size=128)(image, mask)
    bg = (mask == 0).expand_as(image)
    assert out.shape == image.shape and torch.isfinite(out).all() and torch.equal(out[bg], image[bg])
    out = harmonize.harmonize(image, mask, model="reinhard")
    assert not torch.equal(out, image) and torch.equal(out[bg], image[bg])


def test_bfloat16_on_the_cpu_is_within_one_level_of_float32() -> None:
    # Harmonizer(amp=True) runs the shipped GKNet in bfloat16 autocast on the CPU; the default
    # stays float32 there. A real bundled composite at the network's size.
    samples = Path(harmonize.__file__).parent / "assets" / "samples"
    comp = sorted((samples / "composite_images").glob("*.jpg"))[0]
    name, k, _ = comp.stem.rsplit("_", 2)
    image = resize_image(load_image(comp), (256, 256)).clamp(0, 1)
    mask = (resize_image(load_mask(samples / "masks" / f"{name}_{k}.png"), (256, 256)) >= 0.5).float()
    exact = Harmonizer("gknet", device="cpu")(image, mask)
    fast = Harmonizer("gknet", device="cpu", amp=True)(image, mask)
    diff = (fast - exact).abs()
    assert 0 < float(diff.max()) <= 1 / 255, float(diff.max()) * 255  # bf16 ran, and it is within 1/255
    bg = (mask == 0).expand_as(image)
    assert torch.equal(fast[bg], image[bg])


def test_model_names_are_loaded_once_and_need_weights() -> None:
    assert Harmonizer("reinhard").model is Harmonizer("reinhard").model
    if not harmonize.list_pretrained("gknet.*"):
        with pytest.raises(ValueError, match="no pretrained weights"):
            Harmonizer("gknet")
    with pytest.raises(ValueError, match="unknown model"):
        Harmonizer("no_such_model")
    with pytest.raises(ValueError, match="method"):
        Harmonizer("reinhard", method="bicubic")


def test_mismatched_mask_is_an_error() -> None:
    with pytest.raises(ValueError, match="same size"):
        Harmonizer(GlobalColorChange())(torch.rand(3, 40, 50), torch.ones(1, 40, 49))


# ----------------------------------------------------------------- the Python twin: input kinds


def _pil_pair(h: int = 96, w: int = 128) -> tuple[Image.Image, Image.Image]:
    x = (_textured(h, w).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    m = (_rect_mask(h, w)[0].numpy() * 255).astype(np.uint8)
    return Image.fromarray(x), Image.fromarray(m)


def test_pil_in_pil_out() -> None:
    img, mask = _pil_pair()
    out = harmonize.harmonize(img, mask, model=GlobalColorChange())
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == img.size
    a, o, m = np.asarray(img), np.asarray(out), np.asarray(mask)
    assert (a[m == 0] == o[m == 0]).all() and not (a[m == 255] == o[m == 255]).all()

    rgba = img.copy()
    rgba.putalpha(Image.fromarray(np.full((96, 128), 77, np.uint8)))
    out = harmonize.harmonize(rgba, mask, model=GlobalColorChange())
    assert out.mode == "RGBA" and (np.asarray(out)[..., 3] == 77).all()
    assert (np.asarray(out)[..., :3] == o).all(), "alpha is ignored"

    grey = harmonize.harmonize(img.convert("L"), mask, model=GlobalColorChange())
    assert grey.mode == "RGB" and grey.size == img.size


def test_paths_in_give_what_the_command_writes(tmp_path) -> None:
    from harmonize.cli import main

    comp = require(SAMPLE / "HCOCO" / "composite_images" / "c35030_1_1.jpg")
    mask = require(SAMPLE / "HCOCO" / "masks" / "c35030_1.png")
    assert main(["run", str(comp), str(mask), "-o", str(tmp_path / "cli.png"), "--quiet"]) == 0
    out = harmonize.harmonize(comp, str(mask))  # Path and str alike, the default model
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    cli = np.asarray(Image.open(tmp_path / "cli.png"))
    assert np.array_equal(np.asarray(out), cli), "the Python twin gives the command's pixels"
    composite = np.asarray(Image.open(comp))
    bg = np.asarray(Image.open(mask).convert("L")) < 128
    assert np.array_equal(cli[bg], composite[bg]) and not np.array_equal(cli[~bg], composite[~bg])
    with pytest.raises(harmonize.errors.ImageReadError, match="nope.jpg: no such file"):
        harmonize.harmonize(tmp_path / "nope.jpg", mask)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_numpy_in_numpy_out(dtype) -> None:
    img, mask = _pil_pair()
    a = np.asarray(img).astype(np.float64) / 255
    if dtype == np.uint8:
        a = np.asarray(img)
    elif dtype == np.uint16:
        a = np.rint(a * 65535).astype(np.uint16)
    else:
        a = a.astype(dtype)
    out = harmonize.harmonize(a, np.asarray(mask), model=GlobalColorChange())
    assert out.dtype == a.dtype and out.shape == a.shape
    bg = np.asarray(mask) == 0
    assert (out[bg] == a[bg]).all(), "background comes back bit for bit"
    rgba = np.concatenate([a, a[..., :1]], axis=2)
    out4 = harmonize.harmonize(rgba, np.asarray(mask), model=GlobalColorChange())
    assert out4.shape == rgba.shape and (out4[..., 3] == a[..., 0]).all()
    assert (out4[..., :3] == out).all()


@pytest.mark.parametrize("kind", ["0/1", "0/255", "bool", "rgb", "float", "tensor"])
def test_mask_kinds_agree(kind: str) -> None:
    img, mask = _pil_pair()
    m = np.asarray(mask)
    ref = np.asarray(harmonize.harmonize(img, mask, model=GlobalColorChange()))
    given = {
        "0/1": (m > 0).astype(np.uint8),
        "0/255": m,
        "bool": m > 0,
        "rgb": np.repeat(m[..., None], 3, axis=2),
        "float": (m > 0).astype(np.float32),
        "tensor": torch.from_numpy(m > 0),
    }[kind]
    out = np.asarray(harmonize.harmonize(img, given, model=GlobalColorChange()))
    assert (out == ref).all()


def test_tensor_in_tensor_out() -> None:
    image, mask = _textured(64, 96), _rect_mask(64, 96)
    out = harmonize.harmonize(image, mask, model=GlobalColorChange())
    assert isinstance(out, Tensor) and out.shape == image.shape and out.dtype == image.dtype
    batch = torch.stack([image, image.flip(-1)])
    outb = harmonize.harmonize(batch, mask[None].expand(2, -1, -1, -1), model=GlobalColorChange())
    assert outb.shape == batch.shape and torch.equal(outb[0], out)
    out64 = harmonize.harmonize(image.double(), mask[0], model=GlobalColorChange())
    assert out64.dtype == torch.float64


# ----------------------------------------------------------------- 16-bit RGB PNG


def _write_png16(path, a: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one), rows filtered with Sub and Up."""
    h, w, _ = a.shape
    raw = a.astype(">u2").tobytes()
    stride = w * 6
    rows = []
    prev = bytes(stride)
    for i in range(h):
        row = raw[i * stride : (i + 1) * stride]
        if i % 2:  # Up
            rows.append(b"\x02" + bytes((row[j] - prev[j]) % 256 for j in range(stride)))
        else:  # Sub
            rows.append(b"\x01" + bytes((row[j] - (row[j - 6] if j >= 6 else 0)) % 256 for j in range(stride)))
        prev = row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    path.write_bytes(png)


def test_16bit_rgb_png_keeps_its_precision(tmp_path) -> None:
    a = np.random.default_rng(0).integers(0, 65536, size=(9, 13, 3), dtype=np.uint16)
    _write_png16(tmp_path / "rgb16.png", a)
    t = load_image(tmp_path / "rgb16.png")
    assert t.shape == (3, 9, 13)
    assert torch.equal(t, torch.from_numpy(a.astype(np.float32) / 65535.0).permute(2, 0, 1))


# ----------------------------------------------------------------- uint8 all the way (12 MP in little memory)

HADOBE = SAMPLE / "HAdobe5k"
HADOBE_COMP, HADOBE_MASK = HADOBE / "composite_images" / "a0002_1_4.jpg", HADOBE / "masks" / "a0002_1.png"


def _hadobe_uint8(scale: int) -> tuple[Tensor, Tensor]:
    """The 12 MP HAdobe5k composite and mask shrunk ``scale`` times (the mask's edge goes soft): uint8 (3, H, W), (1, H, W)."""
    comp, mask = Image.open(require(HADOBE_COMP)), Image.open(require(HADOBE_MASK)).convert("L")
    size = (comp.width // scale, comp.height // scale)
    x = torch.from_numpy(np.asarray(comp.resize(size, Image.BILINEAR)).copy()).permute(2, 0, 1)
    m = torch.from_numpy(np.asarray(mask.resize(size, Image.BILINEAR)).copy())[None]
    return x, m


def test_load_uint8_is_the_float_image_times_255() -> None:
    x8, xf = load_image(require(HADOBE_COMP), uint8=True), load_image(HADOBE_COMP)
    assert x8.dtype == torch.uint8 and x8.shape == xf.shape == (3, 4256, 2832)
    assert torch.equal(x8.float() / 255, xf)
    m8, mf = load_mask(HADOBE_MASK, threshold=None, uint8=True), load_mask(HADOBE_MASK, threshold=None)
    assert m8.dtype == torch.uint8 and m8.shape == mf.shape == (1, 4256, 2832)  # an RGB mask file, channels equal
    assert torch.equal(m8.float() / 255, mf)


def test_load_uint8_keeps_16_bit_files_in_float(tmp_path) -> None:
    a = np.random.default_rng(0).integers(0, 65536, size=(9, 13, 3), dtype=np.uint16)
    _write_png16(tmp_path / "rgb16.png", a)
    t = load_image(tmp_path / "rgb16.png", uint8=True)
    assert t.dtype == torch.float32 and torch.equal(t, load_image(tmp_path / "rgb16.png"))


def test_uint8_resize_equals_the_float_resize_bit_for_bit() -> None:
    x, m = _hadobe_uint8(4)
    for t in (x, m):
        for size in [(256, 256), (256, 171), (t.shape[-2], 300)]:
            small = resize_image(t, size, max_strip_elems=20_000)  # many strips
            assert small.dtype == torch.float32 and torch.equal(small, resize_image(t.float() / 255, size))


def test_clean_mask_of_uint8_is_the_float_rule_on_every_value() -> None:
    v = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(clean_mask(v).float() / 255, clean_mask(v.float() / 255))
    assert mask_is_empty(torch.tensor([0, 3], dtype=torch.uint8)) and not mask_is_empty(torch.tensor([0, 4], dtype=torch.uint8))


@pytest.mark.parametrize("method", ["affine", "upsample"])
@pytest.mark.parametrize("scale", [4, 17])  # 17: 166 x 250, under 256: the network sees it directly
def test_uint8_path_is_the_float_path_rounded_on_hadobe5k(method: str, scale: int) -> None:
    x, m = _hadobe_uint8(scale)
    h = Harmonizer("reinhard", device="cpu", method=method)
    out = h.harmonize_many([x], [m])[0]
    ref = h.harmonize_many([x.float() / 255], [m.float() / 255])[0]
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert (out.float() - ref * 255).abs().max() <= 0.5 + 1e-3, "the float result, rounded"
    bg = (m == 0).expand_as(x)
    assert bg.any() and torch.equal(out[bg], x[bg]), "background bit for bit"
    soft = ((m > 0) & (m < 255)).expand_as(x)
    assert soft.any() and not torch.equal(out[soft], x[soft]), "soft edges blend"
    assert (out != x).float().mean() > 0.3, "the foreground changed"


def test_uint8_apply_writes_straight_into_uint8() -> None:
    x, m = _hadobe_uint8(8)
    low = resize_image(x[None], (64, 64))
    coeffs = fit_color_transform(low, GlobalColorChange.change(low))
    for strip in (1 << 20, 5_000):
        out = apply_color_transform(x[None], coeffs, m[None], max_strip_elems=strip)[0]
        ref = apply_color_transform(x[None].float() / 255, coeffs, m[None].float() / 255)[0]
        assert out.dtype == torch.uint8 and torch.equal(out, ref.mul(255).round().to(torch.uint8))


def test_models_loaded_by_name_run_in_their_fastest_layout_and_passed_ones_keep_theirs():
    # GKNet runs channels-last on the CPU (1.16x float32, 1.57x bfloat16), HDNet contiguous
    # (channels-last is 1.12x slower for it): docs/benchmarks.md. The results are the same.
    from harmonize.utils.device import memory_format_of, preferred_memory_format

    samples = Path(harmonize.__file__).parent / "assets" / "samples"
    name = sorted((samples / "composite_images").iterdir())[0].name
    image = load_image(samples / "composite_images" / name)
    mask = load_mask(samples / "masks" / (name.rsplit("_", 1)[0] + ".png"))
    by_name = Harmonizer("gknet")
    assert memory_format_of(by_name.model) == torch.channels_last
    assert memory_format_of(Harmonizer("hdnet").model) == torch.contiguous_format
    passed = harmonize.create_model("gknet", pretrained=True)
    by_module = Harmonizer(passed)
    assert memory_format_of(passed) == torch.contiguous_format  # not changed behind the caller's back
    fast, plain = by_name(image, mask), by_module(image, mask)
    assert fast.is_contiguous() and fast.shape == plain.shape == image.shape
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)
    assert float((fast - image).abs().max()) > 0.05  # the network changed the foreground
    assert preferred_memory_format(passed, torch.device("cuda")) == torch.contiguous_format
