"""The doctor's short benchmark: forward + backward of each op's backends that run here against the
baselines installed here, with the benchmarks' harness (benchmarks/harness.py) and methods
(bench_cross_entropy, bench_attention), on one shape per op: large enough to time on a GPU, small
enough to take seconds on a CPU. Speeds are this machine's measurements; `fastscale bench` runs the
full benchmarks."""

from __future__ import annotations

import logging

import torch

from fastscale.benchmarks import bench_attention, bench_cross_entropy, harness
from fastscale.ops import attention

log = logging.getLogger(__name__)

# (tokens, d, vocab, dtype) and (batch, T, heads, head dim, dtype), on a GPU and on a CPU.
CROSS_ENTROPY_SHAPES = {"cuda": (8192, 2048, 32768, torch.bfloat16), "cpu": (256, 64, 2048, torch.float32)}
ATTENTION_SHAPES = {"cuda": (2, 4096, 16, 128, torch.bfloat16), "cpu": (1, 256, 4, 32, torch.float32)}
COMPILING_BASELINES = ("torch.compile",)  # tens of seconds to compile on a CPU: left out of --quick


def _summary(measurements: list[harness.Measurement], work: float, gpu: bool) -> list[dict]:
    """Per method: median time, speed relative to the first (the baseline), throughput, memory."""
    base = measurements[0]
    rows = []
    for m in measurements:
        record = harness.as_record(m)
        if not m.error:
            record["speedup_vs_baseline"] = None if base.error else base.median_s / m.median_s
            record["tflops" if gpu else "gflops"] = work / m.median_s / (1e12 if gpu else 1e9)
        rows.append(record)
    return rows


def time_cross_entropy(device: torch.device, *, quick: bool, repeats: int) -> dict:
    tokens, d, vocab, dtype = CROSS_ENTROPY_SHAPES[device.type]
    hidden = torch.randn(tokens, d, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(vocab, d, device=device) / d**0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=device)
    methods = {name: fn for name, fn in bench_cross_entropy.baselines(device).items() if not (quick and name in COMPILING_BASELINES)}
    results = []
    for name, loss_fn in methods.items():
        log.info("doctor: timing linear_cross_entropy %s", name)
        results.append(harness.measure(name, bench_cross_entropy.make_step(loss_fn, hidden, weight, targets), device, repeats=repeats))
    work = bench_cross_entropy.flops(tokens, d, vocab)
    return {"op": "linear_cross_entropy", "problem": f"tokens {tokens}, d {d}, V {vocab}, {str(dtype).removeprefix('torch.')}, forward + backward",
            "flops": work, "results": _summary(results, work, device.type == "cuda")}


def _attention_methods(device: torch.device, plan: dict) -> dict:
    methods = {"SDPA": bench_attention.sdpa_bthd}
    for backend, where in plan.items():
        if where["runs"] == device.type:
            methods[f"fastscale {backend}"] = lambda q, k, v, b=backend: attention(q, k, v, causal=True, backend=b)
    return methods


def time_attention(device: torch.device, plan: dict, *, repeats: int) -> dict:
    batch, length, heads, head_dim, dtype = ATTENTION_SHAPES[device.type]
    shape = (batch, length, heads, head_dim)
    results = []
    for name, fn in _attention_methods(device, plan).items():
        log.info("doctor: timing attention %s", name)
        inputs = bench_attention.leaves(shape, shape, dtype, device, grad=True)
        results.append(harness.measure(name, bench_attention.runner(fn, inputs, "fwd+bwd"), device, repeats=repeats))
    work = bench_attention.flops([length] * batch, heads, head_dim, causal=True, passes="fwd+bwd")
    return {"op": "attention", "problem": f"batch {batch}, T {length}, heads {heads}, head dim {head_dim}, {str(dtype).removeprefix('torch.')}, causal, forward + backward",
            "flops": work, "results": _summary(results, work, device.type == "cuda")}


def benchmarks(plan: dict, *, quick: bool) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = 3 if quick else 10
    return [time_cross_entropy(device, quick=quick, repeats=repeats), time_attention(device, plan["attention"], repeats=repeats)]
