"""The GPT family: configuration, shapes from a parameter budget, parameter and FLOP accounting, and
the plain torch.nn model (it knows nothing of parallelism; see DESIGN.md)."""

from .config import LADDER, GPTConfig, preset
from .flops import PF_DAY, PEAK_FLOPS, mfu, peak_flops, pf_days
from .gpt import GPT

__all__ = ["GPT", "GPTConfig", "LADDER", "PEAK_FLOPS", "PF_DAY", "mfu", "peak_flops", "pf_days", "preset"]
