"""Files of a run directory and a sweep: atomic writes, strict JSON, and the one metrics reader.

Everything fastscale writes goes through `write_atomically` (a temporary file in the same directory,
fsync, rename), so a kill at any moment leaves the previous or the next version, never half a file; a
full disk raises ENOSPC naming the path and the bytes, and leaves no temporary file behind. A
directory of files that belong together (a token shard, a sweep's prepared data) is written the same
way by `atomic_directory`. JSON is strict (`json_text`: no NaN/Infinity literals, which other tools
refuse; a non-finite float is null).

metrics.jsonl is the trainer's append-only learning curve: one JSON object per logged step, and a
resumed run appends again from its checkpoint's step, so the last record of a step wins. A kill can
tear its last line; `repair_metrics` cuts such a tail before a resumed run appends, and `read_metrics`
skips a torn line anywhere and says how many it skipped; `last_step` reads only the file's tail (a
sweep polls it) through the same record check. Standard library only: the fit layer reads run
directories with no torch installed.

State files (a sweep's results.json and sweep.json, a run's config.json, summary.json, study.json) are
read through `read_json`: a file that is missing, torn, not JSON or of the wrong shape raises
`StateFileError`, one message naming the file, what is wrong and how to recover, never a parser's
traceback. A writer that passes `keep_previous=True` keeps the version it replaces as FILE.prev (a
file of its own, not a link: an edit in place of FILE cannot reach it), so the message can offer the
previous good version and `restore_previous` can put it back.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)


def write_atomically(path, data: str | bytes, *, keep_previous: bool = False) -> None:
    """Write data (text as UTF-8) to path by a temporary file in the same directory and a rename.

    keep_previous: the version being replaced becomes path.prev (the first write stores a copy of
    itself there). The caller vouches that the file now at path is good: it read it through its check
    or wrote it itself, so path.prev only ever holds a version that was valid."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())  # the rename must not land before the data (a crash would leave an empty file)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide results from the rest of a group
        if keep_previous:
            _keep_previous(path, payload)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on device writing {len(payload):,} bytes to {path} (ENOSPC); the previous version is intact", str(path)) from error
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path):
    """Yields a new empty directory beside path to fill; when the block ends without an exception it
    takes path's place, else it is removed and path is left as it was.

    A directory cannot be renamed over a non-empty one, so a previous version is first renamed aside
    (.NAME.old-PID) and removed after the new one is in place: a kill between the two renames leaves
    no directory at path and the previous version whole beside it, never a mix of the two. A leftover
    temporary directory of the same process id is removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    temporary.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def previous_version(path) -> Path:
    """Where write_atomically(path, ..., keep_previous=True) keeps the version it replaced."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def _keep_previous(path: Path, payload: bytes) -> None:
    if path.is_file():
        copy = path.with_name(f".{path.name}.prev.{os.getpid()}.tmp")
        try:
            shutil.copy2(path, copy)  # keeps the modification time: "written <time>" in a StateFileError
            os.replace(copy, previous_version(path))
        finally:
            copy.unlink(missing_ok=True)
    else:
        write_atomically(previous_version(path), payload)


class StateFileError(ValueError):
    """A state file that cannot be used: the message names the file, what is wrong and how to recover.
    path: the file."""

    def __init__(self, path, message: str):
        super().__init__(message)
        self.path = Path(path)


def _parse_problem(path: Path) -> tuple[object, str | None]:
    """(the JSON value in path, None), or (None, what is wrong with the file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as error:
        return None, f"unreadable ({error.strerror})"
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 text (byte {error.start})"
    if not text.strip():
        return None, f"empty ({len(data)} bytes)"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"):  # the text ran out mid-value
            return None, f"truncated: its JSON stops mid-value after {len(data):,} byte{'s' if len(data) != 1 else ''}"
        return None, f"not JSON at line {error.lineno}, column {error.colno}: {error.msg}"


def _json_problem(path, check: Callable[[object], str | None] | None = None) -> tuple[object, str | None]:
    """(value, None) when path holds JSON that check accepts, else (None, what is wrong)."""
    value, problem = _parse_problem(Path(path))
    if problem is None and check is not None:
        problem = check(value)
        if problem is not None:
            problem = f"of the wrong shape: {problem}"
    return (None, problem) if problem else (value, None)


def read_json(path, *, what: str, check: Callable[[object], str | None] | None = None, restore: str | None = None,
              recover: str | None = None):
    """The JSON value of the state file path, described by what ("the sweep's results index").

    check(value) returns what is wrong with the value's shape, or None. On any fault, StateFileError:
    "PATH: WHAT is PROBLEM; " and how to recover: the previous good version (path.prev, when it passes
    the same check) and the command that restores it (restore, given by callers that keep previous
    versions; default a plain cp), else recover (the caller's advice), if given."""
    path = Path(path)
    value, problem = _json_problem(path, check)
    if problem is None:
        return value
    message = f"{path}: {what} is {problem}"
    previous = previous_version(path)
    if previous.is_file() and _json_problem(previous, check)[1] is None:
        written = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(previous.stat().st_mtime))
        message += f"; the previous good version is {previous} (written {written}): restore it with `{restore or f'cp {previous} {path}'}`"
    elif restore:
        message += f"; no good previous version is beside it ({previous})" + (f"; {recover}" if recover else "")
    elif recover:
        message += f"; {recover}"
    raise StateFileError(path, message)


