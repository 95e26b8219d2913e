"""Image and mask shape checks, written once for models, metrics, losses and the harmonizer."""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

from torch import Tensor

from ..errors import InvalidInputError

__all__ = ["check_image_mask", "check_image", "check_pred_target", "fits_type", "describe_type"]


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def check_image(image: Tensor, name: str = "image", batched: bool = True, floating: bool = True) -> None:
    """Raise an :class:`~harmonize.errors.InvalidInputError` unless ``image`` is (B, 3, H, W) (or (3, H, W)).

    Args:
        image: the tensor to check.
        name: how the message calls it (``"image"``, ``"pred"``, ``"image 3"``).
        batched: expect a batch dimension.
        floating: require a floating-point dtype.
    """
    dims = 4 if batched else 3
    layout = "(B, 3, H, W)" if batched else "(3, H, W)"
    if not isinstance(image, Tensor) or image.dim() != dims or image.shape[-3] != 3:
        raise InvalidInputError(f"{name} must be a {layout} tensor with values in 0..1, got shape {_shape(image)}")
    if floating and not image.is_floating_point():
        raise InvalidInputError(f"{name} must be floating point in 0..1, got {image.dtype}")


def check_image_mask(
    image: Tensor,
    mask: Tensor,
    name: str = "image",
    batched: bool = True,
    floating: bool = True,
) -> None:
    """Raise an :class:`~harmonize.errors.InvalidInputError` unless image and mask fit together.

    Shape:
        image: (B, 3, H, W); mask: (B, 1, H, W) (without the batch dimension when ``batched=False``)
    """
    check_image(image, name, batched, floating)
    dims = 4 if batched else 3
    layout = "(B, 1, H, W)" if batched else "(1, H, W)"
    mask_name = "mask" if name == "image" else f"mask of {name}"
    if not isinstance(mask, Tensor) or mask.dim() != dims or mask.shape[-3] != 1:
        raise InvalidInputError(f"{mask_name} must be {layout} with values in 0..1, got shape {_shape(mask)}")
    if not batched and mask.shape[-2:] != image.shape[-2:]:
        raise InvalidInputError(
            f"{mask_name} is {mask.shape[-1]}x{mask.shape[-2]} (WxH) but {name} is "
            f"{image.shape[-1]}x{image.shape[-2]}: they must be the same size"
        )
    if batched and (mask.shape[0] != image.shape[0] or mask.shape[-2:] != image.shape[-2:]):
        raise InvalidInputError(
            f"{mask_name} {tuple(mask.shape)} must match {name} {tuple(image.shape)} in batch size, height and width"
        )
    if floating and not mask.is_floating_point():
        raise InvalidInputError(f"{mask_name} must be floating point in 0..1, got {mask.dtype}")


def check_pred_target(pred: Tensor, target: Tensor, mask: Tensor | None = None, channels: int | None = 3) -> None:
    """Raise an :class:`~harmonize.errors.InvalidInputError` unless a prediction, its target and mask fit.

    Shape:
        pred, target: (B, C, H, W) with C = ``channels`` (any C when None); mask: (B, 1, H, W)
    """
    ok = isinstance(pred, Tensor) and isinstance(target, Tensor) and pred.dim() == 4 and pred.shape == target.shape
    if not ok or (channels is not None and pred.shape[1] != channels):
        layout = f"(B, {channels if channels is not None else 'C'}, H, W)"
        raise InvalidInputError(
            f"pred and target must both be {layout} of one shape, got {_shape(pred)} and {_shape(target)}"
        )
    if mask is not None and (
        not isinstance(mask, Tensor)
        or mask.dim() != 4
        or mask.shape[1] != 1
        or mask.shape[0] != pred.shape[0]
        or mask.shape[2:] != pred.shape[2:]
    ):
        raise InvalidInputError(f"mask must be (B, 1, H, W) matching the images {tuple(pred.shape)}, got {_shape(mask)}")


def fits_type(value: Any, hint: Any) -> bool:
    """True when a JSON value fits a type annotation (``int``, ``float``, ``str``, ``bool``,
    ``None``, unions, ``list``/``tuple``/``Sequence`` of them, ``dict[str, ...]``); other
    annotations accept anything."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if origin in (list, collections.abc.Sequence):
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(fits_type(v, item) for v in value)
    if origin is tuple:
        items = typing.get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis:
            return isinstance(value, (list, tuple)) and all(fits_type(v, items[0]) for v in value)
        return isinstance(value, (list, tuple)) and len(value) == len(items) and all(
            fits_type(v, h) for v, h in zip(value, items)
        )
    return True


def describe_type(hint: Any) -> str:
    """A type annotation in words, for messages (``"a list of integers"``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is dict:
        return "an object"
    if origin in (list, collections.abc.Sequence) or (origin is tuple and typing.get_args(hint)[-1:] == (Ellipsis,)):
        item = (typing.get_args(hint) or (Any,))[0]
        return f"a list of {describe_type(item).removeprefix('an ').removeprefix('a ')}s"
    if origin is tuple:
        return f"a list of {len(typing.get_args(hint))} numbers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
