"""A robustness test list: the dev test photos recomposited by families training never sees.

The listed test composites (LabelMe's 200) come from the same kind of recolouring as the
training composites. This second list takes the same 200 photos (their real images and
masks; never a training photo) and makes their composites by the families held out of
training:

- held out, for this list only (:data:`~harmonize.data.families.HELDOUT_FAMILIES`):
  ``stat_idt`` (iterative distribution transfer), ``relight`` (colour temperature,
  intensity, flat vs hard light, gradient or cast shadow) and ``local_variation`` (smooth
  spatial changes);
- training may use (:data:`~harmonize.data.families.TRAIN_FAMILIES`): ``global_edit``,
  ``stat_lab``, ``stat_histogram``, and the methods of
  :class:`~harmonize.data.CompositeSynthesizer` (Lab, RGB mean/covariance, histogram,
  retouch). The RGB mean/covariance map is IDT's nearest relative (it matches the first two
  moments of the same 3-D distribution IDT matches in full), so ``stat_idt`` is the mildest
  shift of the three; ``relight`` and ``local_variation`` change the light and vary in
  space, which no training method does.

A model trained with any held-out family no longer measures robustness on this list.
Every composite is made on the fly from ``(seed, photo, family)`` alone: two datasets
built with the same seed are identical, and nothing is stored.

One more name, :data:`UNEDITED` (``"unedited"``), gives each photo unchanged, its composite
the real image itself: there is nothing to correct, and a model's fMSE there is what it
changes in a foreground that already fits (``harmonize evaluate --split unedited``).
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .families import HELDOUT_FAMILIES, FamilySynthesizer, check_families
from .iharmony4 import IHarmony4Dataset, Triplet, find_subsets, read_triplets

__all__ = ["RobustnessDataset", "UNEDITED"]

#: The pseudo-family of unchanged photos: composite = real.
UNEDITED = "unedited"

_logger = logging.getLogger(__name__)


class RobustnessDataset(Dataset):
    """Every test photo under every chosen family: ``photos x families`` composites, made on the fly.

    Item ``i`` is photo ``i // len(families)`` under family ``i % len(families)``. Its
    composite is drawn by :class:`~harmonize.data.FamilySynthesizer` restricted to that
    family (so it differs from the real photo by at least ``min_change``), with another test
    photo's foreground as the reference, from a generator seeded by ``seed``, the photo's
    mask name and the family name only. Test photos whose real image is also in the
    ``SUBSET_train.txt`` list beside them are left out (LabelMe has none).

    ``subset`` of an item is ``"SUBSET/family"``, so the evaluation code's per-subset table
    (:func:`harmonize.evaluate.evaluate`) reports every family; :meth:`indices_of` scores one.

    Args:
        root: iHarmony4-layout folder, as for :class:`~harmonize.data.IHarmony4Dataset`.
        subsets: subsets to read (``None``: every subset with a test list).
        families: names in :data:`~harmonize.data.FAMILIES` (default: the held-out ones), or
            :data:`UNEDITED`.
        seed: seed of every draw.
        split: the list whose photos are used.
        min_change: see :class:`~harmonize.data.FamilySynthesizer`.

    Returns (per item):
        dict with ``composite`` (3, H, W), ``mask`` (1, H, W), ``real`` (3, H, W), float32 in
        0..1, ``name`` (``MASKNAME_family``), ``subset`` (``SUBSET/family``) and ``family``.

    Example:
        >>> robust = RobustnessDataset("../shared/data/labelme-harmony", seed=0)
        >>> len(robust)   # 200 photos x 3 held-out families
        600
        >>> summary, records = evaluate(model, robust)
        >>> relight = summary["subsets"].get("LabelMe/relight")
    """

    def __init__(
        self,
        root: str | os.PathLike,
        subsets: Sequence[str] | None = None,
        families: Sequence[str] = HELDOUT_FAMILIES,
        seed: int = 0,
        split: str = "test",
        min_change: float = 0.02,
    ) -> None:
        named = [f for f in families if f != UNEDITED]
        if named or not families:
            check_families(named)  # a clear error for an unknown name or an empty list
        self.families = tuple(families)
        self.seed = seed
        self.base = IHarmony4Dataset(root, subsets, split=split, cache=True)
        train_lists = find_subsets(root, "train")
        seen: set[str] = set()
        for s in self.base.subsets:
            if s in train_lists:
                seen |= {str(t.real.resolve()) for t in read_triplets(train_lists[s], s, "train", check=False)}
        self.photos: list[int] = []  # base index of each photo (one per mask)
        masks: set[str] = set()
        for i, t in enumerate(self.base.triplets):
            if str(t.real.resolve()) in seen:
                _logger.warning("%s: also a training photo, left out of the robustness list", t.real)
            elif str(t.mask) not in masks:
                masks.add(str(t.mask))
                self.photos.append(i)
        if len(self.photos) < 2:
            raise ValueError(f"{root}: a robustness list needs at least 2 test photos, found {len(self.photos)}")
        self.synthesizers = {f: FamilySynthesizer([f], min_change=min_change) for f in named}

    def __len__(self) -> int:
        return len(self.photos) * len(self.families)

    def triplet(self, index: int) -> Triplet:
        """The test triplet whose real image and mask item ``index`` uses."""
        return self.base.triplets[self.photos[index // len(self.families)]]

    def indices_of(self, family: str) -> list[int]:
        """The items made by ``family``."""
        k = self.families.index(family)
        return list(range(k, len(self), len(self.families)))

    def _generator(self, t: Triplet, family: str) -> torch.Generator:
        # one 32-bit key: a CPU generator keeps only the low 32 bits of its seed
        return torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{t.subset}/{t.mask.stem}/{family}".encode()))

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """(composite, mask, real) of item ``index``."""
        p, family = divmod(index, len(self.families))
        family = self.families[family]
        t = self.triplet(index)
        _, mask, real = self.base.load(self.photos[p])
        if family == UNEDITED:
            return real.clone(), mask, real
        g = self._generator(t, family)
        j = int(torch.randint(len(self.photos) - 1, (), generator=g))
        j = j + 1 if j >= p else j
        _, ref_mask, ref = self.base.load(self.photos[j])
        comp = self.synthesizers[family](real, mask, ref, ref_mask, g)
        return comp, mask, real

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        comp, mask, real = self.load(index)
        t = self.triplet(index)
        family = self.families[index % len(self.families)]
        return {
            "composite": comp,
            "mask": mask,
            "real": real,
            "name": f"{t.mask.stem}_{family}",
            "subset": f"{t.subset}/{family}",
            "family": family,
        }
