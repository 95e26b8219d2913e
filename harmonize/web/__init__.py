"""A local web page for harmonization: ``harmonize serve`` (needs ``pip install "harmonize[web]"``).

One HTML page (``static/index.html``) over a small Starlette app: drop a composite and a
mask (or paint the mask with a brush and an eraser), or drop a cutout on a background and
drag and scale it; choose the model; compare before and after with a slider; download the
full-resolution result. :func:`create_app` builds the app; :class:`HarmonizeService` holds
the models (each loaded once) and does the work behind its two endpoints.
"""

from __future__ import annotations

from .app import HarmonizeService, create_app

__all__ = ["create_app", "HarmonizeService"]
