"""fastscale.io on real files: atomic writes on a full disk, strict JSON, the metrics reader and its
tail repair, and the checked reader of state files with its previous good version."""

import errno
import json
import math
import os
import re

import pytest

from fastscale import io


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _full_disk(monkeypatch, after_bytes: int = 0):
    """Every file opened by os.fdopen takes after_bytes, then ENOSPC: what a full disk does to write()."""
    real = os.fdopen

    class Full:
        def __init__(self, handle):
            self.file, self.room = handle, after_bytes

        def write(self, data):
            if len(data) > self.room:
                self.file.write(data[: self.room])
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(io.os, "fdopen", lambda *args, **kwargs: Full(real(*args, **kwargs)))


def test_a_full_disk_names_the_file_the_bytes_and_enospc_and_keeps_the_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    io.write_json(path, {"runs": {"a": 1}})
    before = path.read_bytes()
    _full_disk(monkeypatch, after_bytes=5)
    payload = json.dumps({"runs": {"a": 2, "b": "x" * 100}})
    with pytest.raises(OSError) as raised:
        io.write_atomically(path, payload)
    assert raised.value.errno == errno.ENOSPC
    message = str(raised.value)
    assert str(path) in message and f"{len(payload):,} bytes" in message and "ENOSPC" in message
    assert path.read_bytes() == before  # the previous version, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left


def test_a_full_disk_while_keeping_the_previous_version_loses_neither(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    io.write_atomically(path, '{"v": 1}', keep_previous=True)
    io.write_atomically(path, '{"v": 2}', keep_previous=True)
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="ENOSPC"):
        io.write_atomically(path, '{"v": 3}', keep_previous=True)
    assert path.read_text() == '{"v": 2}' and io.previous_version(path).read_text() == '{"v": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.json.prev"]


def test_keep_previous_keeps_the_replaced_version_as_a_file_of_its_own(tmp_path):
    path = tmp_path / "sweep.json"
    io.write_atomically(path, "first", keep_previous=True)
    assert io.previous_version(path).read_text() == "first"  # the first write: a copy of itself
    io.write_atomically(path, "second", keep_previous=True)
    assert io.previous_version(path).read_text() == "first"
    with open(path, "r+b") as handle:  # damaged in place: the previous version is another file
        handle.truncate(2)
    assert io.previous_version(path).read_text() == "first"
    io.write_atomically(path, "third")  # without keep_previous the previous version stays
    assert io.previous_version(path).read_text() == "first"


def test_json_is_strict_with_null_for_non_finite_floats(tmp_path):
    value = {"loss": math.nan, "x": [1.5, math.inf, -math.inf], "nested": ({"y": float("nan")}, "z"), "n": 3}
    text = io.json_text(value)
    assert _strict(text) == {"loss": None, "x": [1.5, None, None], "nested": [{"y": None}, "z"], "n": 3}
    io.write_json(tmp_path / "a.json", value, indent=2)
    assert _strict((tmp_path / "a.json").read_text())["x"] == [1.5, None, None]
    line = io.metrics_line({"step": 1, "loss": math.nan})
    assert line.endswith("\n") and line.count("\n") == 1 and _strict(line) == {"step": 1, "loss": None}


