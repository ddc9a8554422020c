"""The state files of a sweep, and the results index: OUT/results.json, one entry per run with its state.

States: pending (not started), running (started; if no sweep is alive, it was interrupted and resumes
from its last checkpoint), trained (summary recorded; the sweep's study has yet to evaluate it),
evaluating (the study's evaluation process is running), done (finished: summary recorded, and the
study's measurements where the sweep has a study), failed (the trainer or the evaluation exited
non-zero; retried on the next invocation: a run with a summary is only evaluated again). Only the sweep process writes it, always atomically
(temporary file, then rename), so a kill at any moment leaves the previous or the next version.

Every state file the sweep and the report read goes through fastscale.io.read_json with a check of
the fields they use (`read_state`): results.json, sweep.json, and a run's config.json, summary.json
and study.json. A damaged file is one StateFileError naming it, what is wrong and how to recover.
results.json and sweep.json are written with keep_previous, so the error can offer FILE.prev, and
`fastscale sweep OUT --restore-state` (fastscale.sweep.runner.restore_state) puts it back.
"""

from __future__ import annotations

import time
from numbers import Real
from pathlib import Path

from fastscale.io import json_kind, json_text, read_json, write_atomically

STATES = ("pending", "running", "trained", "evaluating", "done", "failed")
TRAINED = ("trained", "evaluating", "done")  # states that carry the trainer's summary
RESULTS_SHAPE = 'expected {"runs": {NAME: {"state": ..., "attempts": ...}}}'


def _number(value, *, optional: bool = False) -> bool:
    return (value is None and optional) or (isinstance(value, Real) and not isinstance(value, bool))


def check_summary(summary) -> str | None:
    """The trainer's summary.json, as the report reads it."""
    if not isinstance(summary, dict):
        return f"expected an object, got {json_kind(summary)}"
    for key, optional in (("tokens", False), ("flops", False), ("final_loss", True), ("final_eval_loss", True), ("tokens_per_s", True)):
        if not _number(summary.get(key), optional=optional):
            return f"{key}={summary.get(key)!r}; expected a number{' or null' if optional else ''}"
    return None


def _check_entry(name: str, entry) -> str | None:
    if not isinstance(entry, dict):
        return f"run {name!r} is {json_kind(entry)}; expected an object with its \"state\""
    if "state" not in entry:
        return f"run {name!r} has no \"state\" (one of {', '.join(STATES)})"
    if entry["state"] not in STATES:
        return f"run {name!r} has state={entry['state']!r}; expected one of {', '.join(STATES)}"
    attempts = entry.get("attempts")
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        return f"run {name!r} has attempts={attempts!r}; expected an integer >= 0"
    if "steps" in entry and (not isinstance(entry["steps"], int) or isinstance(entry["steps"], bool)):
        return f"run {name!r} has steps={entry['steps']!r}; expected an integer"
    if entry["state"] != "pending" and not isinstance(entry.get("run_dir"), str):
        return f"run {name!r} ({entry['state']}) has run_dir={entry.get('run_dir')!r}; expected its directory under OUT"
    if entry["state"] in TRAINED or "summary" in entry:
        problem = check_summary(entry.get("summary"))
        if problem:
            return f"run {name!r} ({entry['state']}) has a bad \"summary\": {problem}"
    return None


def check_results(value) -> str | None:
    """results.json: every field the runner and the report read, with its type."""
    if not isinstance(value, dict):
        return f"{RESULTS_SHAPE}, got {json_kind(value)}"
    if "runs" not in value:
        return f"{RESULTS_SHAPE}, got an object without \"runs\""
    if not isinstance(value["runs"], dict):
        return f"{RESULTS_SHAPE}, got \"runs\": {json_kind(value['runs'])}"
    for name, entry in value["runs"].items():
        problem = _check_entry(name, entry)
        if problem:
            return problem
    return None


