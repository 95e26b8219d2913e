"""``harmonize compose``: paste a cutout (an image with transparency) onto a background, then harmonize.

The cutout's alpha is the mask (soft edges stay soft). Arguments, output formats, existing
outputs and both inputs (readable, a cutout with transparency, a placement that lands on
the background) are checked before the model loads and before the first write.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..errors import UsageError
from ._options import METHODS as _METHODS
from ._options import RESIZE_MODES as _RESIZE_MODES
from ._options import add_model_arguments

_logger = logging.getLogger(__name__)

# The library's ANCHORS (harmonize.cutout), written out so that --help needs no torch.
_ANCHORS = ("center", "top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")


def _point(text: str) -> tuple[float, float]:
    parts = text.replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y in pixels (e.g. 640,480), got {text!r}") from None
    return x, y


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = "harmonize compose CUTOUT BACKGROUND -o OUT [--at X,Y] [--scale S] [--anchor A] [options]"
    p.epilog = (
        "--at X,Y is the point of the background (pixels from its top-left corner) where the cutout's "
        "--anchor goes; without --at the anchor goes to the same point of the background (default: "
        "centred). Negative values: --at=-20,300."
    )
    p.add_argument("cutout", metavar="CUTOUT", help="the object: an image with transparency (e.g. an RGBA PNG); its alpha is the mask")
    p.add_argument("background", metavar="BACKGROUND", help="the photo to paste it onto")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (.jpg .png .webp .tif), the background's size")
    p.add_argument("--at", type=_point, default=None, metavar="X,Y", help="where the anchor of the cutout goes, in background pixels (default: the background's anchor point)")
    p.add_argument("--anchor", default="center", choices=_ANCHORS, help="the point of the cutout that --at names (default: center)")
    p.add_argument("--scale", type=float, default=1.0, metavar="S", help="resize the cutout by S before pasting (default: 1)")
    p.add_argument("--save-composite", metavar="FILE", help="also write the pasted composite before harmonization")
    p.add_argument("--save-mask", metavar="FILE", help="also write its mask (the placed alpha, soft edges kept; .png)")
    add_model_arguments(p)
    p.add_argument("--size", type=int, default=None, metavar="N", help="working resolution of the network (default: the model's, 256)")
    p.add_argument("--method", default="affine", choices=_METHODS, help="how the colour change reaches full resolution (default: affine)")
    p.add_argument("--resize", default="square", choices=_RESIZE_MODES, help="what the network sees: square or aspect kept (default: square)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no summary line")


def _outputs(args: argparse.Namespace) -> list[Path]:
    from ..data.io import output_format

    outs = [Path(args.output)] + [Path(f) for f in (args.save_composite, args.save_mask) if f]
    for out in outs:
        output_format(out)
        if out.is_dir():
            raise IsADirectoryError(f"{out}: is a folder; name the output file")
    if len({o.resolve() for o in outs}) != len(outs):
        raise UsageError("-o, --save-composite and --save-mask must name different files")
    if not args.overwrite:
        existing = [str(o) for o in outs if o.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)}: already exists; pass --overwrite to replace")
    return outs


def _save_mask(mask, path: Path) -> None:  # noqa: ANN001 - a (1, H, W) tensor
    from PIL import Image

    from ..data.io import output_format
    from ..utils.files import atomic_write

    grey = mask[0].mul(255.0).round().clamp(0, 255).byte().cpu().numpy()
    fmt = output_format(path)
    with atomic_write(path) as tmp:
        Image.fromarray(grey, mode="L").save(tmp, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))


def main(args: argparse.Namespace) -> int:
    if not args.scale > 0:
        raise UsageError(f"--scale must be positive, got {args.scale:g}")
    if args.size is not None and args.size < 16:
        raise UsageError(f"--size must be at least 16, got {args.size}")
    _outputs(args)

    from ..cutout import paste
    from ..data.io import read_header, save_image
    from ..highres import Harmonizer
    from ..utils.device import resolve_device

    # Read and place before any model loads: a bad cutout or placement costs nothing.
    _, _, icc = read_header(Path(args.background))
    composite, mask = paste(args.cutout, args.background, at=args.at, scale=args.scale, anchor=args.anchor)
    harmonizer = Harmonizer(  # loads the model, in its fastest layout on this device
        args.model,
        checkpoint=args.checkpoint,
        device=resolve_device(args.device),
        size=args.size,
        method=args.method,
        resize=args.resize,
        amp=args.amp,
    )
    _logger.info("%r", harmonizer)
    start = time.perf_counter()
    result = harmonizer(composite, mask)
    written = []
    jobs = [(args.save_composite, lambda f: save_image(composite, f, icc_profile=icc)), (args.save_mask, lambda f: _save_mask(mask, Path(f))),
            (args.output, lambda f: save_image(result, f, icc_profile=icc))]
    for path, write in jobs:
        if not path:
            continue
        try:
            write(path)
        except OSError as e:
            raise UsageError(f"{path}: cannot write ({e})") from e
        written.append(Path(path))
    if not args.quiet:
        h, w = composite.shape[-2:]
        also = f"; also {', '.join(str(p) for p in written[:-1])}" if len(written) > 1 else ""
        print(f"wrote {written[-1]} ({w}x{h}, {time.perf_counter() - start:.1f} s, {harmonizer!r}){also}")
    return 0
