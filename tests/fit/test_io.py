"""Reading CSVs and run directories, the drop-top-loss protocol; malformed CSVs name file, line, column, value."""

import json

import numpy as np
import pytest

from fastscale.fit import FitInputError
from fastscale.fit.io import column, drop_highest_loss, read_runs, read_table


def test_epoch_protocol_keeps_240_of_245(epoch_chinchilla):
    n, _, loss = epoch_chinchilla
    assert len(loss) == 240  # the fixture applies drop_highest_loss's rule by hand; check the function agrees
    rng = np.random.default_rng(0)
    values = rng.permutation(np.arange(10.0))
    kept = values[drop_highest_loss(values, 3)]
    assert sorted(kept) == list(range(7))


def test_resumed_run_keeps_the_last_record_of_each_step(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"n_params": 1234}))
    records = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "loss": 3.5}, {"step": 3, "loss": 3.0, "eval_loss": 3.1}]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    table = read_runs(run)
    assert list(table["step"]) == [1, 2, 3]
    assert list(table["loss"]) == [5.0, 3.5, 3.0]
    assert list(table["n_params"]) == [1234] * 3
    assert np.isnan(table["eval_loss"][0]) and table["eval_loss"][2] == 3.1
    assert list(table["run"]) == ["run"] * 3


def test_torn_lines_anywhere_are_skipped_counted_and_nothing_else_lost(tmp_path):
    # A kill tears the last line; a resumed run that appended before issue 11 glued the next record
    # onto it, leaving the tear in the middle. Both are skipped; every readable record is kept.
    good = [{"step": s, "loss": 5.0 - s / 10} for s in range(1, 7)]
    lines = [json.dumps(r) for r in good]
    lines.insert(3, '{"step": 4, "lo{"step": 4, "loss": 4.6}')  # line 4: a torn record glued to the next
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 7, "los')  # line 8: torn tail
    table = read_runs(tmp_path)
    assert list(table["step"]) == [r["step"] for r in good]
    assert list(table["loss"]) == [r["loss"] for r in good]
    assert table.skipped == (f"{tmp_path / 'metrics.jsonl'}: skipped 2 unreadable lines (torn by a kill?): line 4, 8",)


def test_directory_without_runs_is_an_error(tmp_path):
    with pytest.raises(FitInputError, match="no metrics.jsonl"):
        read_table(tmp_path)


def test_csv_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,x\n2,y\n")
    table = read_table(path)
    assert table["a"].dtype.kind == "f" and table["b"].dtype.kind == "U"
    with pytest.raises(FitInputError, match=r"--loss 'c': no such column in DATA; columns are \['a', 'b'\]"):
        column(table, "c", option="--loss")


def write_csv(tmp_path, text):
    path = tmp_path / "runs.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        # an extra field in a later row was ignored silently; in the first data row it raised KeyError: None
        ("N,loss\n1e6,3.1\n2e6,3.0\n\n4e6,2.9,7\n", "line 5: 3 fields, expected 2 as in the header ['N', 'loss']; extra value '7' after column 'loss'"),
        ("N,loss\n1e6,3.1,x,y\n2e6,3.0\n", "line 2: 4 fields, expected 2 as in the header ['N', 'loss']; extra values 'x', 'y' after column 'loss'"),
        ("N,loss,run\n1e6,3.1,a\n2e6\n", "line 3: 1 field, expected 3 as in the header ['N', 'loss', 'run']; no value for columns 'loss', 'run'"),
        # a duplicated name silently took the last column
        ("N,loss,N\n1e6,3.1,5\n2e6,3.0,6\n", "line 1: column name 'N' appears more than once (columns [1, 3]); each column needs its own name"),
        ("N,,loss\n1e6,0,3.1\n", "line 1: column 2 of the header has an empty name (header: ['N', '', 'loss'])"),
    ],
)
def test_malformed_csv_names_file_line_column_and_value(tmp_path, text, message):
    path = write_csv(tmp_path, text)
    with pytest.raises(FitInputError) as error:
        read_table(path)
    assert str(error.value) == f"{path} {message}"


def test_text_cell_is_reported_with_its_own_value_and_line(tmp_path):
    # The message shows the bad cell; before issue 11 it showed the column's first cell ('3.1').
    path = write_csv(tmp_path, 'N,loss\n1e6,3.1\n2e6,3.0\n"quoted\nname",2.95\n4e6,n/a\n')
    table = read_table(path)
    with pytest.raises(FitInputError) as error:
        column(table, "loss", option="--y")
    assert str(error.value) == f"--y 'loss': expected numbers, got 'n/a' at {path} line 6"
    with pytest.raises(FitInputError) as error:
        column(table, "N", option="--x")
    assert str(error.value) == f"--x 'N': expected numbers, got 'quoted\\nname' at {path} line 4"


def test_csv_with_a_byte_order_mark_and_blank_lines(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfN,loss\r\n1e6,3.1\r\n\r\n2e6,3.0\r\n")
    table = read_table(path)
    assert list(table) == ["N", "loss"] and list(table["N"]) == [1e6, 2e6]
    assert list(table.origin) == [f"{path} line 2", f"{path} line 4"]


def test_run_with_no_readable_record_is_an_error_naming_the_file(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "lo')  # killed during the first write
    with pytest.raises(FitInputError) as error:
        read_table(tmp_path)
    assert str(error.value) == (
        f"DATA={str(tmp_path)!r}: no readable record in {metrics}; {metrics}: skipped 1 unreadable line (torn by a kill?): line 1"
    )
