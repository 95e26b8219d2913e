"""Weights IO: safetensors files, the Hugging Face Hub layout, model cards, push to the Hub.

A ``save_pretrained`` folder (and a Hub repository) holds ``config.json`` (architecture,
model_args, pretrained_cfg), ``model.safetensors`` and a ``README.md`` model card.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ._pretrained import PretrainedCfg
from .errors import (
    ConfigError,
    InvalidInputError,
    UsageError,
    WeightsMismatchError,
    WeightsUnavailableError,
)
from .utils.files import atomic_write

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

__all__ = [
    "load_state_dict",
    "load_weights",
    "weights_shapes",
    "check_shapes",
    "save_pretrained",
    "push_to_hub",
    "load_config",
    "model_card",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

_logger = logging.getLogger(__name__)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file (or a ``save_pretrained`` folder).

    Pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are refused unless
    ``allow_pickle=True``; even then they go through ``torch.load(weights_only=True)``.
    A trainer checkpoint (a dict with a ``"model"`` entry) gives its model weights.
    """
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    if p.suffix in _PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UsageError(
                f"{p}: refusing to unpickle a {p.suffix} file; use safetensors, or pass allow_pickle=True "
                "if you trust it"
            )
        sd = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
            sd = sd["model"]
        return sd
    try:
        return load_file(str(p), device="cpu")
    except Exception as e:  # safetensors raises several types for a bad header
        raise InvalidInputError(f"{p}: not a readable safetensors file ({e})") from e


def _weights_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / WEIGHTS_NAME if p.is_dir() else p


def weights_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]] | None:
    """Name -> shape of every tensor of a safetensors file, read from its header alone.

    Nothing is allocated: this is how a model's shapes are compared with a file's before
    the model is built. None for a pickle-based file (its shapes are checked on loading).
    """
    p = _weights_file(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    if p.suffix in _PICKLE_SUFFIXES:
        return None
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a bad header
        raise InvalidInputError(f"{p}: not a readable safetensors file ({e})") from e


def check_shapes(
    own: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]], source: str, model_name: str
) -> None:
    """Raise a :class:`WeightsMismatchError` naming every missing, unexpected or mis-shaped key."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = sorted(
        f"{k}: {tuple(given[k])} in {source}, {tuple(own[k])} in model"
        for k in set(own) & set(given)
        if tuple(own[k]) != tuple(given[k])
    )
    if missing or unexpected or shapes:
        parts = []
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
                parts.append(f"{title}: {shown}")
        raise WeightsMismatchError(f"cannot load {source} into {model_name}: " + "; ".join(parts))


def _nonfinite_keys(state_dict: dict[str, torch.Tensor], chunk: int = 1 << 23) -> list[str]:
    """Keys of the floating-point tensors holding NaN or infinite values, sorted.

    Tensors are checked a few million values at a time in one ``isfinite``, not one call
    per tensor: hundreds of small parallel calls take seconds on a busy 2-core machine.
    """
    bad: list[str] = []
    group: list[tuple[str, torch.Tensor]] = []
    size = 0

    def flush() -> None:
        if group and not bool(torch.isfinite(torch.cat([v.reshape(-1).float() for _, v in group])).all()):
            bad.extend(k for k, v in group if not bool(torch.isfinite(v).all()))
        group.clear()

    for k, v in state_dict.items():
        if v.is_floating_point() and v.numel():
            group.append((k, v))
            size += v.numel()
            if size >= chunk:
                flush()
                size = 0
    flush()
    return sorted(bad)


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load strictly: any missing, unexpected or mis-shaped key is an error that names it.

    Tensors are cast to each parameter's dtype (weights may be stored in float16). Weights
    holding NaN or infinite values (a diverged run's) are refused.
    """
    own = model.state_dict()
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsMismatchError(f"cannot load {source}: entries that are not tensors: {', '.join(sorted(bad)[:10])}")
    check_shapes(
        {k: tuple(v.shape) for k, v in own.items()},
        {k: tuple(v.shape) for k, v in state_dict.items()},
        source,
        type(model).__name__,
    )
    nonfinite = _nonfinite_keys(state_dict)
    if nonfinite:
        shown = ", ".join(nonfinite[:5]) + (f", ... ({len(nonfinite)} in all)" if len(nonfinite) > 5 else "")
        raise WeightsMismatchError(f"{source}: weights hold NaN or infinite values ({shown}); a diverged run's?")
    cast = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(cast, strict=True)


