"""A validation split of training photos, for choosing checkpoints without looking at a test list."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .iharmony4 import Triplet

__all__ = ["VAL_SIZE", "split_train_val", "train_val_indices"]

VAL_SIZE = 100
"""Photos held out of LabelMe's 1402 training photos by default."""


def train_val_indices(triplets: Sequence[Triplet], val_size: int = VAL_SIZE, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of ``triplets`` in the training part and in the validation part.

    Whole photos are held out (every composite of a held-out real image goes to validation),
    chosen by a seeded permutation of the sorted photo names, so the split depends only on
    the set of photos, ``val_size`` and ``seed``, not on the list's order.

    Args:
        triplets: a training list, e.g. ``IHarmony4Dataset(root, split="train").triplets``.
        val_size: number of photos to hold out.
        seed: seed of the choice.

    Returns:
        ``(train, val)`` indices into ``triplets``, each in list order.
    """
    photos = sorted({(t.subset, str(t.real)) for t in triplets})
    if not 0 < val_size < len(photos):
        raise ValueError(f"val_size must be between 1 and {len(photos) - 1} (the list has {len(photos)} photos), got {val_size}")
    order = torch.randperm(len(photos), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {photos[i] for i in order[:val_size]}
    train = [i for i, t in enumerate(triplets) if (t.subset, str(t.real)) not in held]
    val = [i for i, t in enumerate(triplets) if (t.subset, str(t.real)) in held]
    return train, val


def split_train_val(
    triplets: Sequence[Triplet], val_size: int = VAL_SIZE, seed: int = 0
) -> tuple[list[Triplet], list[Triplet]]:
    """``(train, val)`` triplet lists: ``val_size`` whole photos of a training list held out.

    See :func:`train_val_indices`, which gives the same split as indices (for
    ``torch.utils.data.Subset`` or the ``indices`` argument of
    :func:`harmonize.evaluate.evaluate`).

    Example:
        >>> train, val = split_train_val(IHarmony4Dataset(root, split="train").triplets)
        >>> len(train), len(val)   # LabelMe
        (1302, 100)
    """
    tr, va = train_val_indices(triplets, val_size, seed)
    return [triplets[i] for i in tr], [triplets[i] for i in va]
