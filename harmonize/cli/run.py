"""``harmonize run``: harmonize a composite with its mask, or folders of them.

Everything that can be checked is checked before the model loads and before the first
write: arguments, output formats, that every input is readable and each mask is the size
of its image, that no output would be overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

from ..errors import UsageError

_logger = logging.getLogger(__name__)

# The library's METHODS and RESIZE_MODES (harmonize.highres), written out so that --help needs no torch.
_METHODS = ("affine", "upsample")
_RESIZE_MODES = ("square", "keep")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = (
        "harmonize run COMPOSITE MASK -o OUT [options]\n"
        "       harmonize run --images DIR --masks DIR -o OUTDIR [options]"
    )
    p.add_argument("composite", nargs="?", metavar="COMPOSITE", help="the composite image")
    p.add_argument("mask", nargs="?", metavar="MASK", help="its mask (white = foreground; soft edges blend)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (.jpg .png .webp .tif), or folder with --images")
    p.add_argument("--images", metavar="DIR", help="folder of composites")
    p.add_argument("--masks", metavar="DIR", help="folder of masks, matched by name: NAME.*, NAME_mask.* or (iHarmony4) NAME_K for NAME_K_J")
    p.add_argument("--model", default="gknet", help="registered name, hf-hub:org/repo or local-dir:PATH (default: gknet)")
    p.add_argument("--checkpoint", metavar="FILE", help="safetensors weights for --model")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per network call (default: 1 on CPU, 8 on CUDA)")
    p.add_argument("--size", type=int, default=None, metavar="N", help="working resolution of the network (default: the model's, 256)")
    p.add_argument("--method", default="affine", choices=_METHODS, help="how the colour change reaches full resolution (default: affine)")
    p.add_argument("--resize", default="square", choices=_RESIZE_MODES, help="what the network sees: square or aspect kept (default: square)")
    p.add_argument("--ext", default=None, metavar="EXT", help="folder mode: output extension (default: each input's)")
    p.add_argument("--skip-missing", action="store_true", help="folder mode: skip composites without a mask (default: error)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def _pairs(args: argparse.Namespace, folder: bool) -> list:
    from ..data.io import output_format
    from ..folders import Pair, pair_folders

    if folder:
        if args.images is None or args.masks is None:
            raise UsageError("folder mode needs both --images DIR and --masks DIR")
        if args.composite is not None:
            raise UsageError("give either COMPOSITE MASK or --images DIR --masks DIR, not both")
        pairs, missing = pair_folders(args.images, args.masks, args.output, args.ext, args.skip_missing)
        if missing:
            names = ", ".join(p.name for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            print(f"harmonize run: warning: {len(missing)} images in {args.images} have no mask in {args.masks}: "
                  f"{names}; skipped", file=sys.stderr)
        return pairs
    if args.composite is None or args.mask is None:
        raise UsageError("give COMPOSITE MASK -o OUT, or --images DIR --masks DIR -o OUTDIR")
    if args.ext:
        raise UsageError("--ext is for folder mode; the extension of OUT sets the format")
    out = Path(args.output)
    output_format(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out}: is a folder; -o names the output file (folders go with --images)")
    return [Pair(Path(args.composite), Path(args.mask), out)]


def _check_outputs(outputs: list[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [p for p in outputs if p.exists()]
    if existing:
        names = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"{names}: already exists; pass --overwrite to replace")


def main(args: argparse.Namespace) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.size is not None and args.size < 16:
        raise UsageError(f"--size must be at least 16, got {args.size}")
    folder = args.images is not None or args.masks is not None
    pairs = _pairs(args, folder)
    _check_outputs([p.output for p in pairs], args.overwrite)

    from tqdm import tqdm

    from .._factory import load_model
    from ..data.io import check_same_size, load_image, load_mask, save_image
    from ..highres import Harmonizer, mask_is_empty
    from ..highres.harmonizer import EMPTY_MASK
    from ..utils.device import resolve_device

    icc = {p.image: check_same_size(p.image, p.mask) for p in pairs}  # readable, same sizes: before any work
    device = resolve_device(args.device)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 1)
    harmonizer = Harmonizer(
        load_model(args.model, args.checkpoint),
        device=device,
        size=args.size,
        method=args.method,
        resize=args.resize,
        batch_size=batch_size,
    )
    _logger.info("%r", harmonizer)

    start = time.perf_counter()
    bar = tqdm(total=len(pairs), unit="img", desc="harmonize", file=sys.stderr, disable=args.quiet or not folder)
    written = 0
    try:
        for k in range(0, len(pairs), batch_size):
            chunk = pairs[k : k + batch_size]
            images = [load_image(p.image) for p in chunk]
            masks = [load_mask(p.mask, threshold=None) for p in chunk]
            for p, x, y in zip(chunk, images, masks):
                if x.shape[-2:] != y.shape[-2:]:  # headers agreed, pixels do not: a damaged file
                    raise UsageError(
                        f"{p.mask} is {y.shape[-1]}x{y.shape[-2]} but {p.image} is {x.shape[-1]}x{x.shape[-2]}: "
                        "a mask must be the size of its image"
                    )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                outs = harmonizer.harmonize_many(images, masks)
            empty = {i for i, y in enumerate(masks) if mask_is_empty(y)}
            for w in caught:
                if str(w.message) != EMPTY_MASK:
                    print(f"harmonize run: warning: {w.message}", file=sys.stderr)
            for i, (p, y) in enumerate(zip(chunk, outs)):
                if i in empty:
                    bar.write(f"harmonize run: warning: {p.mask}: the mask is empty; {p.image} is written unchanged", file=sys.stderr)
                try:
                    save_image(y, p.output, icc_profile=icc[p.image])
                except OSError as e:
                    raise UsageError(f"{p.output}: cannot write ({e})") from e
                written += 1
                bar.update(1)
    finally:
        bar.close()
    if not args.quiet:
        elapsed = time.perf_counter() - start
        where = pairs[0].output if not folder else Path(args.output)
        print(f"wrote {written} image{'s' if written != 1 else ''} to {where} ({elapsed:.1f} s, {harmonizer!r})")
    return 0
