"""``create_model`` and ``load_model``: every model by name, registry tag, Hub repository or local folder."""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._builder import resolve_weights_file
from ._hub import check_shapes, load_config, load_state_dict, load_weights, weights_shapes
from ._pretrained import PretrainedCfg
from ._registry import (
    deprecated_args,
    get_pretrained_cfg,
    is_model,
    model_entrypoint,
    resolve_name,
    split_model_name_tag,
)
from .errors import ConfigError, UnknownModelError, UsageError
from .utils.checks import describe_type, fits_type

__all__ = ["create_model", "load_model", "MAX_PARAMETERS"]

_logger = logging.getLogger(__name__)
_SCHEMES = ("hf-hub:", "local-dir:")
#: The most parameters a model may have (1 GB of float32 weights; the zoo's largest has
#: under 20 M). Model arguments asking for more are refused before anything is allocated.
MAX_PARAMETERS = 250_000_000


def _check_arg_types(cls: type, args: dict[str, Any], source: str) -> None:
    """Each argument must fit the type its constructor declares (JSON types)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: nothing to check against
        return
    for k, v in args.items():
        if k in hints and not fits_type(v, hints[k]):
            raise ConfigError(f"{source}: model argument {k!r} must be {describe_type(hints[k])}, got {v!r:.80}")


def _build(
    entry: Callable[..., nn.Module],
    arch: str,
    cfg: PretrainedCfg | None,
    pretrained: bool,
    args: dict[str, Any],
    source: str,
    weights: str | os.PathLike | None = None,
    probe: bool = True,
) -> nn.Module:
    """Build ``entry(**args)`` once its arguments are known to be sound, then for real.

    The model is first built on the ``meta`` device (no memory): the arguments must be
    taken by the constructor, of the types it declares, give at most :data:`MAX_PARAMETERS`
    parameters and, when ``weights`` (or the tag's pretrained file) will be loaded, give the
    shapes that file's header lists. Only then is memory allocated. ``probe=False`` (a
    registered model with no arguments, overlay or weights from elsewhere) builds directly:
    there is nothing to check, and its tags' weights load strictly (``tests/test_pretrained.py``).
    """
    if not probe:
        return entry(pretrained=pretrained, pretrained_cfg=cfg, **args)
    try:
        with torch.device("meta"):
            probe = entry(pretrained=False, pretrained_cfg=cfg, **args)
    except (TypeError, ValueError) as e:
        try:  # the class, for a message naming the argument of the wrong type
            with torch.device("meta"):
                _check_arg_types(type(entry(pretrained=False, pretrained_cfg=cfg)), args, source)
        except (TypeError, ValueError) as again:
            if isinstance(again, ConfigError):
                raise
        raise ConfigError(f"{source}: model arguments {args} do not fit {arch}: {e}") from None
    _check_arg_types(type(probe), args, source)
    n = sum(t.numel() for t in probe.parameters())
    if n > MAX_PARAMETERS:
        raise ConfigError(
            f"{source}: model arguments {args} give {arch} {n:,} parameters, over the limit of {MAX_PARAMETERS:,}"
        )
    if weights is None and pretrained and getattr(probe, "needs_weights", True) and cfg is not None and cfg.has_weights:
        weights = resolve_weights_file(cfg)
    if weights is not None:
        given = weights_shapes(weights)
        if given is not None:
            own = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
            check_shapes(own, given, str(weights), type(probe).__name__)
    return entry(pretrained=pretrained, pretrained_cfg=cfg, **args)


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
        ConfigError: constructor arguments (``**kwargs`` or a ``config.json``'s ``model_args``)
            the architecture does not take, of the wrong type, or asking for more than
            :data:`MAX_PARAMETERS` parameters; checked on the ``meta`` device before any
            memory is allocated.
        WeightsMismatchError: weights whose shapes (read from the file's header, before the
            model is built) do not fit.

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
        entry = model_entrypoint(cfg.architecture)
        model = _build(entry, cfg.architecture, cfg, pretrained, args, f"{model_name} (config.json)",
                       checkpoint_path or (cfg.file if pretrained else None))
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
        as_registered = not kwargs and not pretrained_cfg_overlay and not checkpoint_path
        model = _build(entry, arch, cfg, pretrained, kwargs, model_name, checkpoint_path, probe=not as_registered)
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
        UsageError: ``model_args`` without a checkpoint.
        ConfigError: arguments the architecture does not take, of the wrong type, or too large.
        WeightsMismatchError: the checkpoint's weights do not fit the architecture (checked
            from the file's header before the model is built) or hold NaN.
    """
    if not name.startswith(_SCHEMES) and not is_model(name):
        raise UnknownModelError(f"unknown model {name!r}; see `harmonize list`")
    if checkpoint is None:
        if model_args:
            raise UsageError("model_args go with a checkpoint (a tag or folder brings its own)")
        return create_model(name, pretrained=True)
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    if model_args is not None and not isinstance(model_args, dict):
        raise UsageError(f"model_args must be an object of constructor arguments, got {model_args!r:.80}")
    return create_model(name, pretrained=False, checkpoint_path=checkpoint, **(model_args or {}))
