"""``create_model``: every model by name, registry tag, Hub repository or local folder."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ._hub import load_config, load_state_dict, load_weights
from ._pretrained import PretrainedCfg
from ._registry import get_pretrained_cfg, model_entrypoint, split_model_name_tag

__all__ = ["create_model"]

_logger = logging.getLogger(__name__)


def create_model(
    model_name: str,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    checkpoint_path: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a model by name.

    Args:
        model_name: a registered ``arch`` or ``arch.tag`` (see ``list_models()`` and
            ``list_pretrained()``), ``hf-hub:org/repo[@revision]`` or ``local-dir:PATH``
            (a ``save_pretrained`` folder).
        pretrained: load the tag's weights (the architecture's default tag when none is given).
        pretrained_cfg_overlay: fields replacing those of the tag's ``PretrainedCfg``,
            e.g. ``dict(file="weights.safetensors")``.
        checkpoint_path: a safetensors file to load after creation (strict).
        **kwargs: constructor arguments of the model.

    Examples:
        >>> model = create_model("test_gknet")
        >>> model(torch.rand(1, 3, 64, 64), torch.ones(1, 1, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """
    if model_name.startswith(("hf-hub:", "local-dir:")):
        scheme, _, source = model_name.partition(":")
        revision = None
        if scheme == "hf-hub" and "@" in source:
            source, _, revision = source.partition("@")
        config, weights = load_config(source, revision=revision)
        cfg = PretrainedCfg.from_dict(config.get("pretrained_cfg", {}))
        cfg.architecture = config["architecture"]
        cfg.file = str(weights)
        if pretrained_cfg_overlay:
            cfg = cfg.overlay(**pretrained_cfg_overlay)
        args = {**config.get("model_args", {}), **kwargs}
        cfg.model_args = {}
        model = model_entrypoint(config["architecture"])(pretrained=pretrained, pretrained_cfg=cfg, **args)
    else:
        arch, _ = split_model_name_tag(model_name)
        cfg = get_pretrained_cfg(model_name)
        if cfg is not None and pretrained_cfg_overlay:
            cfg = cfg.overlay(**pretrained_cfg_overlay)
        elif cfg is None and pretrained_cfg_overlay:
            cfg = PretrainedCfg(architecture=arch).overlay(**pretrained_cfg_overlay)
        model = model_entrypoint(arch)(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    if checkpoint_path:
        load_weights(model, load_state_dict(checkpoint_path), source=str(checkpoint_path))
    return model
