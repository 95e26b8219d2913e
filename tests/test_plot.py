"""``harmonize plot`` and :func:`harmonize.plot.plot_run` on a tiny run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from harmonize.cli import main  # noqa: E402
from harmonize.errors import InvalidInputError  # noqa: E402
from harmonize.plot import DPI, PANEL_SIZE, plot_run, read_run  # noqa: E402

PANEL = (round(PANEL_SIZE[0] * DPI), round(PANEL_SIZE[1] * DPI))


def _run(root: Path, evals: bool = True) -> Path:
    root.mkdir()
    rows = ["step,loss,lr,images_per_s,time"]
    rows += [f"{s},{0.1 / (1 + s / 50):.5f},{1e-4 * min(1, s / 40):.3g},12.5,{1.7e9 + s}" for s in range(10, 210, 10)]
    rows += ["100,0.05,1e-4,12.5,1.7e9", "210,0.0"]  # a resumed run logs step 100 again; a row cut short
    (root / "log.csv").write_text("\n".join(rows))
    if evals:
        lines = [json.dumps({"step": s, "overall/fmse": 900 - 2 * s, "overall/psnr": 25 + s / 100, "overall/mse": 1.0})
                 for s in (50, 100, 200)]
        (root / "eval.jsonl").write_text("\n".join(lines) + "\n{\"step\": 25")  # the last line half written
    return root


def test_read_run_keeps_the_last_row_of_each_step(tmp_path):
    log = read_run(_run(tmp_path / "run"))
    assert log.steps == sorted(set(log.steps)) and len(log.steps) == 21
    assert log.loss[log.steps.index(100)] == 0.05
    assert log.eval_steps == [50, 100, 200] and log.eval_fmse[-1] == 500 and log.eval_psnr[0] == 25.5


def test_plot_with_and_without_evaluations(tmp_path):
    out = plot_run(_run(tmp_path / "run"), tmp_path / "a.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (3 * PANEL[0], PANEL[1])
    out = plot_run(_run(tmp_path / "run2", evals=False))
    assert out == tmp_path / "run2" / "plot.png"
    with Image.open(out) as im:
        assert im.size == (2 * PANEL[0], PANEL[1])


def test_command(tmp_path, capsys):
    run = _run(tmp_path / "run")
    assert main(["plot", str(run), "-o", str(tmp_path / "p.png")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "p.png").stat().st_size > 10_000

    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no log.csv"):
        plot_run(tmp_path / "empty")
    for argv, expect in (
        ([str(tmp_path / "empty")], "no log.csv"),
        ([str(tmp_path / "nope")], "no such run folder"),
        ([str(run), "-o", str(tmp_path / "p.jpg")], "PNG"),
    ):
        assert main(["plot", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expect in err, err


def test_comparing_runs_draws_each_in_its_own_colour(tmp_path, capsys):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", evals=False)
    out = tmp_path / "cmp.png"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (2 * PANEL[0], PANEL[1])
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # matplotlib's C0 and C1: one per run
    assert main(["plot", str(a), str(b)]) == 2
    assert "needs -o" in capsys.readouterr().err
