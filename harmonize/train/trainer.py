"""A small explicit trainer: model, loss, optimizer and data loaders in; weights out.

It never looks names up in the registry. It uses CUDA when present (bf16/fp16 autocast,
channels_last), falls back to the CPU (bf16 autocast there too where a timed probe finds that
it pays, :func:`~harmonize.utils.device.cpu_bf16_step_ratio`), runs the
same code on 1 or N processes under ``torchrun`` (DDP), clips gradients, schedules the
learning rate, keeps an EMA of the weights, writes checkpoints atomically and resumes
them exactly (model, optimizer, scheduler, EMA, RNG, step), evaluates periodically, and
logs to CSV (and TensorBoard when installed). A non-finite loss, or weights that became
NaN or infinite, stop training with :class:`TrainingDiverged`: a checkpoint is never written
from non-finite weights, so ``last.pt`` stays the last finite one, and the message names
it (or says that none was written yet).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from ..errors import HarmonizeError, NonFiniteError
from ..utils.device import cpu_bf16_step_ratio, resolve_device
from ..utils.files import atomic_write, atomic_write_text
from .config import RunConfig, TrainConfig

__all__ = [
    "TrainConfig",
    "RunConfig",
    "Trainer",
    "load_checkpoint_state",
    "ShardSampler",
    "TrainingDiverged",
    "CheckpointError",
    "ResumableSampler",
    "lr_lambda",
    "seed_everything",
]

_logger = logging.getLogger(__name__)

#: ``amp="auto"`` on the CPU trains in bf16 only when its probe step takes at most this
#: fraction of float32's time (float32, the exact one, wins near-ties).
CPU_BF16_MAX_RATIO = 0.9
_AMP_NAMES = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}


class TrainingDiverged(NonFiniteError):
    """The loss, or the weights, became NaN or infinite."""


class CheckpointError(HarmonizeError, ValueError):
    """A checkpoint that cannot be read safely, or does not fit the run resuming from it."""


def lr_lambda(config: RunConfig) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then constant or cosine to ``min_lr_ratio``."""
    if config.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {config.schedule!r}")

    def f(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        span = max(config.steps - config.warmup_steps, 1)
        t = min(max(step - config.warmup_steps, 0) / span, 1.0)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ResumableSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, epoch)``, split across ranks,
    that can start part-way through an epoch (to resume exactly)."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, rank: int | None = None, world_size: int | None = None) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank = rank if rank is not None else (dist.get_rank() if dist.is_initialized() else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if dist.is_initialized() else 1)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share of the epoch."""
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        per_rank = len(order) // self.world_size
        return order[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return self.length // self.world_size - self.start


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``n`` gets items ``r, r + n, r + 2n, ...``: every item once over all ranks, none twice.

    For evaluation under DDP: each rank scores its share and the metrics gather the records.
    """

    def __init__(self, length: int, rank: int | None = None, world_size: int | None = None) -> None:
        self.length = length
        self.rank = rank if rank is not None else (dist.get_rank() if dist.is_initialized() else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if dist.is_initialized() else 1)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def load_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a trainer checkpoint without running code from it (``torch.load(weights_only=True)``).

    Only tensors, numbers, strings and containers load; a file that needs anything else
    (a planted pickle) is refused. Checkpoints of harmonize 0.1 hold numpy RNG state, whose
    array reconstruction is allowed explicitly.
    """
    import pickle

    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    reconstruct = getattr(getattr(np, "_core", np).multiarray, "_reconstruct", None)
    if reconstruct is not None:
        allowed.append(reconstruct)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a checkpoint this trainer wrote, refused ({first})") from None


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_write(path, suffix=".tmp") as tmp:
        torch.save(obj, tmp)


def _rng_state() -> dict[str, Any]:
    """Every RNG's state in types ``torch.load(weights_only=True)`` reads: tensors, numbers, lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Train ``model`` with ``loss_fn(pred, real, mask)`` on batches of dicts.

    Batches hold ``composite``, ``mask`` and ``real`` tensors (B, C, H, W). The train
    loader's sampler should be a :class:`ResumableSampler` (for exact resume; any sampler
    with ``set_epoch`` works without mid-epoch resume), and its dataset may have
    ``set_epoch`` (fresh synthetic composites each epoch).

    Args:
        model: any harmonization model, ``model(composite, mask) -> image``.
        loss_fn: ``loss_fn(pred, real, mask) -> scalar``.
        optimizer: built on ``model.parameters()``.
        train_loader: training batches.
        config: the run's settings.
        out_dir: checkpoints (``last.pt``), ``log.csv``, ``eval.jsonl``, ``config.json``.
        eval_loader: batches for periodic evaluation (``metrics_factory`` scores them).
        scheduler: defaults to ``LambdaLR(optimizer, lr_lambda(config))``.
        metrics_factory: ``() -> metrics object`` with ``update(pred, real, mask, ...)`` and
            ``compute()``; defaults to :class:`harmonize.metrics.HarmonizationMetrics`.
        device: defaults to CUDA when available, else the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
        optimizer: torch.optim.Optimizer,
        train_loader: DataLoader,
        config: RunConfig,
        out_dir: str | os.PathLike,
        eval_loader: DataLoader | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        metrics_factory: Callable[[], Any] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            # Denormal floats flushed to zero, for this process (threads started later inherit
            # it). Near a minimum, where gradients are tiny, a bf16 step of gknet ran 7-10%
            # faster (AMX Xeon, inline loop), the same loss to 6 digits; from scratch, no change.
            torch.set_flush_denormal(True)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.is_main = self.rank == 0
        self.out_dir = Path(out_dir)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp_model: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler or torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.metrics_factory = metrics_factory
        self.amp_dtype = self._amp_dtype(config.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = None
        if config.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=config.ema_decay, stochastic_rounding=False)
        self.step = 0
        self.last_eval: dict[str, Any] = {}
        #: (path, step) of the last checkpoint written or resumed from: finite weights.
        self.last_checkpoint: tuple[Path, int] | None = None

    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        if amp == "none":
            return None
        if amp == "bf16":
            return torch.bfloat16
        if amp == "fp16":
            return torch.float16
        if amp == "auto":
            if self.device.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.device.type != "cpu":
                return None
            ratio = cpu_bf16_step_ratio(self.model, self.config.size, self.config.channels_last)
            use = torch.tensor([int(ratio <= CPU_BF16_MAX_RATIO)])
            if self.distributed:  # every rank trains in rank 0's choice
                dist.broadcast(use, 0)
            dtype = torch.bfloat16 if bool(use) else None
            _logger.info("amp auto: a bf16 step takes %.2fx float32's on this CPU; training in %s",
                         ratio, "bf16" if dtype else "float32")
            return dtype
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'none', got {amp!r}")

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "rng": _rng_state(),
            "config": self.config.to_dict(),
            "amp": _AMP_NAMES[self.amp_dtype],
        }

    def nonfinite_weights(self) -> list[str]:
        """Names of the model's (and the EMA's) parameters and buffers holding NaN or infinite values."""
        modules = [("", self.model)] + ([("ema.", self.ema.module)] if self.ema is not None else [])
        return [
            prefix + k
            for prefix, module in modules
            for k, v in module.state_dict().items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]

    def diverged(self, what: str, step: int) -> TrainingDiverged:
        """The error that stops a diverged run, naming the checkpoint to go back to."""
        if self.last_checkpoint is not None:
            path, saved = self.last_checkpoint
            where = (f"the last finite checkpoint is {path} (step {saved}); continue from it with --resume and a "
                     "lower learning rate (--lr), or --amp none")
        else:
            where = "no checkpoint was written before it (lower the learning rate, --lr, or use --amp none)"
        return TrainingDiverged(f"training diverged: {what} at step {step}; stopped, {where}")

    def save_checkpoint(self, name: str = "last.pt") -> Path | None:
        """Write a checkpoint atomically (rank 0 only); never from NaN or infinite weights.

        Raises:
            TrainingDiverged: the weights are not finite (checked on every rank, so all stop).
        """
        bad = self.nonfinite_weights()
        if bad:
            shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
            raise self.diverged(f"the weights hold NaN or infinite values ({shown})", self.step)
        path = self.out_dir / name
        if self.is_main:
            _atomic_torch_save(self.state_dict(), path)
        if name == "last.pt":
            self.last_checkpoint = (path, self.step)
        return path if self.is_main else None

    def load_checkpoint(self, path: str | os.PathLike, state: dict[str, Any] | None = None) -> None:
        """Restore everything saved by :meth:`save_checkpoint`, to continue exactly.

        Args:
            path: the checkpoint (read with :func:`load_checkpoint_state`: no code runs from it).
            state: its contents when already read.

        Raises:
            CheckpointError: a file this trainer did not write, or one of another run.
        """
        state = load_checkpoint_state(path) if state is None else state
        try:
            if not isinstance(state, dict):
                raise TypeError(f"a {type(state).__name__}, not a dict")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None:
                if state.get("ema") is None:
                    raise CheckpointError(f"{path}: has no EMA weights but this run keeps an EMA")
                self.ema.module.load_state_dict(state["ema"])
            _set_rng_state(state["rng"])
            self.step = int(state["step"])
            if self.config.amp == "auto" and self.device.type == "cpu" and state.get("amp") in ("bf16", "none"):
                self.amp_dtype = torch.bfloat16 if state["amp"] == "bf16" else None  # the probe's first choice
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            if isinstance(e, HarmonizeError):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: does not fit this run ({type(e).__name__}: {first})") from None
        self.last_checkpoint = (Path(path), self.step)

    # ----------------------------------------------------------------- training
    def _to_device(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        fmt = torch.channels_last if self.config.channels_last else torch.contiguous_format
        comp = batch["composite"].to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        mask = batch["mask"].to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        real = batch["real"].to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        return comp, mask, real

    def _batches(self) -> Iterator[dict]:
        """Endless batches, epoch after epoch, starting where ``self.step`` left off."""
        loader = self.train_loader
        per_epoch = len(loader)
        if per_epoch == 0:
            raise ValueError("the training loader yields no batch (dataset smaller than one batch?)")
        epoch, offset = divmod(self.step, per_epoch)
        sampler = loader.sampler if not isinstance(loader.sampler, torch.utils.data.BatchSampler) else None
        while True:
            for obj in (sampler, getattr(loader, "dataset", None)):
                if obj is not None and hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            if offset:
                if not hasattr(sampler, "set_start"):
                    raise ValueError("exact mid-epoch resume needs a ResumableSampler in the train loader")
                sampler.set_start(offset * loader.batch_size)
            elif hasattr(sampler, "set_start"):
                sampler.set_start(0)
            yield from loader
            epoch, offset = epoch + 1, 0

    def train_step(self, batch: dict) -> float:
        comp, mask, real = self._to_device(batch)
        self.ddp_model.train()
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            pred = self.ddp_model(comp, mask)
        loss = self.loss_fn(pred.float(), real, mask)
        if not torch.isfinite(loss):
            raise self.diverged(f"the loss is {loss.item()}", self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return loss.item()

    @property
    def eval_model(self) -> nn.Module:
        """The EMA weights when kept, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    @torch.inference_mode()
    def evaluate(self) -> dict[str, Any]:
        """Score :attr:`eval_model` on the eval loader with the metrics object."""
        if self.eval_loader is None:
            return {}
        if self.metrics_factory is None:
            from ..metrics import HarmonizationMetrics

            metrics = HarmonizationMetrics()
        else:
            metrics = self.metrics_factory()
        model = self.eval_model
        was_training = model.training
        model.eval()
        for batch in self.eval_loader:
            comp, mask, real = self._to_device(batch)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                pred = model(comp, mask)
            metrics.update(pred.float().clamp(0, 1), real, mask, subsets=batch.get("subset"), names=batch.get("name"))
        model.train(was_training)
        self.last_eval = metrics.compute()
        return self.last_eval

    def _log_row(self, name: str, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        path = self.out_dir / name
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def fit(self) -> dict[str, Any]:
        """Train until ``config.steps`` (or ``config.stop_at``); returns the last evaluation.

        The evaluation is empty without an eval loader. ``stop_at`` ends the run early on the
        schedule of the full ``steps``: the weights equal those of step ``stop_at`` of the full run.
        """
        cfg = self.config
        if not 0 <= cfg.stop_at <= cfg.steps:
            raise ValueError(f"stop_at must be between 0 and steps ({cfg.steps}), got {cfg.stop_at}")
        end = cfg.stop_at or cfg.steps
        if self.is_main:
            atomic_write_text(self.out_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        tb = None
        if self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:
                tb = None
        bar = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        try:
            return self._fit(end, tb, bar)
        finally:  # a diverged run or Ctrl-C leaves no bar behind
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()

    def _fit(self, end: int, tb: Any, bar: Any) -> dict[str, Any]:
        cfg = self.config
        batches = self._batches()
        t0, images, run_loss, n_loss = time.perf_counter(), 0, 0.0, 0
        while self.step < end:
            batch = next(batches)
            loss = self.train_step(batch)
            bs = batch["composite"].shape[0] * (dist.get_world_size() if self.distributed else 1)
            images += bs
            run_loss, n_loss = run_loss + loss, n_loss + 1
            if bar is not None:
                bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == end:
                dt = time.perf_counter() - t0
                row = {
                    "step": self.step,
                    "loss": run_loss / n_loss,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "images_per_s": images / dt if dt > 0 else 0.0,
                    "time": time.time(),
                }
                self._log_row("log.csv", row)
                if tb is not None:
                    tb.add_scalar("train/loss", row["loss"], self.step)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}")
                t0, images, run_loss, n_loss = time.perf_counter(), 0, 0.0, 0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < end:
                self._eval_and_log(tb)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save_checkpoint()
        self.save_checkpoint()  # refuses non-finite weights: a run that diverged on its last step fails here
        return self._eval_and_log(tb) if self.eval_loader is not None else {}

    def _eval_and_log(self, tb) -> dict[str, Any]:
        res = self.evaluate()
        flat = {"step": self.step, **_flatten(res)}
        if self.is_main:
            with (self.out_dir / "eval.jsonl").open("a") as f:
                f.write(json.dumps(flat) + "\n")
        if tb is not None:
            for k, v in flat.items():
                if isinstance(v, (int, float)) and k != "step":
                    tb.add_scalar(f"eval/{k}", v, self.step)
        _logger.info("step %d eval: %s", self.step, {k: v for k, v in flat.items() if "overall" in k or k == "step"})
        return res


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float)):
            out[key] = v
    return out
