"""``harmonize serve``: the web page, on this machine (needs ``pip install "harmonize[web]"``).

The default model loads once, before the server listens; the others offered load on their
first use. The page binds 127.0.0.1 unless told otherwise; Ctrl-C stops it (exit 130).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import socket
import sys

from ..errors import UsageError
from ._options import METHODS as _METHODS
from ._options import RESIZE_MODES as _RESIZE_MODES

_logger = logging.getLogger(__name__)

#: module -> the package that provides it, for the web extra
_WEB_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}
#: offered beside the models with shipped weights: the classical baseline, fast and weightless
_BASELINES = ("reinhard",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = "harmonize serve [--host 127.0.0.1] [--port 8000] [--model gknet] [options]"
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, metavar="N", help="port (default: 8000)")
    p.add_argument("--model", default="gknet", help="the model selected when the page opens, loaded at start (default: gknet)")
    p.add_argument("--models", default=None, metavar="A,B,...", help="models the page offers (default: every model with shipped weights, and reinhard)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--size", type=int, default=None, metavar="N", help="working resolution of the network (default: the model's, 256)")
    p.add_argument("--method", default="affine", choices=_METHODS, help="how the colour change reaches full resolution (default: affine)")
    p.add_argument("--resize", default="square", choices=_RESIZE_MODES, help="what the network sees (default: square)")
    p.add_argument("--max-megapixels", type=float, default=50.0, metavar="N", help="largest image accepted (default: 50)")
    p.add_argument("--max-upload-mb", type=float, default=200.0, metavar="N", help="largest upload accepted (default: 200)")


def check_web_extra() -> None:
    """Raise a one-line :class:`UsageError` naming the install command when the web extra is missing."""
    missing = [pkg for mod, pkg in _WEB_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise UsageError(f'the web page needs {", ".join(missing)}: pip install "harmonize[web]"')


def _listen(host: str, port: int) -> socket.socket:
    """Bind now, so that a busy port is a one-line error before anything loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: unknown address ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(args: argparse.Namespace) -> int:
    check_web_extra()
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.size is not None and args.size < 16:
        raise UsageError(f"--size must be at least 16, got {args.size}")
    if args.max_megapixels <= 0 or args.max_upload_mb <= 0:
        raise UsageError("--max-megapixels and --max-upload-mb must be positive")
    sock = _listen(args.host, args.port)

    import uvicorn

    from .._registry import is_model, list_pretrained
    from ..utils.device import resolve_device
    from ..web import HarmonizeService, create_app

    if args.models:
        offered = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        offered = [*dict.fromkeys(tag.split(".")[0] for tag in list_pretrained()), *_BASELINES]
    for name in offered:
        if not (is_model(name) or name.startswith(("hf-hub:", "local-dir:"))):
            raise UsageError(f"--models: unknown model {name!r}; see `harmonize list`")
    offered = [args.model, *(m for m in offered if m != args.model)]
    device = resolve_device(args.device)
    print(f"harmonize serve: loading {args.model} on {device}...", file=sys.stderr, flush=True)
    service = HarmonizeService(
        offered, device=str(device), max_pixels=int(args.max_megapixels * 1e6), size=args.size, method=args.method, resize=args.resize
    )
    app = create_app(service, max_upload_mb=args.max_upload_mb)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"harmonize serve: http://{shown}:{port}/ ({', '.join(offered)}); Ctrl-C to stop", flush=True)
    config = uvicorn.Config(app, log_level="warning" if not args.verbose else "info", access_log=bool(args.verbose))
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])  # on Ctrl-C uvicorn shuts down, then raises KeyboardInterrupt: exit 130
    finally:
        sock.close()
    return 0
