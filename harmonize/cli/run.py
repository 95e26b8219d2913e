"""``harmonize run``: harmonize a composite with its mask, or folders of them.

Everything that can be checked is checked before the model loads and before the first
write: arguments, output formats, that every input is readable (its header, within the
pixel limit) and each mask is the size of its image, that no output would replace an input
or, without ``--overwrite`` (or, for folders, ``--skip-existing``), an existing file.

In folder mode a file that turns out to be unreadable only when decoded (or whose result
is not finite) is reported and skipped; the others are written, a summary names the
failures and the exit code is 1. Every output is written atomically, so a rerun with
``--skip-existing`` does only what is left.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

from ..errors import UsageError
from ._options import METHODS as _METHODS
from ._options import RESIZE_MODES as _RESIZE_MODES
from ._options import add_model_arguments

_logger = logging.getLogger(__name__)

# The library's MAX_NETWORK_SIZE (harmonize.highres), written out so that --help and the argument
# checks need no torch.
_MAX_SIZE = 2048
#: Exit code of a folder run that wrote some outputs and skipped inputs it could not harmonize.
EXIT_SOME_FAILED = 1


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
    add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per network call (default: 1 on CPU, 8 on CUDA)")
    p.add_argument("--size", type=int, default=None, metavar="N", help=f"working resolution of the network, 16-{_MAX_SIZE} (default: the model's, 256)")
    p.add_argument("--method", default="affine", choices=_METHODS, help="how the colour change reaches full resolution (default: affine)")
    p.add_argument("--resize", default="square", choices=_RESIZE_MODES, help="what the network sees: square or aspect kept (default: square)")
    p.add_argument("--ext", default=None, metavar="EXT", help="folder mode: output extension (default: each input's; .jpg .png .webp .tif .bmp)")
    p.add_argument("--skip-missing", action="store_true", help="folder mode: skip composites without a mask (default: error)")
    p.add_argument("--skip-existing", action="store_true", help="folder mode: leave outputs that exist alone and do the rest (resume a batch)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def _pairs(args: argparse.Namespace, folder: bool) -> list:
    from ..data.io import output_format
    from ..folders import Pair, pair_folders

    if folder:
        if args.images is None and args.composite is not None:
            raise UsageError(
                "--masks takes a folder, with --images DIR; for one image give both files: "
                "harmonize run COMPOSITE MASK -o OUT"
            )
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
    if args.skip_existing:
        raise UsageError("--skip-existing is for folder mode")
    out = Path(args.output)
    output_format(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out}: is a folder; -o names the output file (folders go with --images)")
    if any(parent.exists() and not parent.is_dir() for parent in out.parents):
        raise NotADirectoryError(f"{out}: a part of the path is a file, not a folder")
    composite, mask = Path(args.composite), Path(args.mask)
    if composite.exists() and mask.exists() and composite.resolve() == mask.resolve():
        raise UsageError(f"{composite} is given as both COMPOSITE and MASK")
    if out.exists() and out.resolve() in {composite.resolve(), mask.resolve()}:
        raise UsageError(f"{out}: the output would replace an input; choose another -o")
    return [Pair(composite, mask, out)]


def _check_outputs(pairs: list, overwrite: bool, skip_existing: bool, folder: bool) -> tuple[list, list]:
    """(pairs to do, pairs whose output exists and is left alone)."""
    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    existing = [p for p in pairs if p.output.exists()]
    if overwrite or not existing:
        return pairs, []
    if skip_existing:
        done = set(existing)
        return [p for p in pairs if p not in done], existing
    names = ", ".join(str(p.output) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
    hint = "pass --overwrite to replace" + (", or --skip-existing to do only the rest" if folder else "")
    raise FileExistsError(f"{names}: already exists; {hint}")


def _names(items: list, n: int = 3) -> str:
    return ", ".join(str(x) for x in items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def main(args: argparse.Namespace) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.size is not None and not 16 <= args.size <= _MAX_SIZE:
        raise UsageError(
            f"--size must be between 16 and {_MAX_SIZE}, got {args.size} (the network's memory grows with it; "
            "--method affine carries its result to any image size)"
        )
    folder = args.images is not None or args.masks is not None
    pairs = _pairs(args, folder)
    pairs, done = _check_outputs(pairs, args.overwrite, args.skip_existing, folder)
    if done and not args.quiet:
        print(f"harmonize run: {len(done)} output{'s' if len(done) != 1 else ''} already exist; "
              "left alone (--skip-existing)", file=sys.stderr)
    if not pairs:
        if not args.quiet:
            print(f"nothing left to do in {args.output}")
        return 0

    from ..data.io import check_same_size

    # Readable headers within the pixel limit, masks of their images' sizes: before any work.
    icc = {p.image: check_same_size(p.image, p.mask) for p in pairs}

    from tqdm import tqdm

    from ..data.io import load_image, load_mask, save_image
    from ..errors import HarmonizeError, NonFiniteError
    from ..highres import Harmonizer, mask_is_empty
    from ..highres.harmonizer import EMPTY_MASK
    from ..utils.device import resolve_device

    device = resolve_device(args.device)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 1)
    harmonizer = Harmonizer(  # loads the model, in its fastest layout on this device
        args.model,
        checkpoint=args.checkpoint,
        device=device,
        size=args.size,
        method=args.method,
        resize=args.resize,
        batch_size=batch_size,
        amp=args.amp,
    )
    _logger.info("%r", harmonizer)

    start = time.perf_counter()
    bar = tqdm(total=len(pairs), unit="img", desc="harmonize", file=sys.stderr, disable=args.quiet or not folder)
    written, failed = 0, []

    def fail(p, e: BaseException) -> None:
        if not folder:  # one image: its error is the command's
            raise e
        failed.append(p.image)
        msg = str(e) if str(p.image) in str(e) or str(p.mask) in str(e) else f"{p.image}: {e}"
        bar.write(f"harmonize run: skipped: {msg}", file=sys.stderr)
        bar.update(1)

    def harmonize_chunk(images: list, masks: list) -> list:
        """Outputs, or the NonFiniteError of each image whose result is not finite."""
        try:
            return harmonizer.harmonize_many(images, masks)
        except NonFiniteError as e:
            if len(images) == 1:
                return [e]
        return [harmonize_chunk([x], [y])[0] for x, y in zip(images, masks)]

    try:
        for k in range(0, len(pairs), batch_size):
            chunk, images, masks = [], [], []
            for p in pairs[k : k + batch_size]:
                try:  # headers were read; a file can still fail to decode
                    # 8-bit files stay uint8: no whole-image float copy is ever made (12 MP: 36 MB, not 145)
                    x, y = load_image(p.image, uint8=True), load_mask(p.mask, threshold=None, uint8=True)
                    if x.shape[-2:] != y.shape[-2:]:
                        raise UsageError(
                            f"{p.mask} is {y.shape[-1]}x{y.shape[-2]} but {p.image} is {x.shape[-1]}x{x.shape[-2]}: "
                            "a mask must be the size of its image"
                        )
                except HarmonizeError as e:
                    fail(p, e)
                    continue
                chunk.append(p)
                images.append(x)
                masks.append(y)
            if not chunk:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                outs = harmonize_chunk(images, masks)
            empty = {i for i, y in enumerate(masks) if mask_is_empty(y)}
            for w in caught:
                if str(w.message) != EMPTY_MASK:
                    print(f"harmonize run: warning: {w.message}", file=sys.stderr)
            for i, (p, y) in enumerate(zip(chunk, outs)):
                if isinstance(y, BaseException):
                    fail(p, y)
                    continue
                if i in empty:
                    bar.write(f"harmonize run: warning: {p.mask}: the mask is empty; {p.image} is written unchanged", file=sys.stderr)
                try:
                    save_image(y, p.output, icc_profile=icc[p.image])
                except OSError as e:
                    msg = f"{p.output}: cannot write ({e})"
                    if folder:
                        msg += f"; {written} of {len(pairs)} written, rerun with --skip-existing to do the rest"
                    raise UsageError(msg) from e
                written += 1
                bar.update(1)
    finally:
        bar.close()
    if failed:
        print(f"harmonize run: wrote {written} of {len(pairs)} images to {args.output}; {len(failed)} could not be "
              f"harmonized: {_names(failed)} (fix them and rerun with --skip-existing)", file=sys.stderr)
        return EXIT_SOME_FAILED
    if not args.quiet:
        elapsed = time.perf_counter() - start
        where = pairs[0].output if not folder else Path(args.output)
        print(f"wrote {written} image{'s' if written != 1 else ''} to {where} ({elapsed:.1f} s, {harmonizer!r})")
    return 0
