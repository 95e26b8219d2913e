"""``harmonize video``: harmonize a clip with its masks, the colour change smoothed over time.

Everything that can be checked is checked before the model loads: PyAV is installed, the
output format is known and not the input, nothing is overwritten without ``--overwrite``,
the clip decodes, the masks (a mask video, a folder of per-frame masks, or one still mask)
have the clip's frame count and size.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ..errors import UsageError
from ._options import RESIZE_MODES as _RESIZE_MODES
from ._options import add_model_arguments

# harmonize.video.io.INSTALL_HINT and DEFAULT_WINDOW, written out so that --help needs no torch.
_INSTALL_HINT = 'pip install "harmonize[video]"'
_DEFAULT_WINDOW = 9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = "harmonize video CLIP MASKS -o OUT [options]"
    p.add_argument("clip", metavar="CLIP", help="the composite video (.mp4 .mov .mkv .webm ...)")
    p.add_argument("masks", metavar="MASKS", help="a mask video, a folder of per-frame mask images, or one still mask")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output video (.mp4 .mov .mkv .webm .avi)")
    p.add_argument("--window", type=int, default=_DEFAULT_WINDOW, metavar="N",
                   help=f"frames whose colour transforms are averaged, centred, odd; 1 = frame by frame (default: {_DEFAULT_WINDOW})")
    add_model_arguments(p)
    p.add_argument("--size", type=int, default=None, metavar="N", help="working resolution of the network (default: the model's, 256)")
    p.add_argument("--resize", default="square", choices=_RESIZE_MODES, help="what the network sees (default: square)")
    p.add_argument("--codec", default=None, help="video encoder (default: libx264 for .mp4/.mov/.mkv; ffv1 is lossless)")
    p.add_argument("--crf", type=int, default=18, help="constant rate factor of H.264/VP9 (default: 18; 0 = lossless with libx264rgb)")
    p.add_argument("--soft-masks", action="store_true", help="keep soft mask edges (default: binarise at 0.5)")
    p.add_argument("--no-audio", action="store_true", help="drop the audio (default: copied unchanged)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def main(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("av") is None:
        raise UsageError(f"video needs PyAV, which is not installed: {_INSTALL_HINT}")
    if args.window < 1 or args.window % 2 == 0:
        raise UsageError(f"--window must be an odd number of frames >= 1, got {args.window}")
    clip, masks, out = Path(args.clip), Path(args.masks), Path(args.output)
    if not clip.exists():
        raise FileNotFoundError(f"{clip}: no such file")
    if not masks.exists():
        raise FileNotFoundError(f"{masks}: no such mask file or folder")
    if out.is_dir():
        raise IsADirectoryError(f"{out}: is a folder; -o names the output video")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out}: exists; pass --overwrite to replace it")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint file")

    from ..video import harmonize_video

    res = harmonize_video(
        clip, masks, out, model=args.model, window=args.window, device=args.device, size=args.size,
        resize=args.resize, checkpoint=args.checkpoint, codec=args.codec, crf=args.crf,
        mask_threshold=None if args.soft_masks else 0.5, audio=not args.no_audio, progress=not args.quiet,
        amp=args.amp,
    )
    if not args.quiet:
        audio = f", {res.audio_streams} audio stream(s) copied" if res.audio_streams else ""
        print(f"wrote {res.path}: {res.frames} frames {res.width}x{res.height} at {float(res.rate):.3g} fps, "
              f"{res.codec}{audio}, window {res.window}, in {res.seconds:.1f} s")
    return 0
