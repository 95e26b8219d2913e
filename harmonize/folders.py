"""Folders of composites and masks: which mask goes with which composite, and where each result goes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

from .data.io import IMAGE_EXTENSIONS, output_format
from .errors import UsageError

__all__ = ["Pair", "pair_folders", "match_mask", "list_images"]

_logger = logging.getLogger(__name__)


class Pair(NamedTuple):
    """A composite, its mask and the file its result is written to."""

    image: Path
    mask: Path
    output: Path


def list_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` (by extension, hidden files left out), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def match_mask(image: Path, masks: dict[str, list[Path]], same_stem: bool = True) -> Path | None:
    """The mask of ``image``: ``STEM.*``, then ``STEM_mask.*``, then iHarmony4's ``NAME_K`` for ``NAME_K_J``.

    ``same_stem=False`` leaves out ``STEM.*``: with images and masks in one folder, a file
    is never its own mask and a same-named sibling could be either.
    """
    stem = image.stem
    keys = ([stem] if same_stem else []) + [f"{stem}_mask"]
    if stem.count("_") >= 2:
        keys.append(stem.rsplit("_", 1)[0])
    for key in keys:
        found = masks.get(key)
        if found:
            if len(found) > 1:
                raise UsageError(f"{image}: several masks match: {', '.join(str(p) for p in found)}")
            return found[0]
    return None


def pair_folders(
    images: str | os.PathLike,
    masks: str | os.PathLike,
    output: str | os.PathLike,
    ext: str | None = None,
    skip_missing: bool = False,
) -> tuple[list[Pair], list[Path]]:
    """Match every composite in ``images`` with its mask in ``masks`` and its output path.

    ``images`` and ``masks`` may be one folder: masks are then found by ``NAME_mask.*`` or
    iHarmony4's ``NAME_K`` only, and a file that is another file's mask is not a composite
    (it is never harmonized, nor used as its own mask).

    Args:
        images: folder of composites.
        masks: folder of masks (``NAME.*``, ``NAME_mask.*`` or iHarmony4's ``NAME_K`` for ``NAME_K_J``).
        output: folder the results go to (``NAME`` + ``ext``, or the composite's extension).
        ext: output extension, e.g. ``".png"``.
        skip_missing: leave out composites without a mask instead of raising.

    Returns:
        (pairs, composites left out for want of a mask)

    Raises:
        UsageError: no images, composites without masks (unless ``skip_missing``), two
            outputs with one name, an output that would replace an input, an unknown
            output format.
    """
    images_dir, masks_dir, out_dir = Path(images), Path(masks), Path(output)
    for d, flag in ((images_dir, "--images"), (masks_dir, "--masks")):
        if not d.exists():
            raise FileNotFoundError(f"{d}: no such folder ({flag})")
        if not d.is_dir():
            raise NotADirectoryError(f"{d}: not a folder ({flag})")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: not a folder (with --images, -o names the output folder)")
    if any(parent.exists() and not parent.is_dir() for parent in out_dir.parents):
        raise NotADirectoryError(f"{out_dir}: a part of the path is a file, not a folder")
    if ext:
        ext = "." + ext.lower().lstrip(".")
        output_format(f"x{ext}")
    same = images_dir.resolve() == masks_dir.resolve()
    files = list_images(images_dir)
    by_stem: dict[str, list[Path]] = {}
    for p in list_images(masks_dir):
        by_stem.setdefault(p.stem, []).append(p)
    mask_of = {img: match_mask(img, by_stem, same_stem=not same) for img in files}
    used_as_masks = set(mask_of.values()) if same else set()
    images = [img for img in files if img not in used_as_masks]
    if not images:
        raise UsageError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    pairs, missing = [], []
    for img in images:
        m = mask_of[img]
        if m is None:
            missing.append(img)
            continue
        out = out_dir / (img.stem + (ext or img.suffix))
        try:
            output_format(out)
        except UsageError as e:
            raise UsageError(f"{e}; choose the output format of the folder with --ext") from None
        pairs.append(Pair(img, m, out))
    if missing:
        names = ", ".join(p.name for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        expected = "NAME_mask.png, or NAME_K.png for NAME_K_J" if same else "NAME.png or NAME_mask.png"
        msg = f"{len(missing)} of {len(images)} images in {images_dir} have no mask in {masks_dir}: {names} (expected {expected})"
        if not skip_missing:
            raise UsageError(msg + "; pass --skip-missing to harmonize the others")
        _logger.info("%s; skipped", msg)
    seen: dict[Path, Path] = {}
    for img, _, out in pairs:
        if out in seen:
            raise UsageError(f"{seen[out]} and {img} would both be written to {out}")
        seen[out] = img
    inputs = {p.resolve() for pair in pairs for p in pair[:2]}
    clash = [pair.output for pair in pairs if pair.output.resolve() in inputs]
    if clash:
        raise UsageError(f"{clash[0]}: an output would replace an input ({len(clash)} in all); choose another -o folder")
    if not pairs:
        raise UsageError(f"no composite in {images_dir} has a mask in {masks_dir}")
    return pairs, missing
