"""Infrastructure written once: atomic files, devices, input checks."""

from .checks import check_image_mask
from .device import resolve_device
from .files import atomic_write, atomic_write_bytes, atomic_write_text, publish

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "publish",
    "resolve_device",
    "check_image_mask",
]
