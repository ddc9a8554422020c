"""A damaged state file of a sweep (results.json, sweep.json, a done run's config.json, study.json) is
one `error:` line from `fastscale sweep` and `fastscale report` (exit code 2) naming the file, the
problem and the way back, changes nothing in OUT, and the way back works: on a sweep directory
written by hand in the real formats (the runner's own index writes, no training) and on one a real
sweep trained (four tiny runs)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from processes import run

from fastscale.cli import main
from fastscale.sweep.index import ResultsIndex, write_state

BOOT = 20
SPEC = {
    "name": "tiny", "data": {"dataset": "digits"}, "seq_len": 193, "tokens_per_item": 192,
    "sizes": [3e3, 7e3, 1.2e4, 1.9e4], "tokens": [6e3], "seeds": [0], "model": {"head_dim": 8}, "lr": 3e-3,
    "train": {"warmup_steps": 2, "log_interval": 1, "eval_interval": 4, "eval_batches": 2, "checkpoint_interval": 4},
    "deepspeed": {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}, "steps_per_print": 1000000000},
}


def snapshot(directory: Path) -> dict:
    """Every file under directory with its bytes and modification time (the sweep's empty .lock aside)."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture
def written(tmp_path):
    """Five done runs as the runner records them (ResultsIndex, keep_previous), with laws the report can fit."""
    out = tmp_path / "sweep"
    out.mkdir()
    write_state(out / "sweep.json", SPEC)
    index = ResultsIndex(out / "results.json")
    for i, n in enumerate([1e4, 3e4, 1e5, 3e5, 1e6]):
        name = f"run{i}"
        run_dir = out / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"n_params": int(n), "model": {"n_layer": 1, "d_model": 16, "n_head": 1}}))
        steps = np.arange(1, 21)
        loss = 1.2 + (5e3 / n) ** 0.35 + (1e9 / (6 * n * steps * 1000)) ** 0.5
        records = [{"step": int(s), "loss": float(l), "flops": 6.0 * n * s * 1000} for s, l in zip(steps, loss)]
        records[-1]["eval_loss"] = float(loss[-1])
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run_dir / "study.json").write_text(json.dumps({"kind": "none"}))
        index.add(name, steps=20)
        index.update(name, "running", attempts=1, run_dir=f"runs/{name}")
        summary = {"steps": 20, "tokens": 20000, "flops": 6.0 * n * 2e4, "final_loss": float(loss[-1]), "final_eval_loss": float(loss[-1]),
                   "tokens_per_s": 100.0}
        index.update(name, "done", returncode=0, summary=summary)
    return out


def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _set_entry(out: Path, change) -> None:
    value = json.loads((out / "results.json").read_text())
    change(value["runs"]["run2"])
    (out / "results.json").write_text(json.dumps(value))


FAULTS = {
    "results truncated": (lambda out: _truncate(out / "results.json"), "results.json", r"the sweep's results index is truncated: its JSON stops mid-value"),
    "runs a list": (lambda out: (out / "results.json").write_text('{"runs": []}'), "results.json",
                    r'of the wrong shape: expected \{"runs": \{NAME: \{"state": \.\.\., "attempts": \.\.\.\}\}\}, got "runs": a list'),
    "no state": (lambda out: _set_entry(out, lambda e: e.pop("state")), "results.json", r"run 'run2' has no \"state\""),
    "unknown state": (lambda out: _set_entry(out, lambda e: e.update(state="finished")), "results.json", r"run 'run2' has state='finished'; expected one of"),
    "summary of the wrong type": (lambda out: _set_entry(out, lambda e: e["summary"].update(tokens="many")), "results.json",
                                  r"run 'run2' \(done\) has a bad \"summary\": tokens='many'; expected a number"),
    "sweep.json not JSON": (lambda out: (out / "sweep.json").write_text('{"name": "tiny",, }'), "sweep.json",
                            r"the sweep file this directory holds is not JSON at line 1, column 17: Expecting property name"),
}
RUN_FAULTS = {
    "config.json truncated": (lambda out: _truncate(out / "runs" / "run1" / "config.json"), "runs/run1/config.json",
                              r"the trainer's config record of run run1 is truncated"),
    "config.json of the wrong shape": (lambda out: (out / "runs" / "run1" / "config.json").write_text('{"n_params": "big"}'), "runs/run1/config.json",
                                       r"the trainer's config record of run run1 is of the wrong shape: n_params='big'; expected a number"),
    "study.json not JSON": (lambda out: (out / "runs" / "run3" / "study.json").write_bytes(b"\x80\x04K\x01."), "runs/run3/study.json",
                            r"the study's measurements of run run3 is not UTF-8 text"),
}


