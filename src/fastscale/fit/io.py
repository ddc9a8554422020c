"""Reading measurements: CSV tables and the trainer's run directories.

A table is a dict of column name -> numpy array (float where every cell is a number or empty, else
str) that also remembers where each row came from, so an error about a cell names the file and the
line a text editor shows. A CSV is read strictly: every row has exactly the header's fields, the
header's names are unique and non-empty; anything else is an error naming the file, the line, the
column and the value (a silently shifted or ignored field would fit the wrong numbers).

Run directories (issue 4's trainer) hold `config.json` (with `n_params`, non-embedding) and
`metrics.jsonl`, read by `fastscale.io.read_metrics` (the last record of a step wins; torn lines are
skipped and counted, and the count travels with the table to the fit report). They become one table
row per logged step, with the run's name in column `run`.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from fastscale.fit._checks import FitInputError, positive_int
from fastscale.io import read_metrics


class Table(dict):
    """Column name -> 1-D numpy array; `origin[i]` says where row i came from ("runs.csv line 7",
    "run3/metrics.jsonl step 40") and `skipped` what reading left out (one message per file)."""

    def __init__(self, columns: dict, origin, skipped=()):
        super().__init__(columns)
        self.origin = np.asarray(origin, dtype=str)
        self.skipped = tuple(skipped)

    def rows(self, keep) -> Table:
        """The rows selected by a boolean mask or index array."""
        return Table({name: values[keep] for name, values in self.items()}, self.origin[keep], self.skipped)


def read_table(path) -> Table:
    """A CSV file, or a run directory (or a directory of run directories) with metrics.jsonl."""
    path = Path(path)
    if path.is_dir():
        return read_runs(path)
    if not path.is_file():
        raise FitInputError(f"DATA={str(path)!r}: no such file or directory")
    header, rows, lines = _csv_rows(path)
    if not rows:
        raise FitInputError(f"DATA={str(path)!r}: expected a CSV file with a header and at least one row")
    columns = {name: _column([row[j] for row in rows]) for j, name in enumerate(header)}
    return Table(columns, [f"{path} line {line}" for line in lines])


def _csv_rows(path: Path):
    """(header, rows, line numbers) with every row checked against the header."""
    header, rows, lines = None, [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: spreadsheets write a BOM
            reader = csv.reader(handle)
            end = 0
            for row in reader:
                start, end = end + 1, reader.line_num  # a quoted field can span lines: name the first
                if not "".join(row).strip() and len(row) <= 1:
                    continue  # a blank line
                if header is None:
                    header = _checked_header(path, start, row)
                    continue
                _check_fields(path, start, header, row)
                rows.append(row)
                lines.append(start)
    except UnicodeDecodeError as error:
        raise FitInputError(f"DATA={str(path)!r}: not UTF-8 text ({error})") from None
    except csv.Error as error:
        raise FitInputError(f"DATA={str(path)!r} line {reader.line_num}: not a readable CSV row ({error})") from None
    return header or [], rows, lines


def _checked_header(path: Path, line: int, header: list) -> list:
    empty = [j + 1 for j, name in enumerate(header) if not name.strip()]
    if empty:
        raise FitInputError(f"{path} line {line}: column {empty[0]} of the header has an empty name (header: {header})")
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if repeated:
        where = [j + 1 for j, name in enumerate(header) if name == repeated[0]]
        raise FitInputError(f"{path} line {line}: column name {repeated[0]!r} appears more than once (columns {where}); each column needs its own name")
    return header


def _check_fields(path: Path, line: int, header: list, row: list) -> None:
    if len(row) > len(header):
        extra = row[len(header) :]
        raise FitInputError(
            f"{path} line {line}: {len(row)} field{'s' * (len(row) != 1)}, expected {len(header)} as in the header {header}; "
            f"extra value{'s' * (len(extra) > 1)} {', '.join(map(repr, extra))} after column {header[-1]!r}"
        )
    if len(row) < len(header):
        missing = header[len(row) :]
        raise FitInputError(
            f"{path} line {line}: {len(row)} field{'s' * (len(row) != 1)}, expected {len(header)} as in the header {header}; "
            f"no value for column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}"
        )


def read_runs(directory) -> Table:
    """One row per logged step of every run under `directory` (the directory itself may be a run)."""
    directory = Path(directory)
    metric_files = sorted(directory.glob("metrics.jsonl")) or sorted(directory.glob("*/metrics.jsonl"))
    if not metric_files:
        raise FitInputError(f"DATA={str(directory)!r}: no metrics.jsonl in it or in its subdirectories")
    records, origin, skipped = [], [], []
    for metrics in metric_files:
        config = _run_config(metrics.parent)
        curve = read_metrics(metrics)
        if curve.skipped:
            skipped.append(curve.note)
        for record in curve.records:
            records.append({"run": metrics.parent.name, "n_params": config.get("n_params"), **record})
            origin.append(f"{metrics} step {record['step']}")
    if not records:
        files = ", ".join(map(str, metric_files))
        raise FitInputError(f"DATA={str(directory)!r}: no readable record in {files}" + "".join(f"; {note}" for note in skipped))
    names = list(dict.fromkeys(name for record in records for name in record))
    return Table({name: _column([record.get(name, "") for record in records]) for name in names}, origin, skipped)


def _run_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise FitInputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise FitInputError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _column(values: list) -> np.ndarray:
    try:
        return np.array([_number(v) for v in values])
    except (TypeError, ValueError):
        return np.array([str(v) for v in values])


def _number(value) -> float:
    """A cell as a number; empty (and JSON null, which strict JSON writes for nan) is nan."""
    return float("nan") if value in ("", None) else float(value)


def column(table: Table, name: str, *, option: str, source: str = "DATA") -> np.ndarray:
    """The named column; a clear error names the option, the column and the columns there are, or the
    first cell that is not a number and where it is."""
    if name not in table:
        raise FitInputError(f"{option} {name!r}: no such column in {source}; columns are {sorted(table)}")
    values = table[name]
    if values.dtype.kind not in "fi":
        bad = next(i for i, value in enumerate(values) if not _parses(value))
        raise FitInputError(f"{option} {name!r}: expected numbers, got {str(values[bad])!r} at {table.origin[bad]}")
    return values


def _parses(value: str) -> bool:
    try:
        _number(value)
    except ValueError:
        return False
    return True


def drop_highest_loss(loss: np.ndarray, k: int) -> np.ndarray:
    """Row mask without the k highest losses (Epoch's protocol: keep loss < the k-th highest)."""
    k = positive_int("drop_top_loss", k, minimum=0)
    if k == 0:
        return np.ones(len(loss), dtype=bool)
    if k >= len(loss):
        raise FitInputError(f"drop_top_loss={k}: expected fewer than the {len(loss)} rows")
    return loss < np.sort(loss)[-k]
