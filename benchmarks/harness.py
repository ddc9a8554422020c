"""The shared benchmark harness: environment report, timing, peak memory, tables and JSON.

Every benchmark compares against baselines measured in the same process, reports ratios, and on a
GPU also TFLOP/s and GB/s as a fraction of the device's own peak. Without a GPU it says so.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

import fastscale.io
from fastscale import hardware
from fastscale.tables import format_table  # noqa: F401 (the benchmarks print their tables with it)

BASELINE_PACKAGES = ("torch", "triton", "liger-kernel", "cut-cross-entropy", "flash-attn", "fastscale")


def has_gpu() -> bool:
    return torch.cuda.is_available()


def device_peak() -> tuple[float, float] | None:
    """(TFLOP/s, TB/s) of the current GPU from the hardware table (fastscale.hardware), or None
    without a GPU or for a device whose peaks the table lacks."""
    if not has_gpu():
        return None
    row = hardware.accelerator(torch.cuda.get_device_name())
    if row is None or row.tflops is None or row.tb_per_s is None:
        return None
    return row.tflops, row.tb_per_s


def environment() -> dict:
    """Hardware and versions, printed at the top of every benchmark and stored in its JSON."""
    versions = {}
    for name in BASELINE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "cpu": hardware.cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if has_gpu() else None,
        "python": platform.python_version(),
        "versions": versions,
    }
    return env


def describe_environment(env: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    device = env["gpu"] or f"no GPU; CPU {env['cpu']} ({env['cpu_threads']} threads)"
    return f"device: {device}\nversions: python {env['python']}, {versions}"


def no_gpu_notice(goal: str) -> str:
    return (
        "NOTE: ran without a GPU. The Triton/CUDA backends, TFLOP/s and the fraction of peak were not "
        f"measured; the GPU goal ({goal}) needs a GPU to check."
    )


def estimate_section(estimates, anchors) -> str:
    """The roofline estimates (kernels/roofline.py; no GPU measured) as a table, then the published
    numbers to read them against, each with its source."""
    from fastscale.kernels import roofline

    header = ["kernel", "shape", "GPU", "est. ms", "est. TFLOP/s", "% of peak", "bound"]
    rows = [[e.kernel, e.shape, e.gpu.name, f"{e.seconds * 1e3:.2f}", f"{e.tflops:.0f}", f"{e.fraction_of_peak:.0%}", e.bound]
            for e in estimates]
    published = [f"  {a.name}: {a.value} on {a.gpu}, {a.setting} [{a.source}]" for a in anchors]
    return "\n".join([f"{roofline.LABEL} (kernels/roofline.py; benchmarks/results/estimates.md has the calibration):",
                      format_table(header, rows), "published numbers (measured by their authors, not here):", *published])


class _RssSampler:
    """Peak resident memory of this process, sampled every 0.2 ms on a thread (torch ops release
    the GIL). Large tensors are mmapped by glibc and unmapped on free, so RSS follows them."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(0.0002)

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def _release_free_heap() -> None:
    """Returns freed heap pages to the OS, so memory a previous method freed but glibc kept is not
    silently reused (which would make the next method look smaller than it is)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose 'bytes' is set on exit to the peak memory allocated beyond what was
    allocated on entry (CUDA: the caching allocator's peak; CPU: sampled RSS)."""
    result = {"bytes": 0}
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield result
        torch.cuda.synchronize()
        result["bytes"] = torch.cuda.max_memory_allocated() - start
    else:
        _release_free_heap()
        with _RssSampler() as sampler:
            yield result
        result["bytes"] = sampler.peak - sampler.start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Measurement:
    name: str
    times_s: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    error: str | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s) if self.times_s else float("nan")

    @property
    def min_s(self) -> float:
        return min(self.times_s, default=float("nan"))

    @property
    def max_s(self) -> float:
        return max(self.times_s, default=float("nan"))


def as_record(m: Measurement) -> dict:
    """A measurement in a results file: the spread over its repeats (min, median, max) beside every time."""
    return {"name": m.name, "min_s": m.min_s, "median_s": m.median_s, "max_s": m.max_s, "times_s": m.times_s, "peak_bytes": m.peak_bytes,
            "error": m.error}


@dataclass
class Skipped:
    """A baseline not run here, and why (not installed, needs a GPU, not in this torch)."""

    name: str
    reason: str


def skipped_lines(skipped: list[Skipped]) -> list[str]:
    return [f"skipped: {s.name} ({s.reason})" for s in skipped]


def failures(measurements: list[Measurement]) -> list[str]:
    """One line per case that failed; a benchmark with any exits non-zero."""
    return [f"FAILED: {m.name}: {m.error}" for m in measurements if m.error]


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def measure(name: str, fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 1) -> Measurement:
    """Runs fn `warmup` times, then `repeats` timed runs, the first under the memory probe.
    fn must drop its outputs before returning, so that nothing it made outlives the probe."""
    result = Measurement(name)
    try:
        for _ in range(warmup):
            fn()
        synchronize(device)
        with peak_memory(device) as mem:
            result.times_s.append(_timed(fn, device))
        result.peak_bytes = mem["bytes"]
        result.times_s += [_timed(fn, device) for _ in range(repeats - 1)]
    except Exception as exc:  # a baseline that cannot run is reported, not fatal
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return result


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """A benchmark's results file, its directory created: strict JSON written atomically (fastscale.io)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fastscale.io.write_json(path, payload, indent=2)
