"""The errors a user can cause: one small hierarchy, caught by the command line.

Library code raises these (or plain ``ValueError``/``TypeError`` for programming
mistakes); only :mod:`harmonize.cli` turns a :class:`HarmonizeError` into one line and
exit code 2. Each subclass also derives from the built-in type callers caught before it
existed (``ValueError``, ``RuntimeError``), so older ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "HarmonizeError",
    "UsageError",
    "InvalidInputError",
    "ImageReadError",
    "UnknownModelError",
    "NoPretrainedWeights",
    "WeightsUnavailableError",
    "WeightsMismatchError",
    "ConfigError",
    "NonFiniteError",
]


class HarmonizeError(Exception):
    """Base of every error a user can fix; the message names the file or argument."""


class UsageError(HarmonizeError, ValueError):
    """Arguments that do not go together or are out of range (a command's or a function's)."""


class InvalidInputError(HarmonizeError, ValueError):
    """An image, mask or tensor whose shape, type or values the call cannot take."""


class ImageReadError(HarmonizeError, ValueError):
    """A file that is missing or cannot be decoded as an image; the message names it."""


class UnknownModelError(HarmonizeError, ValueError):
    """A model name that is neither registered nor an ``hf-hub:``/``local-dir:`` source."""


class NoPretrainedWeights(HarmonizeError, ValueError):
    """A model asked for with ``pretrained=True`` that has no weights."""


class WeightsUnavailableError(HarmonizeError, FileNotFoundError):
    """Weights on the Hugging Face Hub that cannot be had: no such repository, revision or
    file, or not in the local cache while the Hub cannot be reached (or ``HF_HUB_OFFLINE=1``)."""


class WeightsMismatchError(HarmonizeError, RuntimeError):
    """Weights whose keys or shapes do not fit the model they are loaded into."""


class ConfigError(HarmonizeError, ValueError):
    """A config file or config dict with an unknown key, a wrong type or a value out of range."""


class NonFiniteError(HarmonizeError, RuntimeError):
    """NaN or infinite numbers where a result was due: a model's output (broken weights), or a
    training run that diverged. Nothing is written from them."""
