"""Files of a run directory and a sweep: atomic writes, strict JSON, and the one metrics reader.

Everything fastscale writes goes through `write_atomically` (a temporary file in the same directory,
fsync, rename), so a kill at any moment leaves the previous or the next version, never half a file; a
full disk raises ENOSPC naming the path and the bytes, and leaves no temporary file behind. JSON is
strict (`json_text`: no NaN/Infinity literals, which other tools refuse; a non-finite float is null).

metrics.jsonl is the trainer's append-only learning curve: one JSON object per logged step, and a
resumed run appends again from its checkpoint's step, so the last record of a step wins. A kill can
tear its last line; `repair_metrics` cuts such a tail before a resumed run appends, and `read_metrics`
skips a torn line anywhere and says how many it skipped. Standard library only: the fit layer reads
run directories with no torch installed.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


def write_atomically(path, data: str | bytes) -> None:
    """Write data (text as UTF-8) to path by a temporary file in the same directory and a rename."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())  # the rename must not land before the data (a crash would leave an empty file)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide results from the rest of a group
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on device writing {len(payload):,} bytes to {path} (ENOSPC); the previous version is intact", str(path)) from error
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


def _record(line: bytes) -> dict | None:
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
        logger.warning("%s: skipped %d unreadable line(s) (torn by a kill?): line %s", path, len(log.skipped), ", ".join(map(str, log.skipped[:5])))
    return log


def repair_metrics(path) -> int:
    """Cut a torn tail (bytes after the last complete, readable record) off path before appending to it;
    returns the number of bytes cut."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
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


def metrics_line(record: dict) -> str:
    """One line of metrics.jsonl (strict JSON, newline-terminated)."""
    return json_text(record) + "\n"
