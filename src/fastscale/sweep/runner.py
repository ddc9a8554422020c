"""Run a sweep: each grid point is one trainer process (fastscale.train.launch.main, what `python
train.py` runs) in OUT/runs/NAME, at most `jobs` at a time, tracked in the results index.

Resume: a rerun skips done runs and restarts the others with --resume, so the trainer continues from
the newest complete checkpoint (or from scratch if there is none). With a study (fastscale.sweep.studies)
a trained run is evaluated in a second process (`python -m fastscale.sweep.studies RUN_DIR`) and is done
only once RUN_DIR/study.json is written; a run that trained but was not evaluated is only evaluated. Children get SIGTERM when the sweep
process dies (Linux PR_SET_PDEATHSIG), so killing the sweep by any signal leaves no orphan training.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from fastscale.fit.io import write_atomically

from .index import ResultsIndex
from .spec import Run, SweepError, SweepSpec, study_options

logger = logging.getLogger(__name__)

# Two concurrent runs on this 2-core CPU: each trainer process runs one thread (OMP_NUM_THREADS=1), and
# models of 1e4-1e6 parameters gain little from a second thread (per-op overhead dominates), so one
# run per core keeps both cores busy.
DEFAULT_JOBS = max(1, min(2, os.cpu_count() or 1))
POLL_S = 0.2
TRAINER = "import sys; from fastscale.train.launch import main; sys.exit(main())"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _lock(out_dir: Path):
    handle = open(out_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SweepError(f"OUT_DIR={str(out_dir)!r}: another sweep is running in it") from None
    return handle


def _check_same_sweep(out_dir: Path, spec: SweepSpec) -> None:
    """A rerun must be the same sweep: resuming with a different grid would mix two studies."""
    path = out_dir / "sweep.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != spec.raw:
            raise SweepError(f"OUT_DIR={str(out_dir)!r} holds a different sweep ({path}); use a new directory or the same preset/file")
    else:
        write_atomically(path, json.dumps(spec.raw, indent=2))


def _check_configs(spec: SweepSpec, runs: list[Run]) -> None:
    """The trainer's own checks of every run config and of the DeepSpeed config, before any work starts."""
    from fastscale.train.config import ConfigError, RunConfig, check_deepspeed_config

    try:
        check_deepspeed_config(spec.deepspeed, world_size=1, device_type="cpu")
        for run in runs:
            RunConfig.from_dict(spec.run_config(run, spec.data), where=f"sweep run {run.name}")
    except ConfigError as error:
        raise SweepError(str(error)) from None


def prepare_data(spec: SweepSpec, out_dir: Path) -> dict:
    """Every run reads the same shards: {"dataset": ...} is prepared once into OUT/data."""
    if "dataset" not in spec.data:
        return spec.data
    from fastscale.data.prepare import prepare

    target = out_dir / "data"
    if not (target / "meta.json").is_file():
        temporary = out_dir / ".data.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        options = {k: v for k, v in spec.data.items() if k != "dataset"}
        meta = prepare(spec.data["dataset"], temporary, **options)
        write_atomically(temporary / "meta.json", json.dumps(meta, indent=2, default=str))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(temporary, target)
    return {"path": str(target.resolve())}


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}  # each run is its own world of one
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = open(log_path, "a")
    try:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
    finally:
        log.close()


def _start_training(run_dir: Path, config: dict, deepspeed: dict, resume: bool) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(run_dir / "run.json", json.dumps(config, indent=2))
    write_atomically(run_dir / "ds.json", json.dumps(deepspeed, indent=2))
    args = [sys.executable, "-c", TRAINER, "--config", str(run_dir / "run.json"), "--deepspeed_config", str(run_dir / "ds.json"),
            "--out", str(run_dir), "--no-progress"] + (["--resume"] if resume else [])
    return _spawn(args, run_dir / "train.log")


def _start_evaluation(run_dir: Path, study: dict, data: dict) -> subprocess.Popen:
    """The study's measurements of a trained run, in a process of its own (torch, one thread)."""
    task = {"kind": study["kind"], "options": study_options(study), "data_dir": data["path"]}
    write_atomically(run_dir / "study_task.json", json.dumps(task, indent=2))
    return _spawn([sys.executable, "-m", "fastscale.sweep.studies", str(run_dir)], run_dir / "study.log")


