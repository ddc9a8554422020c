"""Kill a sweep mid-way (SIGKILL to the sweep process), rerun it: same results as an uninterrupted sweep
on CPU with fixed seeds, no finished run retrained. Five very small runs, two at a time (~1 minute)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from processes import started
from sweeps import TINY, curves, trainers_of, wait_for

from fastscale.sweep import SweepSpec, run_sweep
from fastscale.sweep.report import write_report

# every test starts or reads real sweeps
pytestmark = pytest.mark.slow

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
            wait_for(one_done_and_one_checkpointed, 120, "a finished run and a checkpointed running run")
        finally:
            os.kill(sweep.pid, signal.SIGKILL)
            sweep.wait()
        before = json.loads((out / "results.json").read_text())["runs"]
        # the trainers die with their sweep (PR_SET_PDEATHSIG); the rerun takes the sweep's lock only then
        wait_for(lambda: not any(trainers_of(out)), 30, "the killed sweep's trainers to exit")
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


def test_report_of_a_real_sweep_writes_every_file(uninterrupted):
    report = write_report(uninterrupted, n_bootstrap=50)
    for name in ("report.md", "report.json", "L_of_N.png", "L_of_N.svg", "frontier.png", "frontier.svg", "noise_scale.png", "noise_scale.svg"):
        assert (uninterrupted / name).stat().st_size > 0, name
    assert len(report["runs"]) == 5 and "alpha" in report["L_of_N"]["ci"]
    assert "## Runs" in (uninterrupted / "report.md").read_text()
