"""The results index of a sweep: OUT/results.json, one entry per run with its state.

States: pending (not started), running (started; if no sweep is alive, it was interrupted and resumes
from its last checkpoint), trained (summary recorded; the sweep's study has yet to evaluate it),
evaluating (the study's evaluation process is running), done (finished: summary recorded, and the
study's measurements where the sweep has a study), failed (the trainer or the evaluation exited
non-zero; retried on the next invocation: a run with a summary is only evaluated again). Only the sweep process writes it, always atomically
(temporary file, then rename), so a kill at any moment leaves the previous or the next version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastscale.fit.io import write_atomically

STATES = ("pending", "running", "trained", "evaluating", "done", "failed")


class ResultsIndex:
    def __init__(self, path):
        self.path = Path(path)
        self.runs: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.runs = json.loads(self.path.read_text())["runs"]
            except (json.JSONDecodeError, KeyError) as error:
                raise ValueError(f"results index {self.path}: unreadable ({error}); expected {{\"runs\": {{...}}}}") from None

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
        write_atomically(self.path, json.dumps({"runs": self.runs}, indent=2, sort_keys=True))
