"""`fastscale doctor`: is fastscale right and fast on this machine? In the spirit of DeepSpeed's
ds_report, it reports

1. versions (python, torch, triton, deepspeed, liger-kernel, cut-cross-entropy, flash-attn, fastscale),
   devices (CPU; GPUs with capability and memory), torch's CUDA, the CUDA runtime fastscale._C was
   compiled with and the driver (system.py);
2. which backend of each op can run here, and why not (system.backend_plan);
3. a numerics self-check of every backend that can run, on small odd shapes against a float64
   reference with the test suite's criteria (numerics.py). Without a GPU the Triton backends are
   checked under Triton's interpreter in a subprocess (the interpreter is chosen at import time);
4. a short benchmark of the backends against the installed baselines (speed.py).

`run` returns the report and writes it atomically to DIR/doctor.json; `render` formats it as text
(the command prints it). A check that fails is "FAILED" in both, and the command exits with 1.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from fastscale.io import write_json
from fastscale.tables import format_table

from . import numerics, speed, system

log = logging.getLogger(__name__)

INTERPRETER_TIMEOUT_S = 300


def run(out_dir: str | os.PathLike, *, quick: bool = False) -> dict:
    """Collects the report, writes DIR/doctor.json and returns it."""
    plan = system.backend_plan()
    report = {
        "versions": system.versions(),
        "devices": system.devices(),
        "cuda": system.cuda(),
        "backends": plan,
        "quick": quick,
        "seed": numerics.SEED,
        "checks": [asdict(r) for r in self_check(plan, quick=quick)],
        "benchmarks": speed.benchmarks(plan, quick=quick),
    }
    report["failed"] = sum(c["status"] in ("FAILED", "error") for c in report["checks"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "doctor.json", report, indent=2)
    return report


def self_check(plan: dict, *, quick: bool) -> list[numerics.CheckResult]:
    """The numerics checks of every backend that can run here: in this process on the GPU or CPU,
    in an interpreter subprocess for the Triton backends without a GPU."""
    native = {op: [b for b, where in backends.items() if where["runs"] in (system.GPU, system.CPU)] for op, backends in plan.items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = numerics.run_checks(native, device, quick=quick)
    interpreted = [f"{op}={b}" for op, backends in plan.items() for b, where in backends.items() if where["runs"] == system.INTERPRETER]
    if interpreted:
        results += _interpreted_checks(interpreted, quick=quick)
    return results


def _interpreted_checks(pairs: list[str], *, quick: bool) -> list[numerics.CheckResult]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OPENBLAS_NUM_THREADS": "1"}  # tiny numpy matmuls: threads only cost
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "checks.json"
        cmd = [sys.executable, "-m", "fastscale.doctor.numerics", str(out), "cpu", "1" if quick else "0", *pairs]
        log.info("doctor: %s", " ".join(cmd))
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INTERPRETER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return [_interpreter_error(p, f"the interpreter did not finish in {INTERPRETER_TIMEOUT_S} s") for p in pairs]
        if done.returncode != 0:
            return [_interpreter_error(p, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}") for p in pairs]
        return [numerics.CheckResult(**r) for r in json.loads(out.read_text())]


def _interpreter_error(pair: str, reason: str) -> numerics.CheckResult:
    op, backend = pair.split("=")
    return numerics.CheckResult(op, backend, "cpu (Triton interpreter)", "-", "-", "error", reason=reason)


# ------------------------------------------------------------------------------------ text


def render(report: dict) -> str:
    return "\n\n".join([_render_system(report), _render_backends(report), _render_checks(report),
                        *(_render_benchmark(b) for b in report["benchmarks"]), _render_verdict(report)])


def _render_system(report: dict) -> str:
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in report["versions"].items())
    dev, cuda = report["devices"], report["cuda"]
    gpus = "; ".join(f"{g['index']}: {g['name']} (sm_{g['capability'].replace('.', '')}, {g['memory_bytes'] / 2**30:.0f} GiB)" for g in dev["gpus"]) or "none"
    lines = [f"versions: {versions}", f"CPU: {dev['cpu']} ({dev['cpu_count']} cores, torch uses {dev['torch_threads']} threads)", f"GPUs: {gpus}"]
    runtime = (f"fastscale._C compiled with CUDA runtime {_cuda_text(cuda['runtime_compiled'])}, driver supports CUDA {_cuda_text(cuda['driver'])}"
               if cuda["extension_built"] else "fastscale._C not built")
    lines.append(f"CUDA: torch built with {cuda['torch_cuda'] or 'no CUDA'}; {runtime}")
    if cuda["extension_problem"]:
        lines.append(f"  {cuda['extension_problem']}")
    return "\n".join(lines)


def _cuda_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}" if version else "none (no driver)"


def _render_backends(report: dict) -> str:
    lines = ["backends (where each can run here; why not)"]
    for op, backends in report["backends"].items():
        for backend, where in backends.items():
            lines.append(f"  {op} {backend}: {where['runs'] or 'cannot run'}" + (f": {where['reason']}" if where["reason"] else ""))
    return "\n".join(lines)


def _render_checks(report: dict) -> str:
    rows = []
    for c in report["checks"]:
        detail = c["reason"] if c["status"] in ("error", "unsupported") else f"{c['worst']}: {c['error']:.2g} <= {c['bound']:.2g}" if c["status"] == "passed" else f"{c['worst']}: {c['error']:.2g} > {c['bound']:.2g}"
        rows.append([c["op"], c["backend"], c["device"], c["dtype"], c["shape"], c["status"], detail])
    return "numerics against float64 (the tests' criteria)\n" + format_table(["op", "backend", "device", "dtype", "shape", "result", "worst error / bound"], rows)


def _render_benchmark(bench: dict) -> str:
    rows = []
    for r in bench["results"]:
        if r["error"]:
            rows.append([r["name"], "-", "-", "-", "-", f"failed: {r['error']}"])
            continue
        speedup = f"{r['speedup_vs_baseline']:.2f}x" if r["speedup_vs_baseline"] else "-"
        throughput = f"{r['tflops']:.0f} TFLOP/s" if "tflops" in r else f"{r['gflops']:.1f} GFLOP/s"
        rows.append([r["name"], f"{r['median_s'] * 1e3:.2f}", speedup, throughput, f"{r['peak_bytes'] / 2**20:.0f}", ""])
    header = ["method", "median ms", "speed vs first row", "throughput", "peak MiB", "note"]
    return f"speed: {bench['op']}, {bench['problem']}\n" + format_table(header, rows)


def _render_verdict(report: dict) -> str:
    counts = {s: sum(c["status"] == s for c in report["checks"]) for s in ("passed", "FAILED", "error", "unsupported")}
    text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    needs_gpu = [f"{op} {b}" for op, bs in report["backends"].items() for b, w in bs.items() if w["runs"] != system.GPU and b != "torch"]
    lines = [f"checks: {text}"]
    if needs_gpu:
        lines.append(f"needs a GPU to check natively and to time: {', '.join(needs_gpu)}")
    return "\n".join(lines)
