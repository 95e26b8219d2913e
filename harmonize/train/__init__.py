"""Training: a small explicit trainer and the ``harmonize train`` command."""

from .trainer import (
    ResumableSampler,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    lr_lambda,
    seed_everything,
)

__all__ = ["Trainer", "TrainConfig", "TrainingDiverged", "ResumableSampler", "lr_lambda", "seed_everything"]
