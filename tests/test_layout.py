"""The architecture of the package: the library never imports its command line, and the
command line parses before it imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "harmonize"


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_import_harmonize_imports_no_cli_and_no_torch():
    out = _run("import sys, harmonize; print(sorted(m for m in sys.modules if m.startswith('harmonize.cli') or m in ('torch', 'timm')))")
    assert out == "[]"


def test_create_model_does_not_import_the_cli():
    code = (
        "import sys, harmonize; harmonize.create_model('test_gknet'); harmonize.Harmonizer('composite');"
        "import harmonize.evaluate, harmonize.export, harmonize.demo, harmonize.train, harmonize.folders;"
        "print([m for m in sys.modules if m.startswith('harmonize.cli')])"
    )
    assert _run(code) == "[]"


def test_running_the_shipped_models_imports_neither_timm_nor_torchvision():
    # timm pulls torchvision and torch._dynamo: about half of a whole `harmonize run` (benchmarks/startup.py)
    code = (
        "import sys, torch, harmonize\n"
        "for name in ('gknet', 'hdnet', 'gknet_large'):\n"
        "    harmonize.create_model(name).eval()(torch.rand(1, 3, 64, 64), torch.ones(1, 1, 64, 64))\n"
        "print([m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules])"
    )
    assert _run(code) == "[]"


def test_help_imports_no_torch():
    code = (
        "import sys\nfrom harmonize.cli import build_parser\nbuild_parser()\n"
        "print([m for m in ('torch', 'timm', 'numpy', 'PIL') if m in sys.modules])"
    )
    assert _run(code) == "[]"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package += ".__init__"
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
                names += [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif node.module:
                names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize(
    "path", sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py"), ids=str
)
def test_no_library_module_imports_the_cli(path):
    bad = [n for n in _imports(path) if n == "harmonize.cli" or n.startswith("harmonize.cli.")]
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_cli_choices_equal_the_library_constants():
    from harmonize.cli import evaluate, export, run, train
    from harmonize.export import DEFAULT_OPSET
    from harmonize.highres import METHODS, RESIZE_MODES
    from harmonize.highres.harmonizer import MAX_NETWORK_SIZE
    from harmonize.metrics import PRESETS
    from harmonize.train.config import AMP_MODES, SCHEDULES

    assert run._METHODS == METHODS and run._RESIZE_MODES == RESIZE_MODES
    assert run._MAX_SIZE == export.MAX_SIZE == MAX_NETWORK_SIZE
    assert set(evaluate._PRESETS) == set(PRESETS)
    assert export.DEFAULT_OPSET == DEFAULT_OPSET
    assert train._SCHEDULES == SCHEDULES and train._AMP_MODES == AMP_MODES


def test_user_errors_are_one_line_and_bugs_stay_tracebacks(capsys, monkeypatch):
    from harmonize.cli import list as list_cmd
    from harmonize.cli import main

    def bug(args):
        raise ValueError("a programming error")

    monkeypatch.setattr(list_cmd, "main", bug)
    with pytest.raises(ValueError, match="a programming error"):
        main(["list"])  # not turned into exit code 2: a bug is not a user error
    monkeypatch.undo()
    assert main(["evaluate", "nope", "--data", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
