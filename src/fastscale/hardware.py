"""The one hardware table: peak dense matrix throughput and memory bandwidth of the accelerators
fastscale knows, and what this machine's CPU is (its model name, and an fp32 peak estimate from
/proc/cpuinfo, the one place that file is read). Standard library only: the fit layer and the CLI
can ask without importing torch.

GPU peaks are dense bf16 (fp16 where the device has no bf16: V100, T4) tensor-core FLOP/s with fp32
accumulation, from the vendors' datasheets. From Ampere on, NVIDIA's datasheets print the 2:4
structured-sparsity rate ("with sparsity"); the dense rate, what a training step can reach, is half of
it, and that half is what the table holds. MFU and the benchmarks' fraction of peak divide by these.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass

CPUINFO = "/proc/cpuinfo"


@dataclass(frozen=True)
class Accelerator:
    """One row of the table. A device matches when its name contains every word of `match`
    (case-insensitive); rows are ordered so the first match is the most specific one."""

    match: tuple[str, ...]
    tflops: float | None  # dense bf16/fp16 tensor-core TFLOP/s; None: no citable number (MFU is then null)
    tb_per_s: float | None  # memory bandwidth, TB/s
    source: str

    @property
    def flops(self) -> float | None:
        return None if self.tflops is None else self.tflops * 1e12


# Hopper SXM parts share the H100 SXM5's SMs and clock: 989.4 dense (H100 architecture whitepaper; the
# datasheets print 1,979 with sparsity), as kernels/roofline.py models it.
_H100 = "NVIDIA H100 Tensor Core GPU datasheet and architecture whitepaper (BF16 with sparsity: SXM 1,979, NVL 1,671, PCIe 1,513 TFLOPS)"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (BF16 with sparsity: SXM 1,979, NVL 1,671 TFLOPS; 4.8 TB/s)"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet (BF16 312 TFLOPS dense; 40GB 1,555 GB/s, 80GB PCIe 1,935, 80GB SXM 2,039)"

ACCELERATORS = (
    Accelerator(("GB200",), 2500.0, 8.0, "NVIDIA GB200 NVL72 datasheet (per GPU: FP16/BF16 5 PFLOPS with sparsity)"),
    Accelerator(("B200",), 2250.0, 8.0, "NVIDIA HGX B200 datasheet (per GPU: FP16/BF16 4.5 PFLOPS with sparsity, 8 TB/s)"),
    Accelerator(("GH200",), 989.4, 4.0, "NVIDIA GH200 Grace Hopper Superchip datasheet (BF16 1,979 TFLOPS with sparsity; 96GB HBM3 4 TB/s)"),
    Accelerator(("H200", "NVL"), 835.5, 4.8, _H200),
    Accelerator(("H200",), 989.4, 4.8, _H200),
    Accelerator(("H100", "NVL"), 835.5, 3.9, _H100),
    Accelerator(("H100", "PCIe"), 756.5, 2.0, _H100),
    Accelerator(("H100",), 989.4, 3.35, _H100 + " (SXM5, 3.35 TB/s: torch names it 'NVIDIA H100 80GB HBM3')"),
    Accelerator(("H800",), 989.4, 3.35, "NVIDIA H800 SXM5 (the H100 SXM5's compute; datasheet as the H100's)"),
    Accelerator(("A100", "80GB", "PCIe"), 312.0, 1.935, _A100),
    Accelerator(("A100", "80GB"), 312.0, 2.039, _A100),
    Accelerator(("A100",), 312.0, 1.555, _A100),
    Accelerator(("A800",), 312.0, 2.039, "NVIDIA A800 (the A100's compute; 80GB SXM)"),
    Accelerator(("L40S",), 366.5, 0.864, "NVIDIA L40S datasheet (BF16 733 TFLOPS with sparsity, halved; 864 GB/s)"),
    Accelerator(("L40",), 181.05, 0.864, "NVIDIA L40 datasheet (BF16 362.1 TFLOPS with sparsity, 864 GB/s)"),
    Accelerator(("L4",), 121.0, 0.3, "NVIDIA L4 datasheet (BF16 242 TFLOPS with sparsity, 300 GB/s)"),
    # AWS's A10G has no NVIDIA datasheet; without this row it would match the A10's and borrow its peak.
    Accelerator(("A10G",), None, None, "no published datasheet: set FASTSCALE_PEAK_FLOPS"),
    Accelerator(("A10",), 125.0, 0.6, "NVIDIA A10 datasheet (BF16 250 TFLOPS with sparsity, 600 GB/s)"),
    Accelerator(("RTX 4090",), 165.2, 1.008, "NVIDIA Ada GPU architecture whitepaper (BF16 with FP32 accumulate, dense)"),
    Accelerator(("RTX 3090",), 71.0, 0.936, "NVIDIA Ampere GA102 GPU architecture whitepaper (BF16 with FP32 accumulate, dense)"),
    Accelerator(("V100S",), 130.0, 1.134, "NVIDIA V100S datasheet (FP16 tensor, no bf16)"),
    Accelerator(("V100", "PCIe"), 112.0, 0.9, "NVIDIA V100 datasheet (PCIe: FP16 tensor 112 TFLOPS, no bf16)"),
    Accelerator(("V100",), 125.0, 0.9, "NVIDIA V100 datasheet (SXM2: FP16 tensor 125 TFLOPS, no bf16)"),
    Accelerator(("T4",), 65.0, 0.32, "NVIDIA T4 datasheet (FP16 mixed precision, no bf16)"),
    Accelerator(("MI300X",), 1307.4, 5.3, "AMD Instinct MI300X datasheet (BF16 dense)"),
    Accelerator(("MI250X",), 383.0, 3.2768, "AMD Instinct MI250X datasheet (BF16 dense)"),
)


def accelerator(device_name: str) -> Accelerator | None:
    """The table's row for a device name as torch reports it, or None for a device it lacks."""
    name = device_name.lower()
    return next((row for row in ACCELERATORS if all(word.lower() in name for word in row.match)), None)


def cpuinfo(path=None) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (or path) as {name: value}; {} where there is
    none (macOS, a container without /proc)."""
    try:
        with open(path or CPUINFO) as f:
            text = f.read()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines()) if value}


def cpu_model() -> str:
    return cpuinfo().get("model name") or platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_peak() -> tuple[float, str]:
    """(fp32 FLOP/s, how it was estimated) of the usable cores: cores x GHz x FLOPs/cycle/core, where
    FLOPs/cycle is 2 FMA units x lanes x 2 (AVX-512: 16 lanes, AVX2: 8, else SSE: 4). An estimate:
    CPUs have no datasheet peak the way GPUs do, and the clock read is the current one."""
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    lanes, isa = (16, "AVX-512") if "avx512f" in flags else (8, "AVX2") if "avx2" in flags else (4, "SSE")
    mhz = _number(info.get("cpu MHz"))
    ghz = (mhz or 2000.0) / 1000
    cores = usable_cores()
    peak = cores * ghz * 1e9 * 2 * lanes * 2
    clock = f"{ghz:.2f} GHz" + ("" if mhz else " (assumed; clock not readable)")
    return peak, f"CPU estimate: {cores} cores x {clock} x {2 * lanes * 2} fp32 FLOPs/cycle ({isa}, 2 FMA units) = {peak / 1e12:.2f} TFLOP/s"


def _number(text: str | None) -> float | None:
    match = re.fullmatch(r"[\d.]+", text or "")
    return float(match.group()) if match else None
