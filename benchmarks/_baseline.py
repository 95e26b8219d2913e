"""The baseline side of the benchmarks that compare this checkout with an earlier commit.

The earlier code is extracted with ``git archive`` into a folder and put first on
``PYTHONPATH`` of fresh processes; this checkout runs the same way, so both sides pay the
same start-up. The default baseline is commit ``14ca5a0``: harmonize 0.1 as the issue
"Fast from the first keystroke" measured it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "14ca5a0"


def extract(commit: str, dest: Path) -> Path:
    """Write the ``harmonize`` package of ``commit`` under ``dest``; returns ``dest``."""
    data = subprocess.run(["git", "archive", commit, "harmonize"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def cli_code(args: list[str]) -> str:
    """Python source calling the command line with ``args`` (any version's ``harmonize.cli.main``)."""
    return f"import sys\nfrom harmonize.cli import main\ntry:\n    main({args!r})\nexcept SystemExit as e:\n    sys.exit(e.code)\n"


def run_python(code: str, pythonpath: Path, cwd: Path, threads: int | None = 2, check: bool = True) -> tuple[float, float, str]:
    """Run ``code`` in a fresh interpreter: (wall seconds, peak resident GB of that process, stdout).

    ``threads`` sets ``OMP_NUM_THREADS`` (None: as the caller's environment has it). The peak is
    the child's own ``ru_maxrss`` (from ``os.wait4``).
    """
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if check and os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{code!r} under {pythonpath} failed:\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e9, stdout  # ru_maxrss is in kilobytes on Linux


def load_average() -> str:
    """The 1-minute load average, for the header of a benchmark's output."""
    return f"{os.getloadavg()[0]:.2f}"
