"""`fastscale doctor` on this machine: it runs, writes doctor.json with every section, the torch
backends pass the numerics checks (and, without a GPU, the Triton backends under the interpreter), and
a deliberately wrong backend is reported as FAILED with exit code 1 (the check can fail)."""

import json
import os
import sys

import pytest
import torch

import processes

from fastscale import cli, doctor
from fastscale.doctor import numerics, speed, system
from fastscale.ops import attention_torch, cross_entropy_torch

OPS = {"linear_cross_entropy": {"torch", "triton", "cuda"}, "attention": {"torch", "triton", "flash_attn"}}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`fastscale doctor --quick` as a user runs it: its exit code, output and doctor.json."""
    out = tmp_path_factory.mktemp("doctor")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest's: the doctor chooses for itself
    done = processes.run([sys.executable, "-m", "fastscale.cli", "doctor", "--quick", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    report = json.loads((out / "doctor.json").read_text()) if (out / "doctor.json").exists() else None
    return done, report


@pytest.mark.slow
def test_quick_run_succeeds_and_prints_every_section(quick_run):
    done, report = quick_run
    assert done.returncode == 0, done.stdout + done.stderr
    for heading in ("versions:", "CUDA:", "backends", "numerics against float64", "speed: linear_cross_entropy", "speed: attention", "checks:"):
        assert heading in done.stdout
    assert report is not None


@pytest.mark.slow
def test_report_structure(quick_run):
    _, report = quick_run
    assert set(report["versions"]) == {"python", *system.PACKAGES}
    assert report["versions"]["torch"] == torch.__version__
    assert {"cpu", "cpu_count", "gpus"} <= report["devices"].keys()
    assert len(report["devices"]["gpus"]) == torch.cuda.device_count()
    assert report["cuda"]["torch_cuda"] == torch.version.cuda
    assert {op: set(b) for op, b in report["backends"].items()} == OPS
    for backends in report["backends"].values():
        for where in backends.values():
            assert where["runs"] in (system.GPU, system.CPU, system.INTERPRETER, None)
            assert where["runs"] in (system.GPU, system.CPU) or where["reason"], "a backend that does not run natively says why"
    assert {b["op"] for b in report["benchmarks"]} == set(OPS)
    assert report["failed"] == 0


@pytest.mark.slow
def test_extension_versions_are_reported(quick_run):
    _, report = quick_run
    try:
        from fastscale import _C
    except ImportError:
        assert report["cuda"]["extension_built"] is False
        return
    assert {k: report["cuda"][k] for k in ("runtime_compiled", "runtime", "driver")} == _C.cuda_versions()
    if not torch.cuda.is_available():
        assert report["cuda"]["extension_problem"].startswith("fastscale._C: no CUDA device is available")


@pytest.mark.slow
def test_torch_backends_pass_their_checks(quick_run):
    _, report = quick_run
    for op in OPS:
        checks = [c for c in report["checks"] if c["op"] == op and c["backend"] == "torch"]
        assert {c["dtype"] for c in checks} >= {"float32", "bfloat16"}
        for c in checks:
            assert c["status"] == "passed", c
            assert set(c["errors"]) == ({"loss", "lse", "d_hidden", "d_weight", "d_bias"} if op == "linear_cross_entropy" else {"out", "dq", "dk", "dv"})
            assert all(0 <= error <= bound for error, bound in c["errors"].values())


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the Triton backends run natively")
def test_triton_backends_are_checked_under_the_interpreter(quick_run):
    _, report = quick_run
    for op in OPS:
        assert report["backends"][op]["triton"]["runs"] == system.INTERPRETER
        checks = [c for c in report["checks"] if c["op"] == op and c["backend"] == "triton"]
        assert checks and all(c["status"] == "passed" for c in checks), checks
        assert {c["device"] for c in checks} == {"cpu (Triton interpreter)"}
        assert {c["dtype"] for c in checks} == ({"float32", "float16"} if op == "linear_cross_entropy" else {"float16"})


@pytest.mark.slow
def test_benchmark_times_the_torch_backends_beside_the_baselines(quick_run):
    _, report = quick_run
    for bench in report["benchmarks"]:
        names = [r["name"] for r in bench["results"]]
        assert "fastscale torch" in names and len(names) >= 2
        torch_row = bench["results"][names.index("fastscale torch")]
        assert torch_row["error"] is None and torch_row["median_s"] > 0 and len(torch_row["times_s"]) == 3
        assert not any(name in speed.COMPILING_BASELINES for name in names), "--quick leaves out compiling baselines"


def _wrong(fn, scale):
    """fn with its first result (a tensor or a tuple's first tensor) off by `scale`."""
    def wrapped(*args, **kwargs):
        result = fn(*args, **kwargs)
        if isinstance(result, tuple):
            return (result[0] * scale, *result[1:])
        return result * scale
    return wrapped


@pytest.mark.parametrize("scale,caught", [
    (1.003, ("float32",)),  # 0.3% off: within bfloat16's bounds, 5x beyond float32's
    (2.0, ("float32", "bfloat16")),
])
def test_a_wrong_backend_is_reported_as_failed(monkeypatch, tmp_path, capsys, scale, caught):
    monkeypatch.setattr(cross_entropy_torch, "gradients", _wrong(cross_entropy_torch.gradients, scale))
    monkeypatch.setattr(attention_torch, "attention", _wrong(attention_torch.attention, scale))
    torch_only = {op: {"torch": {"runs": system.CPU, "reason": None}} for op in OPS}
    monkeypatch.setattr(system, "backend_plan", lambda: torch_only)
    monkeypatch.setattr(speed, "benchmarks", lambda plan, quick: [])
    assert cli.main(["doctor", "--quick", "--out", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "doctor.json").read_text())
    failed = {(c["op"], c["dtype"]) for c in report["checks"] if c["status"] == "FAILED"}
    assert failed == {(op, dtype) for op in OPS for dtype in caught}
    assert report["failed"] == len(failed)
    output = capsys.readouterr().out
    assert f"{len(failed)} FAILED" in output and "d_hidden" in output


def test_a_crashing_backend_is_an_error_not_a_pass(monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("kernel crashed")

    monkeypatch.setattr(attention_torch, "attention", crash)
    [result] = numerics.run_checks({"attention": ["torch"]}, "cpu", quick=True)[:1]
    assert result.status == "error" and "kernel crashed" in result.reason
    assert "error" in doctor.render({**_empty_report(), "checks": [vars(result)]})


def _empty_report():
    return {"versions": {"python": "3"}, "devices": {"cpu": "x", "cpu_count": 1, "torch_threads": 1, "gpus": []},
            "cuda": {"torch_cuda": None, "extension_built": False, "extension_problem": None}, "backends": {}, "checks": [],
            "benchmarks": [], "failed": 0}
