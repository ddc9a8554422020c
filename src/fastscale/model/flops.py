"""Compute accounting: training FLOPs, PF-days and model FLOPs utilization (MFU).

Training compute follows Kaplan et al.: C = 6 * N * tokens (forward 2N, backward 4N per token), plus
the attention term 6 * n_layer * n_ctx * d_attn per token (GPTConfig.flops_per_token); PF-days are
fastscale.units'. MFU divides the model FLOPs per second (no recomputation counted) by the device's
peak dense throughput from the hardware table (fastscale.hardware), or, on a CPU, by an estimate from
the core count, the clock and the vector width, which `peak_flops` reports in words.
"""

from __future__ import annotations

import logging
import os

from fastscale import hardware

logger = logging.getLogger(__name__)


def peak_flops(device=None) -> tuple[float, str]:
    """(peak FLOP/s, description) for `device` (default: cuda if available, else cpu).

    FASTSCALE_PEAK_FLOPS in the environment overrides the table (e.g. for a device it lacks)."""
    override = os.environ.get("FASTSCALE_PEAK_FLOPS")
    if override:
        return float(override), f"FASTSCALE_PEAK_FLOPS={override}"
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return hardware.cpu_peak()
    name = torch.cuda.get_device_name(device)
    row = hardware.accelerator(name)
    if row is None or row.flops is None:
        logger.warning("no peak FLOP/s known for %r; MFU will be reported as null (set FASTSCALE_PEAK_FLOPS)", name)
        return float("nan"), f"{name}: unknown peak" + (f" ({row.source})" if row else "")
    return row.flops, f"{name}: {row.tflops:g} TFLOP/s dense bf16 ({row.source})"


def mfu(flops_per_second: float, peak: float) -> float | None:
    """Model FLOPs utilization, or None when the peak is unknown."""
    if not peak or peak != peak:
        return None
    return flops_per_second / peak
