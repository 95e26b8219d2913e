"""Training: one typed run configuration, the builders, and a small explicit trainer."""

from .build import build_trainer, train
from .config import RunConfig, TrainConfig
from .trainer import (
    CheckpointError,
    ResumableSampler,
    ShardSampler,
    Trainer,
    TrainingDiverged,
    load_checkpoint_state,
    lr_lambda,
    seed_everything,
)

__all__ = [
    "RunConfig",
    "TrainConfig",
    "train",
    "build_trainer",
    "Trainer",
    "TrainingDiverged",
    "CheckpointError",
    "ResumableSampler",
    "ShardSampler",
    "load_checkpoint_state",
    "lr_lambda",
    "seed_everything",
]