def _model_config(model: nn.Module) -> dict[str, Any]:
    arch = getattr(model, "architecture", None)
    if not arch:
        raise ValueError("save_pretrained needs a model made by harmonize.create_model (it has no .architecture)")
    cfg: PretrainedCfg = getattr(model, "pretrained_cfg", None) or PretrainedCfg(architecture=arch)
    pc = cfg.to_dict()
    pc["file"] = None  # a local path means nothing inside a published folder
    return {"architecture": arch, "model_args": dict(getattr(model, "model_args", {})), "pretrained_cfg": pc}


def hf_hub_download(repo_id: str, filename: str, revision: str | None = None, **kwargs: Any) -> str:
    """``huggingface_hub.hf_hub_download``, imported when first needed: importing it takes
    about 0.4 s, which a model whose weights ship with the package never needs.

    What a user can fix (no such repository, revision or file; offline with nothing cached)
    becomes one :class:`~harmonize.errors.WeightsUnavailableError` naming the repository.
    """
    from huggingface_hub import constants
    from huggingface_hub import hf_hub_download as download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    start = time.monotonic()
    try:
        return download(repo_id, filename, revision=revision, **kwargs)
    except LocalEntryNotFoundError as e:
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
               else f"the Hugging Face Hub could not be reached (tried for {time.monotonic() - start:.0f} s)")
        raise WeightsUnavailableError(
            f"{where}: {filename} is not in the local Hub cache ({constants.HF_HUB_CACHE}) and {why}; "
            "download it once online, or point HF_HUB_CACHE at a cache that has it"
        ) from e
    except GatedRepoError as e:
        raise WeightsUnavailableError(f"{where}: a gated repository; accept its terms on the Hub and log in (hf auth login)") from e
    except RepositoryNotFoundError as e:
        raise WeightsUnavailableError(f"{where}: no such repository on the Hub (or a private one: log in with hf auth login)") from e
    except RevisionNotFoundError as e:
        raise WeightsUnavailableError(f"{where}: the repository has no revision {revision!r}") from e
    except EntryNotFoundError as e:
        raise WeightsUnavailableError(f"{where}: the repository has no {filename} (a harmonize save_pretrained folder has "
                                      f"{CONFIG_NAME} and {WEIGHTS_NAME})") from e


