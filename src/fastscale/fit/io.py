"""Reading measurements (CSV tables and the trainer's run directories) and writing results atomically.

A table is a dict of column name -> numpy array (float where every entry parses as a number, else str).
Run directories (issue 4's trainer) hold `config.json` (with `n_params`, non-embedding) and
`metrics.jsonl` (one JSON object per logged step; a resumed run appends, so the last record of a
step wins). They become one table row per logged step, with the run's name in column `run`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from fastscale.fit._checks import FitInputError, positive_int

Table = dict
log = logging.getLogger(__name__)


def read_table(path) -> Table:
    """A CSV file, or a run directory (or a directory of run directories) with metrics.jsonl."""
    path = Path(path)
    if path.is_dir():
        return read_runs(path)
    if not path.is_file():
        raise FitInputError(f"DATA={str(path)!r}: no such file or directory")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise FitInputError(f"DATA={str(path)!r}: expected a CSV file with a header and at least one row")
    return {name: _column([row[name] for row in rows]) for name in rows[0]}


def read_runs(directory) -> Table:
    """One row per logged step of every run under `directory` (the directory itself may be a run)."""
    directory = Path(directory)
    metric_files = sorted(directory.glob("metrics.jsonl")) or sorted(directory.glob("*/metrics.jsonl"))
    if not metric_files:
        raise FitInputError(f"DATA={str(directory)!r}: no metrics.jsonl in it or in its subdirectories")
    records = []
    for metrics in metric_files:
        config = _run_config(metrics.parent)
        by_step = {}
        lines = metrics.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            record = _json_line(metrics, number, line, last=number == len(lines))
            if record is not None:
                by_step[record.get("step", number)] = record  # a resumed run appends: last record wins
        for record in by_step.values():
            records.append({"run": metrics.parent.name, "n_params": config.get("n_params"), **record})
    names = list(dict.fromkeys(name for record in records for name in record))
    return {name: _column([record.get(name, "") for record in records]) for name in names}


def _run_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FitInputError(f"{path}: not valid JSON ({error})") from None


def _json_line(path: Path, number: int, line: str, *, last: bool):
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        if last:  # a run killed mid-write leaves a torn last line: skip it, say so
            log.warning("%s:%d: skipped a torn last line %r", path, number, line[:80])
            return None
        raise FitInputError(f"{path}:{number}: not a JSON object: {line[:80]!r}") from None


def _column(values: list) -> np.ndarray:
    try:
        return np.array([float("nan") if v in ("", None) else float(v) for v in values])
    except (TypeError, ValueError):
        return np.array([str(v) for v in values])


def column(table: Table, name: str, *, option: str, source: str = "DATA") -> np.ndarray:
    """The named column; a clear error names the option, the column and the columns there are."""
    if name not in table:
        raise FitInputError(f"{option} {name!r}: no such column in {source}; columns are {sorted(table)}")
    values = table[name]
    if values.dtype.kind not in "fi":
        raise FitInputError(f"{option} {name!r}: expected numbers, got text such as {values[0]!r}")
    return values


def drop_highest_loss(loss: np.ndarray, k: int) -> np.ndarray:
    """Row mask without the k highest losses (Epoch's protocol: keep loss < the k-th highest)."""
    k = positive_int("drop_top_loss", k, minimum=0)
    if k == 0:
        return np.ones(len(loss), dtype=bool)
    if k >= len(loss):
        raise FitInputError(f"drop_top_loss={k}: expected fewer than the {len(loss)} rows")
    return loss < np.sort(loss)[-k]


def write_atomically(path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half a file."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())  # the rename must not land before the data (a crash would leave an empty file)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide results from the rest of a group
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
