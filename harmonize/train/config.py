"""One typed run configuration: what the JSON/TOML files in ``configs/`` hold and the flags of
``harmonize train`` map onto, field for field (``--batch-size`` is ``batch_size``).

The defaults are the GKNet paper's recipe where it gives one: Adam, lr 1e-4, betas
(0.9, 0.999), eps 1e-8, a constant learning rate.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..errors import ConfigError
from ..utils.checks import describe_type, fits_type

__all__ = ["RunConfig", "TrainConfig", "SCHEDULES", "AMP_MODES"]

SCHEDULES = ("constant", "cosine")
AMP_MODES = ("auto", "bf16", "fp16", "none")


@dataclass
class RunConfig:
    """Everything about a training run that is not an object. JSON-able; saved with every checkpoint.

    Attributes:
        model: registered model name, e.g. ``"gknet"``.
        model_args: constructor arguments on top of the registered variant's.
        init: start from these weights (safetensors file or ``save_pretrained`` folder).
        data: iHarmony4-layout root (a subset folder or a folder of subsets).
        subsets: subset names (None: all found).
        size: training resolution (square).
        batch_size: images per step per process.
        synthetic: fraction of samples whose composite is made on the fly.
        families: how they are made: None for harmonize 0.1's synthesizer
            (:class:`~harmonize.data.CompositeSynthesizer`), or names in
            :data:`harmonize.data.FAMILIES` drawn with equal weights (``"classic"`` is 0.1's).
        mild: with ``families``, the fraction of those composites scaled towards the real photo
            by a uniform factor (:class:`~harmonize.data.FamilySynthesizer`'s ``mild``).
        identity: with ``families``, the fraction of those composites that are the real photo
            itself (:class:`~harmonize.data.FamilySynthesizer`'s ``identity``).
        crop_scale: smallest area fraction of the random resized crop.
        workers: data loader processes.
        eval_split: what the run is scored on while it trains: ``"val"`` (default) holds
            ``val_size`` training photos out of training and scores their listed composites
            (choose checkpoints on this, never on a test list); a list name such as ``"test"``
            scores that list; ``"none"``: no evaluation.
        val_size: training photos held out when ``eval_split="val"``.
        eval_limit: evaluate on the first N images only (0: all).
        steps: optimizer steps; the learning-rate schedule spans them.
        stop_at: end after this step on the schedule of ``steps`` (0: run to ``steps``).
        lr, betas, eps, weight_decay: Adam's.
        schedule: ``"constant"`` or ``"cosine"`` (to ``min_lr_ratio * lr``), after ``warmup_steps``.
        grad_clip: max gradient norm (0: off).
        ema_decay: EMA of the weights (0: off).
        amp: ``"auto"`` (on GPUs bf16 where they have it, else fp16; on the CPU bf16 where a
            timed probe step finds it faster, else float32; a resumed run keeps its first
            choice), ``"bf16"``, ``"fp16"``, ``"none"``.
        channels_last: train in channels-last memory format.
        eval_every: steps between evaluations (0: only at the end).
        ckpt_every: steps between checkpoints.
        log_every: steps between rows of ``log.csv``.
        seed: seed of the data order, the synthesis and the initialisation.
        progress: show a progress bar.
    """

    model: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    data: str = ""
    subsets: list[str] | None = None
    size: int = 256
    batch_size: int = 16
    synthetic: float = 0.7
    families: list[str] | None = None
    mild: float = 0.0
    identity: float = 0.0
    crop_scale: float = 0.6
    workers: int = 2
    eval_split: str = "val"
    val_size: int = 100
    eval_limit: int = 0
    steps: int = 1000
    stop_at: int = 0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    grad_clip: float = 0.0
    ema_decay: float = 0.0
    amp: str = "auto"
    channels_last: bool = True
    eval_every: int = 0
    ckpt_every: int = 500
    log_every: int = 20
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.validate()

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise a :class:`~harmonize.errors.ConfigError` naming the first bad field."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        positive = ("size", "batch_size", "steps", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("workers", "eval_limit", "stop_at", "warmup_steps", "eval_every", "ckpt_every", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name, lo, hi in (("synthetic", 0, 1), ("mild", 0, 1), ("identity", 0, 1), ("crop_scale", 0, 1), ("ema_decay", 0, 1), ("min_lr_ratio", 0, 1)):
            v = getattr(self, name)
            if not lo <= v <= hi or (name == "crop_scale" and v == 0) or (name == "ema_decay" and v == 1):
                raise ConfigError(f"{name} must be in {'(' if name == 'crop_scale' else '['}{lo}, {hi}"
                                  f"{')' if name == 'ema_decay' else ']'}, got {v}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ConfigError("grad_clip and weight_decay must be 0 or more, eps positive")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.stop_at > self.steps:
            raise ConfigError(f"stop_at must be between 0 and steps ({self.steps}), got {self.stop_at}")
        if self.families is not None:
            from ..data.families import FAMILIES

            unknown = [f for f in self.families if f not in FAMILIES]
            if unknown or not self.families:
                raise ConfigError(f"families must be a non-empty list of {', '.join(FAMILIES)}, got {self.families}")
        elif self.mild:
            raise ConfigError("mild needs families (0.1's synthesizer has no mild composites)")
        elif self.identity:
            raise ConfigError("identity needs families (0.1's synthesizer always edits the foreground)")
        if self.eval_split == "val" and self.val_size < 1:
            raise ConfigError(f"val_size must be at least 1 with eval_split 'val', got {self.val_size}")
        if self.size < 16:
            raise ConfigError(f"size must be at least 16, got {self.size}")

    # ----------------------------------------------------------------- conversions
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        """Build from a dict whose keys are field names (``-`` may stand for ``_``).

        Raises:
            ConfigError: an unknown key, a value of the wrong type or out of range.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected an object of options, got {type(d).__name__}")
        d = {str(k).replace("-", "_"): v for k, v in d.items()}
        d.pop("extra", None)  # written by harmonize 0.1's trainer; what it held is now in the fields
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            known = sorted(f.name for f in dataclasses.fields(cls))
            close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            hint = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in close.items() if m)
            hint = f" ({hint})" if hint else ""
            raise ConfigError(f"{source}: unknown options {unknown}{hint}; known: {known}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> RunConfig:
        """Read a JSON (or ``.toml``) file of options."""
        return cls.from_dict(read_options(path), source=str(path))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)


#: The name the trainer used for its settings before they became one run configuration.
TrainConfig = RunConfig


def read_options(path: str | os.PathLike) -> dict[str, Any]:
    """The options in a JSON or TOML file, unchecked (a ConfigError when it cannot be read)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        text = p.read_text()
        d = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot parse ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected an object of options, got {type(d).__name__}")
    return d


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Raise a ConfigError unless ``value`` fits the annotation ``hint`` (JSON types only)."""
    if fits_type(value, hint):
        return
    raise ConfigError(f"{name} must be {describe_type(hint)}, got {value!r}")

