"""harmonize: a model zoo for deep image harmonization."""

from . import models  # noqa: F401  (registers every model)
from ._factory import create_model
from ._hub import load_state_dict, push_to_hub, save_pretrained
from ._pretrained import PretrainedCfg
from ._registry import get_pretrained_cfg, is_model, list_models, list_pretrained, register_model
from .inference import harmonize

__version__ = "0.1.0"

__all__ = [
    "create_model",
    "harmonize",
    "list_models",
    "list_pretrained",
    "register_model",
    "is_model",
    "get_pretrained_cfg",
    "PretrainedCfg",
    "save_pretrained",
    "push_to_hub",
    "load_state_dict",
    "__version__",
]
