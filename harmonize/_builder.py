"""Build a registered model and load its pretrained weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from ._hub import hf_hub_download, load_state_dict, load_weights
from ._pretrained import PretrainedCfg
from .errors import NoPretrainedWeights

__all__ = ["build_model_with_cfg", "resolve_weights_file", "load_pretrained"]

_logger = logging.getLogger(__name__)
_PACKAGE_DIR = Path(__file__).resolve().parent


def resolve_weights_file(cfg: PretrainedCfg) -> Path:
    """Local ``file`` first (relative paths from the package folder), else the Hub (cached)."""
    if cfg.file:
        p = Path(cfg.file).expanduser()
        if not p.is_absolute():
            p = _PACKAGE_DIR / p
        if not p.exists():
            raise FileNotFoundError(f"weights of {cfg.name} not found at {p}")
        return p
    if cfg.hf_hub_id:
        return Path(hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename, revision=cfg.hf_hub_revision))
    raise NoPretrainedWeights(f"{cfg.name} has no weights (no file and no hf_hub_id)")


def load_pretrained(model: nn.Module, cfg: PretrainedCfg, allow_pickle: bool = False) -> None:
    path = resolve_weights_file(cfg)
    _logger.info("loading %s weights from %s", cfg.name, path)
    load_weights(model, load_state_dict(path, allow_pickle=allow_pickle), source=str(path))


def build_model_with_cfg(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool = False,
    pretrained_cfg: PretrainedCfg | None = None,
    variant_args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Instantiate ``model_cls(**variant_args, **kwargs)`` and load the tag's weights.

    The registered variant alone fixes the architecture: a tag only chooses weights, so
    ``pretrained=True`` builds the same network as ``pretrained=False``. The model keeps
    ``architecture`` (the variant), ``model_args`` (arguments beyond the variant's, what
    ``config.json`` records) and ``pretrained_cfg`` (its own copy).
    """
    cfg = pretrained_cfg or PretrainedCfg(architecture=variant)
    model = model_cls(**{**(variant_args or {}), **kwargs})
    model.architecture = variant
    model.model_args = dict(kwargs)
    model.pretrained_cfg = cfg
    if pretrained:
        if not getattr(model, "needs_weights", True):
            # Weightless models (the ``composite`` and ``reinhard`` references) declare
            # ``needs_weights = False``: pretrained=True has nothing to load and is not an error.
            _logger.info("%s needs no weights; nothing to load", variant)
        elif not cfg.has_weights:
            raise NoPretrainedWeights(
                f"{variant} has no pretrained weights: use a model that has (`harmonize list --pretrained`), "
                "a weights file (checkpoint=... / --checkpoint FILE), local-dir:PATH, or a reference "
                "without weights ('reinhard', 'composite')"
            )
        else:
            load_pretrained(model, cfg)
    return model
