"""``harmonize export``: ONNX graphs with dynamic batch, height and width that match PyTorch."""

from __future__ import annotations

import importlib

import pytest
import torch

import harmonize
from harmonize.cli import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from harmonize.export import (  # noqa: E402
    _kernel_modulation_ops,
    _local_dynamic_unchunked,
    export_friendly,
    export_onnx,
    verify_onnx,
)


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
    if not harmonize.list_pretrained("gknet.*"):
        assert main(["export", "gknet", "-o", str(tmp_path / "g.onnx")]) == 2
        assert "no pretrained weights" in capsys.readouterr().err
    assert not (tmp_path / "g.onnx").exists()


def test_export_friendly_ops_equal_the_originals() -> None:
    from harmonize.layers import kernel_modulation, local_dynamic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 9, 11, generator=g)
    for kernels in (torch.randn(2, 45, 9, 11, generator=g), torch.randn(2, 9, 9, 11, generator=g)):
        assert torch.allclose(_kernel_modulation_ops(x, kernels, 3), kernel_modulation(x, kernels, 3), atol=1e-5)
    f = torch.randn(2, 8, 6, 7, generator=g)
    mask = torch.zeros(2, 1, 48, 56)
    mask[0, :, 8:30, 10:40] = 1
    mask[1, :, 20:, :] = 1
    for k in (1, 3):
        assert torch.allclose(_local_dynamic_unchunked(f, f, mask, k), local_dynamic(f, f, mask, k, chunk_size=5), atol=1e-6)
    gk = importlib.import_module("harmonize.models.gknet")
    ld = importlib.import_module("harmonize.layers.local_dynamic")
    before = (gk.kernel_modulation, gk.pad_to_multiple, ld.local_dynamic)
    with export_friendly():
        assert gk.kernel_modulation is _kernel_modulation_ops and ld.local_dynamic is _local_dynamic_unchunked
    assert (gk.kernel_modulation, gk.pad_to_multiple, ld.local_dynamic) == before