def _error(capsys) -> str:
    """The command's one line on stderr, an `error:` line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_damaged_sweep_state_file_is_one_error_line_and_the_previous_version_restores_it(written, fault, capsys, tmp_path):
    damage, name, problem = FAULTS[fault]
    damage(written)
    before = snapshot(written)
    preset = tmp_path / "tiny.json"  # the sweep file the user ran, outside OUT
    preset.write_text(json.dumps(SPEC))
    for command in (["report", str(written), "--bootstrap", str(BOOT)], ["sweep", str(written), "--preset", str(preset), "--no-report"]):
        assert main(command) == 2
        error = _error(capsys)
        path = re.escape(str(written / name))
        assert re.match(rf"error: {path}: .*{problem}", error), error
        assert re.search(rf"the previous good version is {path}\.prev \(written .* UTC\): restore it with "
                         rf"`fastscale sweep {re.escape(str(written))} --restore-state`$", error), error
        assert snapshot(written) == before  # nothing in OUT changed
    assert main(["sweep", str(written), "--restore-state"]) == 0
    assert f"restored {written / name} from its previous good version" in capsys.readouterr().out
    assert main(["report", str(written), "--bootstrap", str(BOOT)]) == 0
    report = json.loads((written / "report.json").read_text())
    assert len(report["runs"]) >= 4 and report["skipped_lines"] == {}


@pytest.mark.parametrize("fault", sorted(RUN_FAULTS))
def test_a_damaged_file_of_a_done_run_is_one_error_line_naming_it_and_the_retraining(written, fault, capsys):
    damage, name, problem = RUN_FAULTS[fault]
    damage(written)
    before = snapshot(written)
    assert main(["report", str(written), "--bootstrap", str(BOOT)]) == 2
    error = _error(capsys)
    run = name.split("/")[1]
    assert re.match(rf"error: {re.escape(str(written / name))}: {problem}", error), error
    assert error.endswith(f"retrain the run with `fastscale sweep {written} --preset {written / 'sweep.json'} --retrain {run}`"), error
    assert snapshot(written) == before


def test_restore_state_without_a_good_previous_version_is_an_error(written, capsys):
    (written / "results.json").write_text("{")
    (written / "results.json.prev").write_text('{"runs": []}')
    assert main(["sweep", str(written), "--restore-state"]) == 2
    error = _error(capsys)
    assert re.match(rf"error: {re.escape(str(written / 'results.json'))}: the sweep's results index is truncated", error), error
    assert error.endswith(f"; no good previous version is beside it ({written / 'results.json.prev'})"), error
    assert (written / "results.json").read_text() == "{"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A directory a real sweep wrote: four tiny runs, 8 steps each."""
    from fastscale.sweep import SweepSpec, run_sweep

    out = tmp_path_factory.mktemp("trained") / "sweep"
    index = run_sweep(SweepSpec.from_dict(SPEC), out, jobs=2)
    assert sorted(e["state"] for e in index.runs.values()) == ["done"] * 4
    return out


def _cli(*args) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "fastscale.cli", *args], timeout=600, capture_output=True, text=True)


@pytest.mark.slow
def test_a_real_sweep_directory_restored_and_retrained_after_damage(trained, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(trained, out)
    summaries = {name: entry["summary"] for name, entry in json.loads((out / "results.json").read_text())["runs"].items()}

    _truncate(out / "results.json")
    before = snapshot(out)
    for args in (["sweep", str(out), "--preset", str(out / "sweep.json")], ["report", str(out)]):
        done = _cli(*args)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"error: {out / 'results.json'}: the sweep's results index is truncated") and "--restore-state" in line, line
        assert snapshot(out) == before

    done = _cli("sweep", str(out), "--restore-state")
    assert done.returncode == 0 and "restored" in done.stdout, done.stderr
    restored = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(e["state"] for e in restored.values()) == ["done"] * 3 + ["running"]  # the version before the last run's end
    run_name = min(name for name, entry in restored.items() if entry["state"] == "done")
    (out / "runs" / run_name / "config.json").write_text('{"n_params": ')
    done = _cli("report", str(out))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {out / 'runs' / run_name / 'config.json'}: the trainer's config record of run {run_name} is truncated"), line

    # the command the error gives: the restored index's last run resumes too (the previous version has it running)
    command = re.search(r"`fastscale (sweep .*)`$", line).group(1).split()
    done = _cli(*command)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(e["state"] for e in runs.values()) == ["done"] * 4
    for name, entry in runs.items():  # resumed from their final checkpoints: the same results
        assert {k: entry["summary"][k] for k in ("steps", "tokens", "final_loss", "final_eval_loss")} == {
            k: summaries[name][k] for k in ("steps", "tokens", "final_loss", "final_eval_loss")}
    assert json.loads((out / "runs" / run_name / "config.json").read_text())["n_params"] > 0
    assert len(json.loads((out / "report.json").read_text())["runs"]) == 4


def test_a_damaged_sweep_json_with_no_previous_version_says_what_to_copy_there(written, capsys):
    (written / "sweep.json.prev").unlink()
    (written / "sweep.json").write_text("[")
    assert main(["report", str(written)]) == 2
    assert _error(capsys).endswith(f"sweep.json: the sweep file this directory holds is truncated: its JSON stops mid-value after 1 byte; "
                                   f"no good previous version is beside it ({written / 'sweep.json.prev'}); "
                                   "copy the sweep file this directory was run with there (a preset's is in fastscale.sweep.presets)")


def test_restore_state_of_a_directory_that_is_not_there_is_an_error(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none"), "--restore-state"]) == 2
    assert _error(capsys) == f"error: OUT_DIR={str(tmp_path / 'none')!r}: no such sweep directory"
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("damaged", ["summary.json", "study.json"])
def test_a_run_whose_process_left_a_damaged_record_is_failed_and_retried(tmp_path, damaged, caplog):
    """The runner reads what a finished trainer or evaluation wrote through the same checks: a damaged
    file fails the run (retried by the next invocation) with a warning naming it, not a traceback."""
    from fastscale.sweep.runner import _finish_evaluation, _finish_training

    index = ResultsIndex(tmp_path / "results.json")
    index.add("a", steps=8)
    index.update("a", "running", attempts=1, run_dir="runs/a")
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / damaged).write_text('{"kind": "math", "accura')
    if damaged == "summary.json":
        _finish_training(index, run_dir, "a", 0, has_study=False)
    else:
        _finish_evaluation(index, run_dir, "a", 0)
    assert ResultsIndex(tmp_path / "results.json").state("a") == "failed"
    assert any(f"{run_dir / damaged}: " in r.getMessage() and "is truncated" in r.getMessage() for r in caplog.records)
