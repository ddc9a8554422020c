"""Kill a sweep mid-way (SIGKILL to the sweep process), rerun it: same results as an uninterrupted sweep
on CPU with fixed seeds, no finished run retrained. Five very small runs, two at a time (~1 minute)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from processes import started

from fastscale.sweep import SweepSpec, run_sweep
from fastscale.sweep.report import write_report

# head_dim 8 and one layer: d_model 16, 24, 32, 40, 48 give five distinct shapes from from_params
TINY = {
    "name": "tiny", "data": {"dataset": "digits"}, "seq_len": 193, "tokens_per_item": 192,
    "sizes": [3e3, 7e3, 1.2e4, 1.9e4, 2.8e4], "tokens": [2.4e4], "seeds": [0], "model": {"head_dim": 8}, "lr": 3e-3,
    "train": {"warmup_steps": 2, "log_interval": 1, "eval_interval": 10, "eval_batches": 2, "checkpoint_interval": 5, "noise_scale_interval": 5},
    "deepspeed": {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}, "steps_per_print": 1000000000},
}


def curves(sweep_dir):
    """Each run's learning curve, the last record of each step (a resumed run appends)."""
    out = {}
    for run_dir in sorted((sweep_dir / "runs").iterdir()):
        by_step = {}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            by_step[record["step"]] = (record["loss"], record.get("eval_loss"))
        out[run_dir.name] = by_step
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run_sweep(SweepSpec.from_dict(TINY), out, jobs=2)
    return out


def test_uninterrupted_sweep_finishes_every_run(uninterrupted):
    index = json.loads((uninterrupted / "results.json").read_text())["runs"]
    assert sorted(e["state"] for e in index.values()) == ["done"] * 5
    shapes = {json.dumps(json.loads((uninterrupted / "runs" / n / "config.json").read_text())["model"]["d_model"]) for n in index}
    assert len(shapes) == 5
    for name, entry in index.items():
        assert entry["summary"]["steps"] == 31  # 24,000 / (4 x 193) = 31.1


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_killed_sweep_resumes_to_the_same_results(tmp_path, uninterrupted):
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(json.dumps(TINY))
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "fastscale.cli", "sweep", str(out), "--preset", str(spec_file), "--jobs", "2", "--no-report"]

    def one_done_and_one_checkpointed():
        path = out / "results.json"
        if not path.is_file():
            return False
        runs = json.loads(path.read_text())["runs"]
        done = [n for n, e in runs.items() if e["state"] == "done"]
        mid = [n for n, e in runs.items() if e["state"] == "running" and any((out / "runs" / n / "checkpoints").glob("*/*"))]
        return len(done) >= 1 and len(mid) >= 1

    # the sweep alone is killed (its trainers must die by PR_SET_PDEATHSIG); the whole group only if the test fails
    with started(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as sweep:
        try:
            _wait_for(one_done_and_one_checkpointed, 120, "a finished run and a checkpointed running run")
        finally:
            os.kill(sweep.pid, signal.SIGKILL)
            sweep.wait()
        before = json.loads((out / "results.json").read_text())["runs"]
        # the trainers die with their sweep (PR_SET_PDEATHSIG); the rerun takes the sweep's lock only then
        _wait_for(lambda: not any(_trainers_of(out)), 30, "the killed sweep's trainers to exit")
    finished = {n for n, e in before.items() if e["state"] == "done"}
    interrupted = {n for n, e in before.items() if e["state"] == "running"}
    checkpointed = {n for n in interrupted if any((out / "runs" / n / "checkpoints").glob("*/*"))}
    assert finished and interrupted and len(finished) < 5
    stamps = {n: (out / "runs" / n / "summary.json").stat().st_mtime_ns for n in finished}

    index = run_sweep(SweepSpec.from_dict(TINY), out, jobs=2)

    assert sorted(e["state"] for e in index.runs.values()) == ["done"] * 5
    for name in finished:  # not retrained
        assert index.runs[name]["attempts"] == 1
        assert (out / "runs" / name / "summary.json").stat().st_mtime_ns == stamps[name]
    for name in interrupted:
        assert index.runs[name]["attempts"] == 2
    for name in checkpointed:  # continued from its checkpoint: step 1 was trained once
        steps = [json.loads(line)["step"] for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert steps.count(1) == 1, name
    reference = json.loads((uninterrupted / "results.json").read_text())["runs"]
    for name, entry in index.runs.items():
        assert entry["summary"]["final_loss"] == reference[name]["summary"]["final_loss"], name
        assert entry["summary"]["final_eval_loss"] == reference[name]["summary"]["final_eval_loss"], name
    assert curves(out) == curves(uninterrupted)


def _trainers_of(out):
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if str(out / "runs") in cmdline:
                yield pid


def test_report_of_a_real_sweep_writes_every_file(uninterrupted):
    report = write_report(uninterrupted, n_bootstrap=50)
    for name in ("report.md", "report.json", "L_of_N.png", "L_of_N.svg", "frontier.png", "frontier.svg", "noise_scale.png", "noise_scale.svg"):
        assert (uninterrupted / name).stat().st_size > 0, name
    assert len(report["runs"]) == 5 and "alpha" in report["L_of_N"]["ci"]
    assert "## Runs" in (uninterrupted / "report.md").read_text()