def check_sweep_file(value) -> str | None:
    """sweep.json, the sweep file the directory holds, as the report reads it (the runner compares it whole)."""
    if not isinstance(value, dict):
        return f"expected the sweep file's object, got {json_kind(value)}"
    if value.get("tokens_per_item") is not None and not (isinstance(value["tokens_per_item"], int) and value["tokens_per_item"] > 0):
        return f"tokens_per_item={value['tokens_per_item']!r}; expected a positive integer"
    if "tokens" in value and not isinstance(value["tokens"], list):
        return f"tokens={value['tokens']!r}; expected a list"
    study = value.get("study")
    if study is not None and not (isinstance(study, dict) and isinstance(study.get("kind"), str)):
        return f"study={study!r}; expected an object with a \"kind\""
    return None


def check_run_config(value) -> str | None:
    """A run's config.json (the trainer's), as the report reads it."""
    if not isinstance(value, dict):
        return f"expected an object, got {json_kind(value)}"
    if not _number(value.get("n_params")):
        return f"n_params={value.get('n_params')!r}; expected a number"
    model = value.get("model")
    if not isinstance(model, dict) or not all(isinstance(model.get(key), int) for key in ("n_layer", "d_model", "n_head")):
        return f"model={model!r}; expected an object with integer n_layer, d_model, n_head"
    return None


def check_study(value) -> str | None:
    """A run's study.json (fastscale.sweep.studies): its measurements, tagged with the study's kind."""
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        return f"expected an object with the study's \"kind\", got {json_kind(value)}"
    return None


SWEEP_FILES = {  # name: (what it is, its check, how to recover without a previous version)
    "results.json": ("the sweep's results index", check_results, None),
    "sweep.json": ("the sweep file this directory holds", check_sweep_file,
                   "copy the sweep file this directory was run with there (a preset's is in fastscale.sweep.presets)"),
}
RUN_FILES = {
    "config.json": ("the trainer's config record", check_run_config),
    "summary.json": ("the trainer's summary", check_summary),
    "study.json": ("the study's measurements", check_study),
}


def read_state(path):
    """A state file of a sweep (results.json, sweep.json) or of one of its runs (config.json,
    summary.json, study.json), checked; a damaged one raises StateFileError with the way back."""
    path = Path(path)
    if path.name in SWEEP_FILES:
        what, check, recover = SWEEP_FILES[path.name]
        return read_json(path, what=what, check=check, restore=f"fastscale sweep {path.parent} --restore-state", recover=recover)
    what, check = RUN_FILES[path.name]
    run_dir = path.parent
    return read_json(path, what=f"{what} of run {run_dir.name}", check=check,
                     recover=f"the run's own process writes it: retrain the run with `fastscale sweep {run_dir.parent.parent} --preset "
                             f"{run_dir.parent.parent / 'sweep.json'} --retrain {run_dir.name}`")


def write_state(path, value) -> None:
    """A sweep's state file (results.json, sweep.json), keeping the version it replaces as FILE.prev."""
    write_atomically(path, json_text(value, indent=2, sort_keys=True), keep_previous=True)


class ResultsIndex:
    """results.json in memory: read through its check, saved whole after every change."""

    def __init__(self, path):
        self.path = Path(path)
        self.runs: dict[str, dict] = read_state(self.path)["runs"] if self.path.exists() else {}

    def add(self, name: str, **fields) -> None:
        """Register a run as pending unless it is already known (a rerun keeps its state)."""
        if name not in self.runs:
            self.runs[name] = {"state": "pending", "attempts": 0, **fields}
            self.save()

    def update(self, name: str, state: str, **fields) -> None:
        if state not in STATES:
            raise ValueError(f"state={state!r}; expected one of {STATES}")
        if name not in self.runs:
            raise KeyError(f"run {name!r} is not in the results index {self.path}")
        self.runs[name].update(state=state, updated=time.time(), **fields)
        self.save()

    def state(self, name: str) -> str:
        return self.runs[name]["state"]

    def count(self, state: str) -> int:
        return sum(entry["state"] == state for entry in self.runs.values())

    def save(self) -> None:
        write_state(self.path, {"runs": self.runs})