def model_card(model: nn.Module, repo_id: str | None = None) -> ModelCard:
    """A Hub model card (YAML metadata + Markdown) from the model's ``pretrained_cfg``."""
    from huggingface_hub import ModelCard, ModelCardData

    config = _model_config(model)
    cfg = PretrainedCfg.from_dict(config["pretrained_cfg"])
    arch = config["architecture"]
    n_params = sum(p.numel() for p in model.parameters())
    data = ModelCardData(
        license=cfg.license or "apache-2.0",
        library_name="harmonize",
        tags=["image-harmonization", "image-to-image", "harmonize", arch.split("_")[0]],
        pipeline_tag="image-to-image",
    )
    name = repo_id or cfg.name
    lines = [
        f"# {name}",
        "",
        f"`{arch}` image harmonization model from the `harmonize` library: given a composite photo and the "
        "mask of its pasted foreground, it adjusts the foreground's colour and light to match the background.",
        "",
        "## Model details",
        "",
        f"- Architecture: `{arch}`, {n_params / 1e6:.2f} M parameters",
    ]
    if config["model_args"]:
        lines.append(f"- Model arguments: `{json.dumps(config['model_args'], sort_keys=True)}`")
    if cfg.paper:
        lines.append(f"- Paper: {cfg.paper}" + (f" ({cfg.paper_url})" if cfg.paper_url else ""))
    for label, value in (("Trained on", cfg.trained_on), ("Recipe", cfg.recipe), ("Hardware", cfg.hardware)):
        if value:
            lines.append(f"- {label}: {value}")
    lines.append(f"- Input size: {cfg.input_size[1]}x{cfg.input_size[2]} (any size is accepted)")
    if cfg.notes:
        lines += ["", cfg.notes]
    if cfg.metrics:
        lines += ["", "## Scores", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in cfg.metrics.items()]
    load_name = f"hf-hub:{repo_id}" if repo_id else cfg.name
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import harmonize",
        f'model = harmonize.create_model("{load_name}", pretrained=True).eval()',
        "out = model(image, mask)  # image (B, 3, H, W) in 0..1, mask (B, 1, H, W) in {0, 1}",
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines))


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike, half: bool = False, repo_id: str | None = None
) -> Path:
    """Write the Hub layout: ``config.json``, ``model.safetensors``, ``README.md``.

    Each file is written to a temporary name and renamed, so a crash never leaves a
    half-written file. ``half=True`` stores the parameters as float16 (buffers, such as
    normalisation statistics, stay float32).

    Returns:
        The folder written.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = _model_config(model)
    params = {k for k, _ in model.named_parameters()}
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if half and k in params and v.is_floating_point():
            v = v.half()  # buffers (normalisation statistics) stay float32: they may exceed float16's range
        sd[k] = v.contiguous().clone()
    with atomic_write(out / WEIGHTS_NAME) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    with atomic_write(out / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
    card = str(model_card(model, repo_id))
    with atomic_write(out / "README.md") as tmp:
        tmp.write_text(card)
    return out


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload harmonize model",
    half: bool = False,
) -> str:
    """Publish ``model`` as ``repo_id`` on the Hugging Face Hub (the ``save_pretrained`` layout).

    Returns:
        The URL of the commit.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, half=half, repo_id=repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message, repo_type="model"
        )
    return str(getattr(info, "commit_url", info))


def load_config(source: str, revision: str | None = None, local: bool = False) -> tuple[dict[str, Any], Path]:
    """Read ``config.json`` of a local folder or a Hub repository (through the Hub cache).

    Args:
        source: a folder, or a Hub repository id ``org/name``.
        revision: branch, tag or commit on the Hub.
        local: ``source`` must be a local folder (``local-dir:``): a path that is not one is
            an error, never a Hub lookup.

    Returns:
        (config, path of the weights file next to it)
    """
    p = Path(source).expanduser()
    if local and not p.is_dir():
        if p.exists():
            raise NotADirectoryError(f"local-dir:{source}: not a folder (a save_pretrained folder is expected)")
        raise FileNotFoundError(f"local-dir:{source}: no such folder")
    if p.is_dir():
        p = p.resolve()
        cfg_path = p / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{p}: no {CONFIG_NAME} (not a save_pretrained folder)")
        weights = p / WEIGHTS_NAME
    else:
        cfg_path = Path(hf_hub_download(source, CONFIG_NAME, revision=revision))
        weights = Path(hf_hub_download(source, WEIGHTS_NAME, revision=revision))
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg_path}: invalid JSON ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ConfigError(f"{cfg_path}: no 'architecture' entry (a string)")
    for key in ("model_args", "pretrained_cfg"):
        value = config.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{cfg_path}: {key!r} must be an object, got {value!r:.80}")
    try:
        PretrainedCfg.from_dict(config.get("pretrained_cfg", {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cfg_path}: bad 'pretrained_cfg' ({e})") from None
    return config, weights
