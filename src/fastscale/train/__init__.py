"""Training: DeepSpeed engine set-up from the user's DeepSpeed config, the loop, atomic checkpoints
with exact resume, metrics, the gradient noise scale and the memory planner."""

from .config import ConfigError, RunConfig, TrainSettings, check_deepspeed_config, resolve_batch
from .noise_scale import GradientNoiseScale, two_batch_estimates
from .schedule import lr_multiplier
from .trainer import Trainer

__all__ = [
    "ConfigError", "GradientNoiseScale", "RunConfig", "Trainer", "TrainSettings", "check_deepspeed_config",
    "lr_multiplier", "resolve_batch", "two_batch_estimates",
]
