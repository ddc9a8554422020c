"""Reading CSVs and run directories, the drop-top-loss protocol, atomic writes."""

import json

import numpy as np
import pytest

from fastscale.fit import FitInputError
from fastscale.fit.io import column, drop_highest_loss, read_runs, read_table, write_atomically


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


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(FitInputError, match=r"metrics.jsonl:2: not a JSON object"):
        read_runs(tmp_path)


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


def test_write_atomically_replaces_whole_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    write_atomically(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