def restore_previous(path, check: Callable[[object], str | None] | None = None) -> bool:
    """Put path.prev back at path when path fails check and path.prev passes it; returns whether it did.
    The damaged file is not kept as the previous version (it is not good)."""
    path, previous = Path(path), previous_version(path)
    if _json_problem(path, check)[1] is None or not previous.is_file() or _json_problem(previous, check)[1] is not None:
        return False
    write_atomically(path, previous.read_bytes())
    logger.warning("%s: restored the previous good version %s", path, previous)
    return True


def json_kind(value) -> str:
    """What kind of JSON value value is, as a message says it ("0.1" in quotes is a string, not a number)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Real):
        return "a number"
    kinds = {str: "a string", type(None): "null", list: "a list", dict: "an object"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def finite_or_null(value):
    """value with every non-finite float (NaN, inf) inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def json_text(value, **options) -> str:
    """Strict JSON (RFC 8259): non-finite floats become null; options go to json.dumps."""
    return json.dumps(finite_or_null(value), allow_nan=False, **options)


def write_json(path, value, **options) -> None:
    write_atomically(path, json_text(value, **options))


@dataclass
class MetricsLog:
    """A metrics.jsonl read back: records (the last record of each step, in step order) and skipped
    (the line numbers of torn or unreadable lines that were left out)."""

    path: Path
    records: list[dict] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    @property
    def note(self) -> str | None:
        """What reading left out, in one line naming the file (None when nothing was skipped)."""
        if not self.skipped:
            return None
        lines = ", ".join(map(str, self.skipped[:5])) + (", ..." if len(self.skipped) > 5 else "")
        return f"{self.path}: skipped {len(self.skipped)} unreadable line{'s' * (len(self.skipped) > 1)} (torn by a kill?): line {lines}"


def _record(line: bytes) -> dict | None:
    """The record of one line, or None when the line is torn or not a record (a JSON object with an integer step)."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_metrics(path) -> MetricsLog:
    """The learning curve in path; a missing file is an empty curve."""
    path = Path(path)
    log = MetricsLog(path)
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return log
    by_step = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            log.skipped.append(number)
        else:
            by_step[record["step"]] = record  # a resumed run appends: the last record of a step wins
    log.records = [by_step[step] for step in sorted(by_step)]
    if log.skipped:
        logger.warning("%s", log.note)
    return log


def repair_metrics(path) -> int:
    """Cut a torn tail (bytes after the last complete, readable record) off path before appending to it;
    returns the number of bytes cut. A readable last record that lacks only its newline (killed between
    the two writes) is kept and given it: a JSON object cut short never parses, so it is whole."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    if data and not data.endswith(b"\n") and _record(data[data.rfind(b"\n") + 1 :]) is not None:
        with open(path, "ab") as handle:
            handle.write(b"\n")
            os.fsync(handle.fileno())
        return 0
    keep = len(data)
    while keep:
        start = data.rfind(b"\n", 0, keep - 1) + 1
        if data[keep - 1 : keep] == b"\n" and _record(data[start:keep]) is not None:
            break
        keep = start
    if keep < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            os.fsync(handle.fileno())
        logger.warning("%s: cut %d bytes of a torn last record before appending", path, len(data) - keep)
    return len(data) - keep


def last_step(path, tail_bytes: int = 4096) -> int:
    """The step of the newest readable record in path's last tail_bytes (0 if none): cheap enough to poll."""
    try:
        with open(path, "rb") as handle:
            start = max(0, handle.seek(0, os.SEEK_END) - tail_bytes)
            handle.seek(start)
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return 0
    if start:
        lines = lines[1:]  # the tail starts inside a line
    for line in reversed(lines):
        record = _record(line)
        if record is not None:
            return record["step"]
    return 0


def metrics_line(record: dict) -> str:
    """One line of metrics.jsonl (strict JSON, newline-terminated)."""
    return json_text(record) + "\n"
