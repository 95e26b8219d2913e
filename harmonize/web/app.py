"""The web page's server: a Starlette app over :class:`HarmonizeService`.

Endpoints:

- ``GET /``: the page.
- ``GET /api/info``: the models offered, the default, the size limits.
- ``GET /api/samples``: the bundled sample composites (``harmonize demo``'s), each with the
  file names of its composite and mask, which ``GET /api/samples/FILE`` returns.
- ``POST /api/harmonize``: multipart ``composite``, ``mask`` (same size; soft edges kept),
  ``model`` -> the harmonized image as a PNG at full resolution.
- ``POST /api/compose``: multipart ``cutout`` (with transparency), ``background``, ``x``,
  ``y``, ``scale``, ``anchor`` (as :func:`harmonize.cutout.paste`), ``model`` -> PNG.

Every error is JSON ``{"error": "one line"}`` with status 400 (bad input), 413 (too
large) or 500 (a bug, whose traceback goes to the server's log, not to the page). The
network runs in a worker thread, one request at a time; each model is loaded once, the
default one when the app is created.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..cutout import ANCHORS, paste
from ..data.io import image_to_tensor, mask_to_tensor, to_uint8_hwc
from ..demo import bundled_samples
from ..errors import HarmonizeError, ImageReadError, InvalidInputError, UsageError
from ..highres import Harmonizer, mask_is_empty

__all__ = ["create_app", "HarmonizeService", "MAX_PIXELS", "MAX_UPLOAD_MB"]

_logger = logging.getLogger(__name__)

#: Largest image accepted, in pixels (a 12-megapixel photo is well inside).
MAX_PIXELS = 50_000_000
#: Largest request body accepted, in megabytes.
MAX_UPLOAD_MB = 200


class _TooLarge(Exception):
    pass


class HarmonizeService:
    """The models behind the page, each loaded once, and the two things the page asks for.

    Args:
        models: the model names offered; the first is the default and is loaded at once.
        device: ``"cpu"``, ``"cuda"``... (None: CUDA when there is one).
        max_pixels: largest image accepted (width x height).
        **harmonizer_kwargs: further :class:`~harmonize.highres.Harmonizer` arguments
            (``size``, ``method``, ``resize``).
    """

    def __init__(
        self,
        models: Sequence[str] = ("gknet",),
        device: str | None = None,
        max_pixels: int = MAX_PIXELS,
        **harmonizer_kwargs: Any,
    ) -> None:
        if not models:
            raise UsageError("offer at least one model")
        self.models = list(dict.fromkeys(models))
        self.default = self.models[0]
        self.device = device
        self.max_pixels = int(max_pixels)
        self._kwargs = harmonizer_kwargs
        self._harmonizers: dict[str, Harmonizer] = {}
        self._lock = threading.Lock()  # one network call at a time; models load under it too
        self.harmonizer(self.default)

    def harmonizer(self, model: str | None = None) -> Harmonizer:
        """The :class:`~harmonize.highres.Harmonizer` of ``model`` (the default when None), loaded once."""
        name = model or self.default
        if name not in self.models:
            raise UsageError(f"unknown model {name!r}; this server offers {', '.join(self.models)}")
        if name not in self._harmonizers:
            _logger.info("loading %s", name)
            self._harmonizers[name] = Harmonizer(name, device=self.device, **self._kwargs)
        return self._harmonizers[name]

    # ----------------------------------------------------------------- inputs

    def decode(self, data: bytes, name: str) -> Image.Image:
        """Decode an uploaded file (EXIF orientation applied); errors name the file."""
        if not data:
            raise ImageReadError(f"{name}: the file is empty")
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > self.max_pixels:
                raise InvalidInputError(
                    f"{name} is {w}x{h} ({w * h / 1e6:.0f} megapixels); this server takes at most "
                    f"{self.max_pixels / 1e6:.0f} megapixels"
                )
            img.load()
            return ImageOps.exif_transpose(img)
        except HarmonizeError:
            raise
        except UnidentifiedImageError:
            raise ImageReadError(f"{name}: cannot read as an image (not an image, or a format this server cannot read)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageReadError(f"{name}: cannot read as an image ({e})") from e

    # ----------------------------------------------------------------- work

    def _run(self, model: str | None, composite: Any, mask: Any) -> tuple[bytes, float]:
        with self._lock:
            harmonizer = self.harmonizer(model)
            start = time.perf_counter()
            result = harmonizer(composite, mask)
            seconds = time.perf_counter() - start
        return _png(result), seconds

    def harmonize_pair(
        self, composite: bytes, mask: bytes, model: str | None = None, names: tuple[str, str] = ("composite", "mask")
    ) -> tuple[bytes, float]:
        """Harmonize an uploaded composite with its mask -> (PNG bytes, seconds in the network)."""
        cname, mname = names
        img = image_to_tensor(self.decode(composite, cname))
        m = mask_to_tensor(self.decode(mask, mname), threshold=None)
        if m.shape[-2:] != img.shape[-2:]:
            raise InvalidInputError(
                f"the mask {mname} is {m.shape[-1]}x{m.shape[-2]} but the composite {cname} is "
                f"{img.shape[-1]}x{img.shape[-2]}: a mask must be the size of its image"
            )
        if mask_is_empty(m):
            raise InvalidInputError(f"the mask {mname} is empty: paint or drop a mask of the object to harmonize")
        return self._run(model, img, m)

    def compose(
        self,
        cutout: bytes,
        background: bytes,
        at: tuple[float, float] | None = None,
        scale: float = 1.0,
        anchor: str = "center",
        model: str | None = None,
        names: tuple[str, str] = ("cutout", "background"),
    ) -> tuple[bytes, float]:
        """Paste an uploaded cutout onto an uploaded background and harmonize -> (PNG bytes, seconds)."""
        cname, bname = names
        cut = self.decode(cutout, cname)
        bg = self.decode(background, bname)
        composite, mask = paste(cut, bg, at=at, scale=scale, anchor=anchor, name=cname)
        return self._run(model, composite, mask)


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8_hwc(image)).save(buf, format="PNG", compress_level=1)  # fast: 12 MP in about a second
    return buf.getvalue()


# --------------------------------------------------------------------------- HTTP


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _BodyLimit:
    """Stop reading a request body past ``limit`` bytes (announced or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error(self._message(), 413)(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the upload is larger than this server's limit of {self.limit / 2**20:.0f} MB"


async def _form_files(request: Request, *names: str) -> tuple[dict[str, tuple[bytes, str]], dict[str, str]]:
    """The uploaded files named ``names`` (bytes, file name) and the text fields of a multipart form."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UsageError(f"send the images as a multipart/form-data upload ({', '.join(names)})")
    try:
        form = await request.form(max_files=8, max_fields=32)
    except _TooLarge:
        raise
    except Exception as e:  # a malformed body: multipart's own errors differ across versions
        raise UsageError(f"cannot read the upload as a multipart form ({e})") from e
    files, fields = {}, {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields[key] = value
            else:
                files[key] = (await value.read(), value.filename or key)
    finally:
        await form.close()
    missing = [n for n in names if n not in files]
    if missing:
        raise UsageError(f"no {' and no '.join(missing)} in the upload")
    return files, fields


def _number(fields: dict[str, str], key: str, default: float | None) -> float | None:
    text = fields.get(key, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{key} must be a number, got {text!r}") from None


def _endpoint(work: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """Run ``work``; turn every failure into a JSON error the page shows."""

    async def endpoint(request: Request) -> Response:
        try:
            return await work(request)
        except _TooLarge as e:
            return _error(str(e), 413)
        except HarmonizeError as e:
            return _error(str(e), 400)
        except MemoryError:
            return _error("out of memory: try a smaller image", 500)
        except Exception as e:  # a bug: the traceback goes to the log, one line to the page
            _logger.exception("%s %s failed", request.method, request.url.path)
            return _error(f"internal error ({type(e).__name__}: {e}); see the server's log", 500)

    return endpoint


def _png_response(png: bytes, seconds: float, model: str) -> Response:
    with Image.open(io.BytesIO(png)) as im:
        w, h = im.size
    headers = {"X-Harmonize-Model": model, "X-Harmonize-Seconds": f"{seconds:.2f}", "X-Harmonize-Size": f"{w}x{h}"}
    return Response(png, media_type="image/png", headers=headers)


def create_app(
    service: HarmonizeService | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
    **service_kwargs: Any,
) -> Starlette:
    """The web page's ASGI app.

    Args:
        service: the models and limits; None builds ``HarmonizeService(**service_kwargs)``
            (which loads the default model now).
        max_upload_mb: largest request body, in megabytes.

    Example:
        >>> import uvicorn
        >>> uvicorn.run(create_app(models=["gknet", "reinhard"]), host="127.0.0.1", port=8000)
    """
    svc = service if service is not None else HarmonizeService(**service_kwargs)
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "models": svc.models,
                "default": svc.default,
                "anchors": list(ANCHORS),
                "max_pixels": svc.max_pixels,
                "max_upload_mb": max_upload_mb,
            }
        )

    try:
        bundled = bundled_samples()
    except FileNotFoundError:  # an installation without the package's assets: the page says so
        bundled = []
    sample_files = {p.name: p for s in bundled for p in (s.composite, s.mask)}

    async def samples(request: Request) -> Response:
        listing = [{"name": s.name, "composite": s.composite.name, "mask": s.mask.name} for s in bundled]
        return JSONResponse({"samples": listing})

    async def sample_file(request: Request) -> Response:
        name = request.path_params["file"]
        path = sample_files.get(name)  # only the bundled files: a name, never a path
        if path is None:
            return _error(f"no bundled sample file {name!r}", 404)
        media = "image/png" if path.suffix == ".png" else "image/jpeg"
        return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "max-age=3600"})

    async def harmonize_pair(request: Request) -> Response:
        files, fields = await _form_files(request, "composite", "mask")
        (comp, cname), (mask, mname) = files["composite"], files["mask"]
        model = fields.get("model") or svc.default
        png, seconds = await run_in_threadpool(svc.harmonize_pair, comp, mask, model, (cname, mname))
        return _png_response(png, seconds, model)

    async def compose(request: Request) -> Response:
        files, fields = await _form_files(request, "cutout", "background")
        (cut, cname), (bg, bname) = files["cutout"], files["background"]
        x, y = _number(fields, "x", None), _number(fields, "y", None)
        if (x is None) != (y is None):
            raise UsageError("give both x and y, or neither (centred)")
        at = None if x is None else (x, y)
        scale = _number(fields, "scale", 1.0)
        anchor = fields.get("anchor") or "center"
        model = fields.get("model") or svc.default
        png, seconds = await run_in_threadpool(svc.compose, cut, bg, at, scale, anchor, model, (cname, bname))
        return _png_response(png, seconds, model)

    async def not_found(request: Request) -> Response:
        return _error(f"no such endpoint: {request.method} {request.url.path}", 404)

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/samples", samples),
        Route("/api/samples/{file}", sample_file),
        Route("/api/harmonize", _endpoint(harmonize_pair), methods=["POST"]),
        Route("/api/compose", _endpoint(compose), methods=["POST"]),
        Route("/api/{rest:path}", not_found, methods=["GET", "POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.service = svc
    app.add_middleware(_BodyLimit, limit=int(max_upload_mb * 2**20))
    return app
