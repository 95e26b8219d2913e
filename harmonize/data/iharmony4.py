"""Datasets in the iHarmony4 layout.

``SUBSET/composite_images/NAME_K_J.jpg``, ``SUBSET/masks/NAME_K.png``,
``SUBSET/real_images/NAME.jpg`` and ``SUBSET/SUBSET_train.txt`` / ``SUBSET_test.txt``
listing composite file names. ``root`` is either a folder holding subset folders
(``HCOCO``, ``HAdobe5k``, ...) or a subset folder itself (its list files at its top).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InvalidInputError
from .io import load_image, load_mask

__all__ = ["OFFICIAL_SUBSETS", "Triplet", "find_subsets", "read_triplets", "IHarmony4Dataset"]

OFFICIAL_SUBSETS = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night")
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".tif", ".webp")


@dataclass(frozen=True)
class Triplet:
    """The three files of one composite."""

    subset: str
    name: str  # composite file stem, NAME_K_J
    composite: Path
    mask: Path
    real: Path


def _list_file(folder: Path, subset: str, split: str) -> Path:
    return folder / f"{subset}_{split}.txt"


def find_subsets(root: str | os.PathLike, split: str = "test") -> dict[str, Path]:
    """Subset name -> its folder, for every subset under ``root`` with a ``SUBSET_{split}.txt``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    found = {}
    for lst in sorted(root.glob(f"*_{split}.txt")):
        found[lst.name[: -len(f"_{split}.txt")]] = root
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if _list_file(sub, sub.name, split).is_file():
            found[sub.name] = sub
    return found


def _with_suffix(path: Path) -> Path:
    """``path`` if it exists, else the same stem with another image suffix, else ``path``."""
    if path.exists():
        return path
    for s in _IMAGE_SUFFIXES:
        alt = path.with_suffix(s)
        if alt.exists():
            return alt
    return path


def read_triplets(folder: Path, subset: str, split: str, check: bool = True) -> list[Triplet]:
    """Parse ``SUBSET_{split}.txt`` of ``folder`` into triplets; missing files are errors."""
    lst = _list_file(folder, subset, split)
    if not lst.is_file():
        raise FileNotFoundError(f"{lst}: list file not found")
    entries = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not entries:
        raise ValueError(f"{lst}: the list is empty")
    out = []
    for entry in entries:
        rel = Path(entry)
        if len(rel.parts) > 1:  # "SUBSET/composite_images/x.jpg" (the official IHD lists)
            base = folder.parent if rel.parts[0] == folder.name else folder
            comp = base / rel
            sub_folder = comp.parent.parent
        else:
            comp = folder / "composite_images" / rel.name
            sub_folder = folder
        stem = comp.stem
        parts = stem.rsplit("_", 2)
        if len(parts) != 3:
            raise ValueError(f"{lst}: entry {entry!r} is not named NAME_K_J")
        name, k, _ = parts
        mask = _with_suffix(sub_folder / "masks" / f"{name}_{k}.png")
        real = _with_suffix(sub_folder / "real_images" / f"{name}.jpg")
        comp = _with_suffix(comp)
        if check:
            for p in (comp, mask, real):
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: listed by {lst} but not found")
        out.append(Triplet(subset, stem, comp, mask, real))
    return out


class IHarmony4Dataset(Dataset):
    """Composite, mask and real image triplets from one or several iHarmony4-layout subsets.

    Args:
        root: folder of subset folders, or a subset folder itself.
        subsets: subset names to read (``None``: every subset found for ``split``).
        split: ``"train"`` or ``"test"`` (any ``SUBSET_{split}.txt`` works).
        transform: a paired transform called as ``transform(sample, generator)``.
        mask_threshold: masks are binarised at this fraction (iHarmony4 masks are 0/255).
        cache: keep decoded images in memory after the first read.

    Returns (per item):
        dict with ``composite`` (3, H, W), ``mask`` (1, H, W), ``real`` (3, H, W), float32 in
        0..1, and ``name``, ``subset``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        subsets: Sequence[str] | None = None,
        split: str = "train",
        transform: Callable | None = None,
        mask_threshold: float = 0.5,
        cache: bool = False,
    ) -> None:
        self.root = Path(root)
        available = find_subsets(self.root, split)
        names = list(subsets) if subsets else list(available)
        if not names:
            raise FileNotFoundError(f"{self.root}: no *_{split}.txt list found (not an iHarmony4-layout folder)")
        missing = [s for s in names if s not in available]
        if missing:
            raise FileNotFoundError(
                f"{self.root}: no {split} list for subset(s) {missing}; found: {sorted(available) or 'none'}"
            )
        self.subsets = names
        self.split = split
        self.triplets: list[Triplet] = []
        for s in names:
            self.triplets += read_triplets(available[s], s, split)
        self.transform = transform
        self.mask_threshold = mask_threshold
        self._cache: dict[int, tuple[Tensor, Tensor, Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.triplets)

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """(composite, mask, real) of item ``index`` at full resolution, untransformed."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        t = self.triplets[index]
        comp, mask, real = load_image(t.composite), load_mask(t.mask, self.mask_threshold), load_image(t.real)
        for label, x in (("composite", comp), ("mask", mask)):
            if x.shape[-2:] != real.shape[-2:]:
                raise InvalidInputError(
                    f"{getattr(t, label)}: size {tuple(x.shape[-2:])} differs from the real image's {tuple(real.shape[-2:])}"
                )
        if self._cache is not None:
            self._cache[index] = (comp, mask, real)
        return comp, mask, real

    def __getitem__(self, index: int) -> dict:
        comp, mask, real = self.load(index)
        sample = {"composite": comp, "mask": mask, "real": real}
        if self.transform is not None:
            sample = self.transform(sample, None)
        t = self.triplets[index]
        return {**sample, "name": t.name, "subset": t.subset}
