"""A sweep with a study, killed (SIGKILL) while a run's study evaluation is running, then rerun: every
run ends done with the same study.json as an uninterrupted sweep; finished runs are neither retrained
nor re-evaluated, and the killed evaluation's run is evaluated again without retraining."""

import json
import os
import signal
import subprocess
import sys

import pytest

from fastscale.sweep import SweepSpec, run_sweep
from fastscale.sweep.report import write_report

from processes import started
from sweeps import trainers_of, wait_for

# every test starts or reads real sweeps
pytestmark = pytest.mark.slow

TINY_MATH = {
    "name": "tiny-math", "data": {"dataset": "math", "difficulty": [1, 2], "count": 3000, "seed": 0}, "seq_len": 32,
    "sizes": [3e3, 7e3, 1.2e4, 1.9e4], "tokens": [6e3], "seeds": [0], "model": {"head_dim": 8}, "lr": 3e-3,
    "train": {"warmup_steps": 2, "eval_interval": 20, "eval_batches": 2, "checkpoint_interval": 10, "noise_scale_interval": 0},
    "deepspeed": {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9},
    "study": {"kind": "math", "eval_levels": [1, 2, 3], "eval_count": 64, "eval_seed": 7},
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("math-uninterrupted")
    run_sweep(SweepSpec.from_dict(TINY_MATH), out, jobs=2)
    return out


def study_results(out):
    return {d.name: json.loads((d / "study.json").read_text()) for d in sorted((out / "runs").iterdir())}


def test_every_run_is_trained_then_evaluated(uninterrupted):
    index = json.loads((uninterrupted / "results.json").read_text())["runs"]
    assert sorted(e["state"] for e in index.values()) == ["done"] * 4
    for name, result in study_results(uninterrupted).items():
        assert result["kind"] == "math" and [level["level"] for level in result["levels"]] == [1, 2, 3], name


def test_killed_during_evaluation_resumes_to_the_same_results(tmp_path, uninterrupted):
    spec_file = tmp_path / "tiny-math.json"
    spec_file.write_text(json.dumps(TINY_MATH))
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "fastscale.cli", "sweep", str(out), "--preset", str(spec_file), "--jobs", "2", "--no-report"]

    def evaluating():
        path = out / "results.json"
        return path.is_file() and any(e["state"] == "evaluating" for e in json.loads(path.read_text())["runs"].values())

    # the sweep alone is killed (its children must follow); the whole group only if the test fails
    with started(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as sweep:
        try:
            wait_for(evaluating, 180, "a run in its study evaluation")
        finally:
            os.kill(sweep.pid, signal.SIGKILL)
            sweep.wait()
        before = json.loads((out / "results.json").read_text())["runs"]
        killed = {n for n, e in before.items() if e["state"] == "evaluating"}
        finished = {n for n, e in before.items() if e["state"] == "done"}
        assert killed
        stamps = {n: (out / "runs" / n / "study.json").stat().st_mtime_ns for n in finished}
        wait_for(lambda: not any(trainers_of(out)), 30, "the killed sweep's processes to exit")

    index = run_sweep(SweepSpec.from_dict(TINY_MATH), out, jobs=2)

    assert sorted(e["state"] for e in index.runs.values()) == ["done"] * 4
    for name in killed | finished:  # trained once
        assert index.runs[name]["attempts"] == 1, name
    for name in finished:  # not evaluated again
        assert (out / "runs" / name / "study.json").stat().st_mtime_ns == stamps[name]
    assert study_results(out) == study_results(uninterrupted)


def test_report_has_the_study_section(uninterrupted):
    report = write_report(uninterrupted, n_bootstrap=20)
    assert report["study"]["kind"] == "math"
    assert "math_loss_vs_N.png" in report["plots"] and (uninterrupted / "math_loss_vs_N.png").stat().st_size > 0
    text = (uninterrupted / "report.md").read_text()
    assert text.index("## Forecast") < text.index("level") < text.index("## Runs")
