"""``harmonize train``: build a run from the command line (or a config file) and train it.

This is the one place where names are looked up in the registry; the trainer itself gets
objects.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import tomllib
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .._factory import create_model
from .._hub import load_state_dict, load_weights, save_pretrained
from ..data import (
    CompositeSynthesizer,
    IHarmony4Dataset,
    PairedCompose,
    PairedRandomHorizontalFlip,
    PairedRandomResizedCrop,
    PairedResize,
    SyntheticCompositeDataset,
)
from ..losses import ForegroundMSELoss
from .trainer import ResumableSampler, TrainConfig, Trainer, seed_everything

__all__ = ["add_arguments", "main", "build_and_train"]

_logger = logging.getLogger(__name__)

# option -> default; the command line, then a config file, then these.
_DEFAULTS: dict[str, Any] = {
    "model": None,
    "data": None,
    "subsets": None,
    "eval_split": "test",
    "eval_limit": 0,
    "size": 256,
    "batch_size": 16,
    "steps": 1000,
    "stop_at": 0,
    "lr": 1e-4,
    "schedule": "constant",
    "warmup_steps": 0,
    "grad_clip": 0.0,
    "ema_decay": 0.0,
    "amp": "auto",
    "workers": 2,
    "synthetic": 0.7,
    "crop_scale": 0.6,
    "eval_every": 0,
    "ckpt_every": 500,
    "log_every": 20,
    "seed": 0,
    "init": None,
    "model_args": {},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="JSON or TOML file with any of the options below (the command line wins)"
    )
    p.add_argument("--model", help="registered model name, e.g. gknet_small")
    p.add_argument("--data", help="iHarmony4-layout root (a subset folder or a folder of subsets)")
    p.add_argument("--subsets", nargs="+", help="subset names (default: all found)")
    p.add_argument("--size", type=int, help="training resolution (square), default 256")
    p.add_argument("--batch-size", type=int, help="images per step per process, default 16")
    p.add_argument("--steps", type=int, help="optimizer steps, default 1000")
    p.add_argument(
        "--stop-at",
        type=int,
        help="end after this step, keeping the learning-rate schedule of --steps (0 = run to --steps)",
    )
    p.add_argument("--lr", type=float, help="learning rate, default 1e-4 (the paper's)")
    p.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        help="learning-rate schedule, default constant",
    )
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off")
    p.add_argument("--ema-decay", type=float, help="EMA of weights, 0 = off")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"])
    p.add_argument("--workers", type=int, help="data loader processes")
    p.add_argument(
        "--synthetic", type=float, help="fraction of samples whose composite is made on the fly"
    )
    p.add_argument(
        "--crop-scale", type=float, help="smallest area fraction of the random resized crop"
    )
    p.add_argument(
        "--eval-split",
        help="list used for periodic evaluation, default test; 'none' for no evaluation",
    )
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N images only (0 = all)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (0 = at the end)")
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    p.add_argument("--log-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--init", help="start from these weights (safetensors file or save_pretrained folder)"
    )
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, final weights")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last.pt"
    )
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")


def _read_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        d = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{p}: cannot parse ({e})") from e
    d = {k.replace("-", "_"): v for k, v in d.items()}
    unknown = set(d) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"{p}: unknown options {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    return d


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts = dict(_DEFAULTS)
    opts.update(_read_config(args.config))
    for k in _DEFAULTS:
        v = getattr(args, k, None)
        if v is not None:
            opts[k] = v
    for k in ("model", "data"):
        if not opts[k]:
            raise ValueError(f"--{k} is required (on the command line or in --config)")
    return opts


def _init_distributed() -> tuple[int, int, torch.device | None]:
    if (
        "WORLD_SIZE" in os.environ
        and int(os.environ["WORLD_SIZE"]) > 1
        and not dist.is_initialized()
    ):
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, None
    return 0, 1, None


def build_and_train(
    opts: dict[str, Any],
    out: str,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Build model, data, loss, optimizer and trainer from ``opts``; train; save the weights.

    ``opts`` holds the command's options by name; those it leaves out take their defaults.
    """
    unknown = set(opts) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training options: {sorted(unknown)}")
    opts = {**_DEFAULTS, **opts}
    rank, world, dist_device = _init_distributed()
    out_dir = Path(out)
    last = out_dir / "last.pt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"{last}: nothing to resume")
    if not resume and last.is_file():
        raise FileExistsError(
            f"{out_dir} already holds a run (last.pt); pass --resume to continue it or choose another --out"
        )
    seed_everything(int(opts["seed"]) + rank)
    model = create_model(opts["model"], **opts["model_args"])
    if opts["init"]:
        load_weights(model, load_state_dict(opts["init"]), source=str(opts["init"]))
    size = int(opts["size"])
    base = IHarmony4Dataset(opts["data"], opts["subsets"], split="train", cache=True)
    train_tf = PairedCompose(
        [
            PairedRandomResizedCrop(size, scale=(float(opts["crop_scale"]), 1.0)),
            PairedRandomHorizontalFlip(),
        ]
    )
    train_set = SyntheticCompositeDataset(
        base,
        CompositeSynthesizer(),
        transform=train_tf,
        p_original=1.0 - float(opts["synthetic"]),
        seed=int(opts["seed"]),
    )
    sampler = ResumableSampler(len(train_set), seed=int(opts["seed"]), rank=rank, world_size=world)
    workers = int(opts["workers"])
    train_loader = DataLoader(
        train_set,
        batch_size=int(opts["batch_size"]),
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
    eval_loader = None
    eval_set = None
    if opts["eval_split"] and opts["eval_split"] != "none":
        try:
            eval_set = IHarmony4Dataset(
                opts["data"],
                opts["subsets"],
                split=opts["eval_split"],
                transform=PairedResize(size),
                cache=True,
            )
        except FileNotFoundError:
            _logger.warning(
                "no %s list under %s: training without evaluation", opts["eval_split"], opts["data"]
            )
    if eval_set is not None and rank == 0:
        if opts["eval_limit"]:
            eval_set = torch.utils.data.Subset(
                eval_set, range(min(int(opts["eval_limit"]), len(eval_set)))
            )
        eval_loader = DataLoader(eval_set, batch_size=int(opts["batch_size"]), num_workers=0)
    config = TrainConfig(
        steps=int(opts["steps"]),
        stop_at=int(opts["stop_at"]),
        lr=float(opts["lr"]),
        schedule=opts["schedule"],
        warmup_steps=int(opts["warmup_steps"]),
        grad_clip=float(opts["grad_clip"]),
        ema_decay=float(opts["ema_decay"]),
        amp=opts["amp"],
        eval_every=int(opts["eval_every"]),
        ckpt_every=int(opts["ckpt_every"]),
        log_every=int(opts["log_every"]),
        seed=int(opts["seed"]),
        progress=progress,
        extra={k: v for k, v in opts.items() if k not in TrainConfig.__dataclass_fields__},
    )
    optimizer_kwargs = dict(
        lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
    if torch.cuda.is_available():
        optimizer_kwargs["fused"] = True
    optimizer = torch.optim.Adam(model.parameters(), **optimizer_kwargs)
    trainer = Trainer(
        model,
        ForegroundMSELoss(100.0),
        optimizer,
        train_loader,
        config,
        out_dir,
        eval_loader=eval_loader,
        device=device or dist_device,
    )
    if resume:
        trainer.load_checkpoint(last)
        _logger.info("resumed %s at step %d", last, trainer.step)
    result = trainer.fit()
    if trainer.is_main:
        final = trainer.eval_model
        final.architecture, final.model_args = model.architecture, model.model_args
        final.pretrained_cfg = model.pretrained_cfg
        save_pretrained(final.float().to(memory_format=torch.contiguous_format), out_dir / "final")
    return result


def main(args: argparse.Namespace) -> int:
    opts = _options(args)
    result = build_and_train(
        opts, args.out, resume=args.resume, device=args.device, progress=not args.no_progress
    )
    if result:
        print(json.dumps(result.get("overall", result), indent=2, default=str))
    print(f"weights: {Path(args.out) / 'final'}")
    return 0
