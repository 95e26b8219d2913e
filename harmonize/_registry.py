"""The model registry: names ``arch`` and ``arch.tag``, entry points, pretrained tags."""

from __future__ import annotations

import copy
import fnmatch
import sys
import warnings
from collections.abc import Callable

from torch import nn

from ._pretrained import PretrainedCfg
from .errors import UnknownModelError

__all__ = [
    "register_model",
    "generate_default_cfgs",
    "list_models",
    "list_pretrained",
    "is_model",
    "model_entrypoint",
    "get_pretrained_cfg",
    "split_model_name_tag",
    "register_deprecated_name",
    "resolve_name",
    "deprecated_args",
]

_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_model_module: dict[str, str] = {}
_pretrained_cfgs: dict[str, PretrainedCfg] = {}  # "arch.tag" -> cfg
_default_tag: dict[str, str] = {}  # arch -> first tag listed
_deprecated: dict[str, str] = {}  # old name ("arch" or "arch.tag") -> current name
_deprecated_args: dict[str, dict] = {}  # old arch -> constructor arguments that made it differ from its successor


_registered = False


def _ensure_registered() -> None:
    """Import :mod:`harmonize.models` once, which registers every model of the package."""
    global _registered
    if not _registered:
        _registered = True
        import importlib

        importlib.import_module("harmonize.models")


def split_model_name_tag(name: str) -> tuple[str, str]:
    """``"gknet.labelme"`` -> ``("gknet", "labelme")``; no tag gives ``""``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def generate_default_cfgs(cfgs: dict[str, PretrainedCfg]) -> dict[str, PretrainedCfg]:
    """Fill ``architecture`` and ``tag`` of each ``"arch.tag" -> PretrainedCfg`` entry."""
    out = {}
    for name, cfg in cfgs.items():
        arch, tag = split_model_name_tag(name)
        if not tag:
            raise ValueError(f"default_cfgs keys must be 'arch.tag', got {name!r}")
        cfg.architecture = cfg.architecture or arch
        cfg.tag = tag
        out[name] = cfg
    return out


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its function name, with its module's ``default_cfgs``."""
    name = fn.__name__
    if name in _entrypoints:
        raise ValueError(f"model {name!r} is registered twice")
    module = sys.modules[fn.__module__]
    _entrypoints[name] = fn
    _model_module[name] = fn.__module__.split(".")[-1]
    for full, cfg in getattr(module, "default_cfgs", {}).items():
        arch, tag = split_model_name_tag(full)
        if arch == name:
            _pretrained_cfgs[full] = cfg
            _default_tag.setdefault(name, tag)
    return fn


def register_deprecated_name(old: str, new: str, args: dict | None = None) -> None:
    """Keep ``old`` (an architecture or ``arch.tag``) working as an alias of ``new``, with a FutureWarning.

    ``args`` are the constructor arguments under which the old architecture differed from
    the new one; they apply when the old name builds a network without weights (its tags'
    weights were trained on the new network) and to saved folders that name it.
    """
    _deprecated[old] = new
    if args:
        _deprecated_args[old] = dict(args)


def deprecated_args(name: str) -> dict:
    """The constructor arguments an old architecture name (without a tag) stands for; ``{}`` for other names."""
    arch, tag = split_model_name_tag(name)
    return {} if tag else dict(_deprecated_args.get(arch, {}))


def resolve_name(name: str, warn: bool = True) -> str:
    """The current name of ``name``: deprecated architectures and tags map to their successors.

    ``"gknet_small.labelme"`` -> ``"gknet.labelme"`` (a FutureWarning says so); a current
    name comes back as it is.
    """
    _ensure_registered()
    arch, tag = split_model_name_tag(name)
    new = _deprecated.get(name)
    if new is None and arch in _deprecated:
        new_arch, _, new_tag = _deprecated[arch].partition(".")
        new = f"{new_arch}.{tag or new_tag}" if (tag or new_tag) else new_arch
    if new is None:
        return name
    if warn:
        args = deprecated_args(name)
        same = f" with {', '.join(f'{k}={v!r}' for k, v in args.items())}" if args else " (the same network)"
        warnings.warn(f"model name {name!r} is deprecated; use {new!r}{same}", FutureWarning, stacklevel=3)
    return new


def _matches(name: str, filt: str | list[str]) -> bool:
    patterns = [filt] if isinstance(filt, str) else filt
    return any(fnmatch.fnmatch(name, p) for p in patterns) if patterns and patterns != [""] else True


def list_models(filter: str | list[str] = "", pretrained: bool = False, module: str = "") -> list[str]:
    """Registered architectures, sorted; ``pretrained=True`` lists ``arch.tag`` names with weights.

    Args:
        filter: shell-style wildcard(s), e.g. ``"gknet*"``.
        pretrained: list pretrained tags instead of architectures.
        module: only models of this family module (``"gknet"``, ``"hdnet"``).
    """
    _ensure_registered()
    if pretrained:
        names = [n for n, c in _pretrained_cfgs.items() if c.has_weights]
    else:
        names = list(_entrypoints)
    if module:
        names = [n for n in names if _model_module[split_model_name_tag(n)[0]] == module]
    return sorted(n for n in names if _matches(n, filter))


def list_pretrained(filter: str | list[str] = "") -> list[str]:
    """``arch.tag`` names that have weights."""
    return list_models(filter, pretrained=True)


def is_model(name: str) -> bool:
    """True for a registered architecture (with or without a tag), deprecated names included."""
    _ensure_registered()
    return split_model_name_tag(resolve_name(name, warn=False))[0] in _entrypoints


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The ``@register_model`` function of ``name``'s architecture (deprecated names resolved)."""
    _ensure_registered()
    arch = split_model_name_tag(resolve_name(name, warn=False))[0]
    if arch not in _entrypoints:
        raise UnknownModelError(
            f"unknown model {split_model_name_tag(name)[0]!r}; known models: {', '.join(sorted(_entrypoints))}"
        )
    return _entrypoints[arch]


def get_pretrained_cfg(name: str) -> PretrainedCfg | None:
    """A copy of the cfg of ``arch.tag``, or of the architecture's default (first listed) tag.

    The registry's own objects are never handed out: editing the copy changes nothing else.
    """
    _ensure_registered()
    arch, tag = split_model_name_tag(resolve_name(name, warn=False))
    tag = tag or _default_tag.get(arch, "")
    if not tag:
        return None
    full = f"{arch}.{tag}"
    if full not in _pretrained_cfgs:
        known = [n for n in _pretrained_cfgs if n.startswith(arch + ".")]
        raise UnknownModelError(f"unknown pretrained tag {full!r}; tags of {arch}: {known or 'none'}")
    return copy.deepcopy(_pretrained_cfgs[full])


