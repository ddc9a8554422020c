"""Compute accounting: training FLOPs, PF-days and model FLOPs utilization (MFU).

Training compute follows Kaplan et al.: C = 6 * N * tokens (forward 2N, backward 4N per token), plus
the attention term 6 * n_layer * n_ctx * d_attn per token (GPTConfig.flops_per_token). One PF-day is
1e15 FLOP/s for a day: 8.64e19 FLOPs. MFU divides the model FLOPs per second (no recomputation counted)
by the device's peak dense throughput from PEAK_FLOPS, or, on a CPU, by an estimate from the core
count, the clock and the vector width, which `peak_flops` reports in words.
"""

from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger(__name__)

PF_DAY = 1e15 * 86400

# Dense peak FLOP/s by device-name substring (first match wins), bf16/fp16 tensor cores without sparsity.
PEAK_FLOPS = (
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
)


def pf_days(flops: float) -> float:
    return flops / PF_DAY


def _cpu_peak() -> tuple[float, str]:
    """fp32 FMA peak of the cores this process may use: cores x GHz x FLOPs/cycle/core, where
    FLOPs/cycle is 2 FMA units x lanes x 2 (AVX-512: 16 lanes, AVX2: 8, else SSE: 4)."""
    flags, mhz = "", None
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        match = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        flags = match.group(1) if match else ""
        match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
        mhz = float(match.group(1)) if match else None
    except OSError:
        pass
    lanes, isa = (16, "AVX-512") if "avx512f" in flags else (8, "AVX2") if "avx2" in flags else (4, "SSE")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ghz = (mhz or 2000.0) / 1000
    peak = cores * ghz * 1e9 * 2 * lanes * 2
    clock = f"{ghz:.2f} GHz" + ("" if mhz else " (assumed; clock not readable)")
    return peak, f"CPU estimate: {cores} cores x {clock} x {2 * lanes * 2} fp32 FLOPs/cycle ({isa}, 2 FMA units) = {peak / 1e12:.2f} TFLOP/s"


def peak_flops(device=None) -> tuple[float, str]:
    """(peak FLOP/s, description) for `device` (default: cuda if available, else cpu).

    FASTSCALE_PEAK_FLOPS in the environment overrides the table (e.g. for a device it lacks)."""
    override = os.environ.get("FASTSCALE_PEAK_FLOPS")
    if override:
        return float(override), f"FASTSCALE_PEAK_FLOPS={override}"
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_FLOPS:
            if key in name:
                return value, f"{name}: {value / 1e12:.0f} TFLOP/s dense bf16 (table)"
        logger.warning("no peak FLOP/s known for %r; MFU will be reported as null (set FASTSCALE_PEAK_FLOPS)", name)
        return float("nan"), f"{name}: unknown peak"
    return _cpu_peak()


def mfu(flops_per_second: float, peak: float) -> float | None:
    """Model FLOPs utilization, or None when the peak is unknown."""
    if not peak or peak != peak:
        return None
    return flops_per_second / peak