def _metrics(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_read_metrics_skips_torn_lines_anywhere_counts_them_and_the_last_record_of_a_step_wins(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = [{"step": s, "loss": 10.0 + s} for s in (1, 2, 3)]
    resumed = [{"step": s, "loss": float(s)} for s in (2, 3, 4)]  # resumed from the checkpoint at step 1
    text = _metrics(first[:2]) + '{"step": 3, "lo' + "\n" + _metrics(first[2:] + resumed) + '[1, 2]\n\n{"step": "5"}\n{"step": 5, "loss": 0.'
    path.write_text(text)
    log = io.read_metrics(path)
    assert [(r["step"], r["loss"]) for r in log.records] == [(1, 11.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert log.skipped == [3, 8, 10, 11]  # torn in the middle, not a record (a list, a text step), torn at the end
    assert log.path == path
    assert io.read_metrics(tmp_path / "none.jsonl").records == []


def test_repair_metrics_cuts_a_torn_tail_and_leaves_an_intact_file_untouched(tmp_path):
    path = tmp_path / "metrics.jsonl"
    intact = _metrics([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    path.write_text(intact + '{"step": 3, "loss": 1.')
    assert io.repair_metrics(path) == len('{"step": 3, "loss": 1.')
    assert path.read_text() == intact
    stat = path.stat()
    assert io.repair_metrics(path) == 0
    assert path.read_text() == intact and path.stat().st_mtime_ns == stat.st_mtime_ns  # not rewritten
    path.write_text(intact + '{"step": 3, "lo\n{"step": 4\n')  # two torn lines, each with its newline
    assert io.repair_metrics(path) == len('{"step": 3, "lo\n{"step": 4\n') and path.read_text() == intact
    assert io.repair_metrics(tmp_path / "none.jsonl") == 0


def test_repair_metrics_completes_a_whole_last_record_that_lacks_its_newline(tmp_path):
    path = tmp_path / "metrics.jsonl"
    intact = _metrics([{"step": 1, "loss": 2.0}])
    path.write_text(intact + '{"step": 2, "loss": 1.5}')  # killed between the record and its newline
    assert io.repair_metrics(path) == 0
    assert path.read_text() == intact + '{"step": 2, "loss": 1.5}\n'
    with open(path, "a") as out:  # what a resumed trainer does next
        out.write(io.metrics_line({"step": 3, "loss": 1.0}))
    log = io.read_metrics(path)
    assert [r["step"] for r in log.records] == [1, 2, 3] and log.skipped == []


def test_last_step_reads_the_tail_through_the_record_check(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert io.last_step(path) == 0
    path.write_text(_metrics({"step": s, "loss": 1.0, "pad": "x" * 50} for s in range(1, 200)) + '{"step": 200, "lo')
    assert io.last_step(path) == 199  # the torn last line is not a step
    assert io.last_step(path, tail_bytes=90) == 0  # a tail inside one line: its fragment is not read as a record


def _runs(value):
    return None if isinstance(value.get("runs"), dict) else f"expected \"runs\" to be an object, got {type(value['runs']).__name__}"


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"runs": {"a": {"state": "do', "truncated: its JSON stops mid-value after 28 bytes"),
        ('{"runs": {}}\n}', r"not JSON at line 2, column 1: Extra data"),
        ('{"runs": []}', r"of the wrong shape: expected \"runs\" to be an object, got list"),
        ("", r"empty \(0 bytes\)"),
        (b"\xff\xfe{}", r"not UTF-8 text \(byte 0\)"),
    ],
)
def test_read_json_names_the_file_what_it_is_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "results.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(io.StateFileError, match=rf"^{re.escape(str(path))}: the results index is {problem}; rerun it$") as raised:
        io.read_json(path, what="the results index", check=_runs, recover="rerun it")
    assert raised.value.path == path and isinstance(raised.value, ValueError)


def test_read_json_offers_the_previous_version_only_when_it_is_good_and_restore_puts_it_back(tmp_path):
    path = tmp_path / "results.json"
    io.write_atomically(path, '{"runs": {"a": 1}}', keep_previous=True)
    io.write_atomically(path, '{"runs": {"a": 2}}', keep_previous=True)
    assert io.read_json(path, what="the index", check=_runs) == {"runs": {"a": 2}}
    path.write_text('{"runs": {"a": 2')
    with pytest.raises(io.StateFileError, match=rf"truncated.*; the previous good version is {re.escape(str(path))}.prev \(written \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\): "
                                                rf"restore it with `cp {re.escape(str(path))}.prev {re.escape(str(path))}`$"):
        io.read_json(path, what="the index", check=_runs, recover="not offered while a good previous version exists")
    with pytest.raises(io.StateFileError, match="restore it with `tool --restore`"):
        io.read_json(path, what="the index", check=_runs, restore="tool --restore")
    assert io.restore_previous(path, _runs)
    assert io.read_json(path, what="the index", check=_runs) == {"runs": {"a": 1}}
    assert not io.restore_previous(path, _runs)  # a good file is left as it is
    path.write_text("{")
    io.previous_version(path).write_text('{"runs": []}')  # a previous version that is no good is not offered
    with pytest.raises(io.StateFileError, match=r"truncated: its JSON stops mid-value after 1 byte; retrain$"):
        io.read_json(path, what="the index", check=_runs, recover="retrain")
    assert not io.restore_previous(path, _runs) and path.read_text() == "{"
    with pytest.raises(io.StateFileError, match=rf"^{re.escape(str(tmp_path / 'none.json'))}: the index is missing$"):
        io.read_json(tmp_path / "none.json", what="the index")
