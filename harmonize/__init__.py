"""harmonize: a model zoo for deep image harmonization.

``import harmonize`` is cheap: torch, timm and the models load on first use of a name
below (``harmonize.create_model`` imports them and registers every model), so the command
line answers ``--help`` at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "create_model": "._factory",
    "load_model": "._factory",
    "list_models": "._registry",
    "list_pretrained": "._registry",
    "register_model": "._registry",
    "is_model": "._registry",
    "get_pretrained_cfg": "._registry",
    "PretrainedCfg": "._pretrained",
    "save_pretrained": "._hub",
    "push_to_hub": "._hub",
    "load_state_dict": "._hub",
    "harmonize": ".highres",
    "Harmonizer": ".highres",
    "compose": ".cutout",
    "harmonize_video": ".video",
    "set_exportable": "._config",
    "is_exportable": "._config",
    "exportable": "._config",
    "HarmonizeError": ".errors",
    "NoPretrainedWeights": ".errors",
    "UnknownModelError": ".errors",
}

__all__ = [
    "create_model",
    "load_model",
    "list_models",
    "list_pretrained",
    "register_model",
    "is_model",
    "get_pretrained_cfg",
    "PretrainedCfg",
    "save_pretrained",
    "push_to_hub",
    "load_state_dict",
    "harmonize",
    "Harmonizer",
    "compose",
    "harmonize_video",
    "set_exportable",
    "is_exportable",
    "exportable",
    "HarmonizeError",
    "NoPretrainedWeights",
    "UnknownModelError",
    "__version__",
]

if TYPE_CHECKING:
    from ._config import exportable, is_exportable, set_exportable
    from ._factory import create_model, load_model
    from ._hub import load_state_dict, push_to_hub, save_pretrained
    from ._pretrained import PretrainedCfg
    from ._registry import (
        get_pretrained_cfg,
        is_model,
        list_models,
        list_pretrained,
        register_model,
    )
    from .cutout import compose
    from .errors import HarmonizeError, NoPretrainedWeights, UnknownModelError
    from .highres import Harmonizer, harmonize


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'harmonize' has no attribute {name!r}")
    if module in ("._factory", "._registry", ".highres", ".cutout"):
        importlib.import_module(".models", __name__)  # registers every model
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
