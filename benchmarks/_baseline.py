"""The baseline side of the benchmarks that compare this checkout with an earlier commit.

The earlier code is extracted with ``git archive`` into a folder and put first on
``PYTHONPATH`` of fresh processes; this checkout runs the same way, so both sides pay the
same start-up. The default baseline is commit ``14ca5a0``: harmonize 0.1 as the issue
"Fast from the first keystroke" measured it.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tarfile
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


def run_python(code: str, pythonpath: Path, cwd: Path, threads: int = 2, check: bool = True) -> tuple[float, float, str]:
    """Run ``code`` in a fresh interpreter: (wall seconds, peak resident GB of that child, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if check and p.returncode != 0:
        raise RuntimeError(f"{code!r} under {pythonpath} failed:\n{p.stderr[-2000:]}")
    # ru_maxrss of children is the largest of any child so far: exact for a child that sets a new peak
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 2**20
    return wall, peak, p.stdout


def load_average() -> str:
    """The 1-minute load average, for the header of a benchmark's output."""
    return f"{os.getloadavg()[0]:.2f}"
