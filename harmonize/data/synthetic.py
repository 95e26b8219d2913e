"""A training set larger than its photos: fresh composites drawn on the fly."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from .composite import CompositeSynthesizer
from .iharmony4 import IHarmony4Dataset

__all__ = ["SyntheticCompositeDataset"]


class SyntheticCompositeDataset(Dataset):
    """Wrap an iHarmony4-layout dataset; each item's composite is redrawn from its real photo.

    With probability ``p_original`` the dataset's own composite is kept; otherwise the
    foreground is recoloured by ``synthesizer`` with another photo's foreground as the
    colour reference. Draws depend only on ``(seed, epoch, index)``: call
    :meth:`set_epoch` each epoch for new composites, and a resumed run sees the same ones.

    Args:
        base: the photos (its ``real`` images and masks are used).
        synthesizer: how composites are made.
        transform: paired transform applied after synthesis, ``t(sample, generator)``.
        p_original: probability of keeping the listed composite.
        seed: base seed.
    """

    def __init__(
        self,
        base: IHarmony4Dataset,
        synthesizer: CompositeSynthesizer | None = None,
        transform: Callable[[dict, torch.Generator | None], dict] | None = None,
        p_original: float = 0.3,
        seed: int = 0,
    ) -> None:
        self.base = base
        self.synthesizer = synthesizer or CompositeSynthesizer()
        self.transform = transform
        self.p_original = p_original
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        comp, mask, real = self.base.load(index)
        if torch.rand((), generator=g).item() >= self.p_original:
            j = int(torch.randint(len(self.base) - 1, (), generator=g))
            j = j + 1 if j >= index else j
            _, ref_mask, ref = self.base.load(j)
            comp = self.synthesizer(real, mask, ref, ref_mask, g)
        sample = {"composite": comp, "mask": mask, "real": real}
        if self.transform is not None:
            sample = self.transform(sample, g)
        t = self.base.triplets[index]
        return {**sample, "name": t.name, "subset": t.subset}
