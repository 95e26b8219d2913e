"""``create_model`` and ``load_model``: every model by name, registry tag, Hub repository or local folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from ._hub import load_config, load_state_dict, load_weights
from ._pretrained import PretrainedCfg
from ._registry import (
    deprecated_args,
    get_pretrained_cfg,
    is_model,
    model_entrypoint,
    resolve_name,
    split_model_name_tag,
)
from .errors import UnknownModelError, UsageError

__all__ = ["create_model", "load_model"]

_logger = logging.getLogger(__name__)
_SCHEMES = ("hf-hub:", "local-dir:")


def create_model(
    model_name: str,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a model by name.

    The name alone fixes the architecture: ``create_model("gknet")`` and
    ``create_model("gknet", pretrained=True)`` build the same network; a tag
    (``"gknet.labelme"``) only chooses which weights load.

    Args:
        model_name: a registered ``arch`` or ``arch.tag`` (see ``list_models()`` and
            ``list_pretrained()``), ``hf-hub:org/repo[@revision]`` or ``local-dir:PATH``
            (a ``save_pretrained`` folder; never looked up on the network).
        pretrained: load the tag's weights (the architecture's default tag when none is given).
        pretrained_cfg_overlay: fields replacing those of the tag's ``PretrainedCfg``,
            e.g. ``dict(file="weights.safetensors")``.
        checkpoint_path: a safetensors file to load after creation (strict).
        **kwargs: constructor arguments of the model.

    Raises:
        UnknownModelError: the name is not registered.
        NoPretrainedWeights: ``pretrained=True`` for a model that has none.

    Examples:
        >>> model = create_model("test_gknet")
        >>> model(torch.rand(1, 3, 64, 64), torch.ones(1, 1, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """
    if model_name.startswith(_SCHEMES):
        scheme, _, source = model_name.partition(":")
        revision = None
        if scheme == "hf-hub" and "@" in source:
            source, _, revision = source.partition("@")
        config, weights = load_config(source, revision=revision, local=scheme == "local-dir")
        cfg = PretrainedCfg.from_dict(config.get("pretrained_cfg", {}))
        cfg.architecture = resolve_name(config["architecture"])
        cfg.file = str(weights)
        if pretrained_cfg_overlay:
            cfg = cfg.overlay(**pretrained_cfg_overlay)
        # a folder saved under an old name recorded only the arguments beyond that name's defaults
        args = {**deprecated_args(config["architecture"]), **config.get("model_args", {}), **kwargs}
        model = model_entrypoint(cfg.architecture)(pretrained=pretrained, pretrained_cfg=cfg, **args)
    else:
        name = resolve_name(model_name)
        if not pretrained:  # the old network itself; its tags' weights were trained on the new one
            kwargs = {**deprecated_args(model_name), **kwargs}
        arch, _ = split_model_name_tag(name)
        entry = model_entrypoint(arch)
        cfg = get_pretrained_cfg(name)
        if cfg is not None and pretrained_cfg_overlay:
            cfg = cfg.overlay(**pretrained_cfg_overlay)
        elif cfg is None and pretrained_cfg_overlay:
            cfg = PretrainedCfg(architecture=arch).overlay(**pretrained_cfg_overlay)
        model = entry(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    if checkpoint_path:
        load_weights(model, load_state_dict(checkpoint_path), source=str(checkpoint_path))
    return model


def load_model(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    model_args: dict[str, Any] | None = None,
) -> nn.Module:
    """A model ready to harmonize: ``name``'s pretrained weights, or ``checkpoint``'s.

    The one loading path of the package: the harmonizer, the evaluation, the export, the
    demo and every command load their models here.

    Args:
        name: a registered ``arch`` or ``arch.tag``, ``hf-hub:org/repo`` or ``local-dir:PATH``.
            A reference model without weights (``composite``, ``reinhard``) needs none.
        checkpoint: a safetensors file (or ``save_pretrained`` folder) for ``name``'s architecture.
        model_args: constructor arguments the checkpoint's weights were trained with (only
            with ``checkpoint``; a tag or folder brings its own).

    Raises:
        UnknownModelError: ``name`` is not a model.
        NoPretrainedWeights: ``name`` has no weights and no checkpoint is given.
        FileNotFoundError: the checkpoint does not exist.
        UsageError: ``model_args`` without a checkpoint, or arguments the architecture does not take.
        WeightsMismatchError: the checkpoint's weights do not fit the architecture.
    """
    if not name.startswith(_SCHEMES) and not is_model(name):
        raise UnknownModelError(f"unknown model {name!r}; see `harmonize list`")
    if checkpoint is None:
        if model_args:
            raise UsageError("model_args go with a checkpoint (a tag or folder brings its own)")
        return create_model(name, pretrained=True)
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    try:
        return create_model(name, pretrained=False, checkpoint_path=checkpoint, **(model_args or {}))
    except TypeError as e:  # a constructor argument the architecture does not take
        if not model_args:
            raise
        raise UsageError(f"model arguments {model_args} do not fit {name}: {e}") from None
