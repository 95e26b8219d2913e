from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LABELME = SHARED_DATA / "labelme-harmony"
SAMPLE = SHARED_DATA / "iharmony4-sample"


# Small tensors gain nothing from a second thread, and a training run may hold the other core.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (CI places ../shared beside the repository)")
    return path


@pytest.fixture
def labelme() -> Path:
    return require(LABELME)


@pytest.fixture
def sample_root() -> Path:
    return require(SAMPLE)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip cleanly on a machine without a CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
