"""Plot a training run: loss, learning rate and evaluation scores over the steps, to a PNG.

A run folder of ``harmonize train`` holds ``log.csv`` (``step, loss, lr, images_per_s,
time``, one row every ``log_every`` steps) and, when it evaluates, ``eval.jsonl`` (one JSON
object per evaluation: ``step``, ``overall/fmse``, ``overall/psnr``, ...). :func:`plot_run`
draws one panel per quantity, side by side:

- **loss**: the logged values (thin) and their moving average (thick), log scale;
- **learning rate**;
- **eval** (when ``eval.jsonl`` has rows): foreground MSE (left axis) and PSNR (right axis).

A run that was resumed logs some steps twice; the last row of each step wins. A row cut short
by a run still writing is skipped. Needs matplotlib (``pip install "harmonize[plot]"``).

Example:
    >>> from harmonize.plot import plot_run
    >>> plot_run("runs/gknet_p5", "gknet_p5.png")
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInputError, UsageError
from .utils.files import atomic_write_bytes

__all__ = ["RunLog", "read_run", "plot_run", "plot_runs", "PANEL_SIZE", "DPI"]

#: Inches of one panel (width, height) and the resolution: a panel is 460 x 360 pixels.
PANEL_SIZE = (4.6, 3.6)
DPI = 100
INSTALL_HINT = 'pip install "harmonize[plot]"'


@dataclass
class RunLog:
    """The logged series of a run, each sorted by step."""

    path: Path
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_fmse: list[float] = field(default_factory=list)
    eval_psnr: list[float] = field(default_factory=list)


def _float(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def read_run(run: str | os.PathLike) -> RunLog:
    """Read ``log.csv`` and, if there, ``eval.jsonl`` of a run folder (or a ``log.csv`` path)."""
    p = Path(run)
    if p.is_file() and p.name == "log.csv":
        p = p.parent
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such run folder")
    if not p.is_dir():
        raise NotADirectoryError(f"{p}: not a run folder (give the folder holding log.csv)")
    log = p / "log.csv"
    if not log.is_file():
        raise InvalidInputError(f"{p}: no log.csv; is it a run folder of harmonize train?")
    rows: dict[int, tuple[float, float]] = {}
    with log.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames or "loss" not in reader.fieldnames:
            raise InvalidInputError(f"{log}: needs the columns step and loss, has {reader.fieldnames}")
        for row in reader:
            step = _float(row.get("step"))
            if math.isnan(step):
                continue  # a row cut short
            rows[int(step)] = (_float(row.get("loss")), _float(row.get("lr")))
    if not rows:
        raise InvalidInputError(f"{log}: no rows yet")
    out = RunLog(p)
    for step in sorted(rows):
        out.steps.append(step)
        out.loss.append(rows[step][0])
        out.lr.append(rows[step][1])
    evals: dict[int, tuple[float, float]] = {}
    ev = p / "eval.jsonl"
    if ev.is_file():
        for line in ev.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict) and "step" in d:
                evals[int(d["step"])] = (_float(d.get("overall/fmse")), _float(d.get("overall/psnr")))
    for step in sorted(evals):
        out.eval_steps.append(step)
        out.eval_fmse.append(evals[step][0])
        out.eval_psnr.append(evals[step][1])
    return out


def _moving_average(values: list[float], width: int) -> list[float]:
    """Trailing mean over ``width`` values (fewer at the start), NaNs skipped."""
    out, window = [], []
    for v in values:
        window.append(v)
        if len(window) > width:
            window.pop(0)
        good = [x for x in window if not math.isnan(x)]
        out.append(sum(good) / len(good) if good else math.nan)
    return out


def _figure(n: int, out: Path):
    """A Figure of ``n`` panels side by side, for a PNG at ``out``."""
    if out.suffix.lower() != ".png":
        raise UsageError(f"{out}: the plot is written as PNG; name it *.png")
    try:
        import matplotlib
    except ImportError as e:
        raise UsageError(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from e
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL_SIZE[0] * n, PANEL_SIZE[1]), dpi=DPI, layout="constrained")
    return fig, fig.subplots(1, n)


def _save(fig, out: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(out, buf.getvalue())
    return out


def plot_runs(runs: list[str | os.PathLike], out: str | os.PathLike, title: str | None = None,
              labels: list[str] | None = None) -> Path:
    """Compare runs: their training loss (moving average) and their evaluation fMSE over the steps.

    Args:
        runs: run folders, one colour each.
        out: the PNG to write (two panels, 920 x 360 pixels); written atomically.
        title: the figure's title (None: none).
        labels: the legend's names (None: the folders' names).
    """
    logs = [read_run(r) for r in runs]
    labels = labels or [log.path.name for log in logs]
    if len(labels) != len(logs):
        raise UsageError(f"{len(labels)} labels for {len(logs)} runs")
    out = Path(out)
    fig, (loss_ax, eval_ax) = _figure(2, out)
    for i, (log, label) in enumerate(zip(logs, labels)):
        colour = f"C{i % 10}"
        width = 1 if len(log.loss) < 6 else max(3, len(log.loss) // 20)
        loss_ax.plot(log.steps, _moving_average(log.loss, width), color=colour, linewidth=1.5, label=label)
        if log.eval_steps:
            eval_ax.plot(log.eval_steps, log.eval_fmse, "o-", color=colour, markersize=3, label=label)
    loss_ax.set(title="training loss (moving average)", xlabel="step")
    eval_ax.set(title="evaluation fMSE (lower is better)", xlabel="step")
    eval_ax.ticklabel_format(axis="y", useOffset=False)
    loss_ax.legend(loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_run(run: str | os.PathLike, out: str | os.PathLike | None = None, title: str | None = None) -> Path:
    """Draw a run's loss, learning rate and eval scores over the steps into a PNG.

    Args:
        run: the run folder (holding ``log.csv``, perhaps ``eval.jsonl``).
        out: the PNG to write (None: ``RUN/plot.png``); written atomically.
        title: the figure's title (None: the folder's name, last step and loss).

    Returns:
        The path written. The image is ``PANEL_SIZE * DPI`` per panel: 3 panels (1380 x 360
        pixels) with evaluations, 2 (920 x 360) without.
    """
    log = read_run(run)
    out = Path(out) if out is not None else log.path / "plot.png"
    has_eval = any(not math.isnan(v) for v in log.eval_fmse + log.eval_psnr)
    n = 3 if has_eval else 2
    fig, axes = _figure(n, out)

    ax = axes[0]
    width = 1 if len(log.loss) < 6 else max(3, len(log.loss) // 20)
    ax.plot(log.steps, log.loss, color="tab:blue", alpha=0.35, linewidth=0.8, label="logged")
    ax.plot(log.steps, _moving_average(log.loss, width), color="tab:blue", linewidth=2, label=f"mean of {width}")
    good = [v for v in log.loss if not math.isnan(v)]
    if good and min(good) > 0 and max(good) / min(good) > 10:  # a log scale only for a wide range
        ax.set_yscale("log")
    ax.set(title="training loss", xlabel="step")
    ax.legend(loc="upper right", fontsize="small")

    ax = axes[1]
    ax.plot(log.steps, log.lr, color="tab:orange", linewidth=1.5)
    ax.set(title="learning rate", xlabel="step")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    if has_eval:
        ax = axes[2]
        ax.plot(log.eval_steps, log.eval_fmse, "o-", color="tab:red", markersize=3, label="fMSE")
        ax.set(title="evaluation", xlabel="step")
        ax.set_ylabel("fMSE (lower is better)", color="tab:red")
        twin = ax.twinx()
        twin.plot(log.eval_steps, log.eval_psnr, "s--", color="tab:green", markersize=3, label="PSNR")
        twin.set_ylabel("PSNR dB (higher is better)", color="tab:green")
        twin.ticklabel_format(axis="y", useOffset=False)
        ax.ticklabel_format(axis="y", useOffset=False)
    last = f"step {log.steps[-1]}, loss {log.loss[-1]:.4g}"
    fig.suptitle(title if title is not None else f"{log.path.name}: {last}")
    return _save(fig, out)