def run_sweep(spec: SweepSpec, out_dir, *, jobs: int = DEFAULT_JOBS, on_update: Callable[[str, str], None] | None = None,
              on_step: Callable[[str, int, int], None] | None = None) -> ResultsIndex:
    """Train (and, with a study, evaluate) every run of the grid not yet done; returns the results
    index. on_update(name, state) is called whenever a run's process starts or ends, on_step(name,
    step, steps) as a training run logs steps."""
    if not isinstance(jobs, int) or jobs < 1:
        raise SweepError(f"jobs={jobs!r}; expected a positive integer")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(out_dir)
    try:
        runs = spec.runs()
        _check_configs(spec, runs)
        _check_same_sweep(out_dir, spec)
        data = prepare_data(spec, out_dir)
        index = ResultsIndex(out_dir / "results.json")
        for run in runs:
            index.add(run.name, n_target=run.n_target, tokens_target=run.tokens, seed=run.seed, steps=run.steps, lr=run.lr)
        todo = [_next_task(index, run) for run in runs if index.state(run.name) != "done"]
        logger.info("sweep %s: %d runs, %d done, %d to do, %d at a time", spec.name, len(runs), len(runs) - len(todo), len(todo), jobs)
        _schedule(spec, out_dir, data, index, todo, jobs, on_update, on_step)
        return index
    finally:
        lock.close()


def _next_task(index: ResultsIndex, run: Run) -> tuple[str, Run]:
    """A run with a recorded summary has trained: only its study evaluation is left."""
    return ("evaluate" if "summary" in index.runs[run.name] else "train", run)


def _schedule(spec, out_dir, data, index, todo, jobs, on_update, on_step) -> None:
    active: dict[str, tuple[str, Run, subprocess.Popen]] = {}
    try:
        while todo or active:
            while todo and len(active) < jobs:
                task, run = todo.pop(0)
                run_dir = out_dir / "runs" / run.name
                if task == "train":
                    resume = index.runs[run.name]["attempts"] > 0  # started before: continue from its checkpoint
                    process = _start_training(run_dir, spec.run_config(run, data), spec.deepspeed, resume)
                    index.update(run.name, "running", attempts=index.runs[run.name]["attempts"] + 1, run_dir=str(run_dir.relative_to(out_dir)))
                else:
                    process = _start_evaluation(run_dir, spec.study, data)
                    index.update(run.name, "evaluating")
                active[run.name] = (task, run, process)
                on_update and on_update(run.name, index.state(run.name))
            time.sleep(POLL_S)
            for name in active if on_step else ():
                if active[name][0] == "train":
                    on_step(name, _last_step(out_dir / "runs" / name / "metrics.jsonl"), index.runs[name]["steps"])
            for name, (task, run, process) in list(active.items()):
                if process.poll() is not None:
                    del active[name]
                    run_dir = out_dir / "runs" / name
                    if task == "train":
                        _finish_training(index, run_dir, name, process.returncode, has_study=spec.study is not None)
                    else:
                        _finish_evaluation(index, run_dir, name, process.returncode)
                    on_update and on_update(name, index.state(name))
                    if index.state(name) == "trained":  # evaluate it next, while its model is fresh on disk
                        todo.insert(0, ("evaluate", run))
    finally:
        for _, _, process in active.values():  # interrupted: stop the children; they resume next time
            process.terminate()
        for _, _, process in active.values():
            process.wait()


def _last_step(metrics_path: Path) -> int:
    """The newest logged step (log_interval 1 in the presets), from the file's last complete line."""
    try:
        with open(metrics_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def _finish_training(index: ResultsIndex, run_dir: Path, name: str, returncode: int, *, has_study: bool) -> None:
    summary_path = run_dir / "summary.json"
    if returncode == 0 and summary_path.is_file():
        summary = _complete(json.loads(summary_path.read_text()), run_dir / "metrics.jsonl")
        index.update(name, "trained" if has_study else "done", returncode=0, summary=summary)
    else:
        logger.warning("run %s failed (exit code %d); see %s", name, returncode, run_dir / "train.log")
        index.update(name, "failed", returncode=returncode)


def _finish_evaluation(index: ResultsIndex, run_dir: Path, name: str, returncode: int) -> None:
    if returncode == 0 and (run_dir / "study.json").is_file():
        index.update(name, "done", returncode=0)
    else:
        logger.warning("study evaluation of run %s failed (exit code %d); see %s", name, returncode, run_dir / "study.log")
        index.update(name, "failed", returncode=returncode)


def _complete(summary: dict, metrics_path: Path) -> dict:
    """The trainer's summary covers its own process: resumed from the final checkpoint (killed after it
    and before the summary), it trains no step and reports final losses of None. The learning curve
    (last record of each step) has them."""
    if summary.get("final_loss") is not None and summary.get("final_eval_loss") is not None:
        return summary
    records = {}
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
        records[record["step"]] = record
    curve = [records[step] for step in sorted(records)]
    evals = [r["eval_loss"] for r in curve if r.get("eval_loss") is not None]
    if summary.get("final_loss") is None and curve:
        summary["final_loss"] = curve[-1]["loss"]
    if summary.get("final_eval_loss") is None and evals:
        summary["final_eval_loss"] = evals[-1]
    return summary
