"""``harmonize export``: ONNX graphs with dynamic batch, height and width that match PyTorch."""

from __future__ import annotations

import pytest
import torch

import harmonize
from harmonize.cli import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from harmonize.export import export_onnx, verify_onnx  # noqa: E402


def _randomized(name: str) -> torch.nn.Module:
    """A tiny model whose output differs from its input (GKNet's head starts at zero)."""
    torch.manual_seed(0)
    model = harmonize.create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", ["test_gknet", "test_hdnet"])
def test_onnx_matches_pytorch_at_other_sizes(tmp_path, name: str) -> None:
    model = _randomized(name)
    report: dict = {}
    path = export_onnx(model, tmp_path / f"{name}.onnx", size=64, report=report)
    assert report["max_abs_diff"] <= 1e-4 and report["check_shape"] == (1, 3, 200, 328)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image", "mask"] and graph.output[0].name == "harmonized"
    assert _dims(graph.input[0]) == ["batch", 3, "height", "width"]
    assert _dims(graph.output[0]) == ["batch", 3, "height", "width"]
    for shape in [(2, 96, 160), (1, 37, 53)]:  # other batch sizes, odd sizes
        assert verify_onnx(model, path, shape) <= 1e-4
    x = torch.rand(1, 3, 200, 328)
    with torch.no_grad():
        moved = model(x, torch.ones(1, 1, 200, 328))
    assert (moved - x).abs().max() > 1e-3, "the check compares a model that changes the image"


def test_export_command(tmp_path, capsys) -> None:
    out = tmp_path / "composite.onnx"
    assert main(["export", "composite", "--format", "onnx", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert out.is_file() and "max |difference|" in stdout and "1x3x200x328" in stdout
    rc = main(["export", "composite", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--overwrite" in err and "Traceback" not in err
    assert main(["export", "composite", "-o", str(tmp_path / "c.pt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert "gknet_large" not in {n.split(".")[0] for n in harmonize.list_pretrained()}
    assert main(["export", "gknet_large", "-o", str(tmp_path / "g.onnx")]) == 2
    assert "no pretrained weights" in capsys.readouterr().err
    assert not (tmp_path / "g.onnx").exists()
    # arguments are checked before a model loads
    assert main(["export", "gknet", "-o", str(tmp_path / "g.onnx"), "--opset", "99"]) == 2
    assert "--opset must be between" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["export", "composite", "-o", str(tmp_path / "file" / "c.onnx")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_layers_take_their_traceable_path_when_exportable() -> None:
    from harmonize.layers import kernel_modulation, local_dynamic
    from harmonize.models._base import pad_to_multiple

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 9, 11, generator=g)
    f = torch.randn(2, 8, 6, 7, generator=g)
    mask = torch.zeros(2, 1, 48, 56)
    mask[0, :, 8:30, 10:40] = 1
    mask[1, :, 20:, :] = 1
    kernels = [torch.randn(2, 45, 9, 11, generator=torch.Generator().manual_seed(1)), torch.randn(2, 9, 9, 11, generator=g)]
    eager_km = [kernel_modulation(x, k, 3) for k in kernels]
    eager_ld = [local_dynamic(f, f, mask, k, chunk_size=5) for k in (1, 3)]
    square = torch.randn(1, 3, 32, 32)
    assert pad_to_multiple(square, 16) is square  # eager: the shortcut
    assert not harmonize.is_exportable()
    with harmonize.exportable():
        assert harmonize.is_exportable()
        for k, ref in zip(kernels, eager_km):
            out = kernel_modulation(x, k, 3)
            assert out.grad_fn is None or "KernelModulationFn" not in type(out.grad_fn).__name__
            assert torch.allclose(out, ref, atol=1e-5)
        for k, ref in zip((1, 3), eager_ld):
            assert torch.allclose(local_dynamic(f, f, mask, k, chunk_size=5), ref, atol=1e-6)
        padded = pad_to_multiple(square, 16)
        assert padded is not square and torch.equal(padded, square)  # pads by zero rows: no size test
    assert not harmonize.is_exportable()
    # a kernel modulation that needs gradients shows which path ran
    xg = x.clone().requires_grad_()
    assert "KernelModulation" in type(kernel_modulation(xg, kernels[0], 3).grad_fn).__name__
    with harmonize.exportable():
        assert "KernelModulation" not in type(kernel_modulation(xg, kernels[0], 3).grad_fn).__name__


def test_export_patches_no_module() -> None:
    import inspect

    import harmonize.export as export

    source = inspect.getsource(export)
    assert "sys.modules" not in source and "setattr(" not in source
