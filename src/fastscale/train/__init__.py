"""Training: DeepSpeed engine set-up from the user's DeepSpeed config, the loop, atomic checkpoints
with exact resume, metrics, the gradient noise scale and the memory planner.

Torch and DeepSpeed are imported on first use of Trainer / check_deepspeed_config, so the `fastscale`
command line (and `fastscale fit` on a machine without them) does not pay for them."""

from .schedule import lr_multiplier

_LAZY = {
    "GradientNoiseScale": "noise_scale",
    "two_batch_estimates": "noise_scale",
    "Trainer": "trainer",
    "NonFiniteError": "trainer",
    "CheckpointError": "checkpoint",
    "ConfigError": "config",
    "DeepSpeedSettings": "config",
    "RunConfig": "config",
    "TrainSettings": "config",
    "check_deepspeed_config": "config",
    "resolve_batch": "config",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointError", "ConfigError", "DeepSpeedSettings", "GradientNoiseScale", "NonFiniteError", "RunConfig", "Trainer", "TrainSettings", "check_deepspeed_config",
    "lr_multiplier", "resolve_batch", "two_batch_estimates",
]
