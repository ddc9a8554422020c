"""The GPT family: configuration, shapes from a parameter budget, parameter and FLOP accounting, and
the plain torch.nn model (it knows nothing of parallelism; see DESIGN.md). GPTConfig and the counts
need no torch; GPT is imported on first use."""

from .config import LADDER, GPTConfig, preset
from .flops import mfu, peak_flops


def __getattr__(name):
    if name == "GPT":
        from .gpt import GPT

        return GPT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GPT", "GPTConfig", "LADDER", "mfu", "peak_flops", "preset"]
