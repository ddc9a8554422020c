"""Bad configs fail before any work starts, with the field named; the Trainer drives a user's own
module in one process without a launcher."""

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

import processes

from fastscale.train import ConfigError
from fastscale.train.launch import build_run

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"model": {"n_layer": 1, "d_model": 32, "n_head": 2}, "data": {"dataset": "digits"}, "seq_len": 64}
DS = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2}


@pytest.fixture(autouse=True)
def no_deepspeed_start(monkeypatch):
    """If build_run ever got past its checks, it would start nothing: these tests never call fit()."""
    monkeypatch.setenv("WORLD_SIZE", "2")


def test_batch_that_does_not_divide(tmp_path):
    with pytest.raises(ConfigError, match=r"train_batch_size=7 is not divisible by train_micro_batch_size_per_gpu=2 x world_size=2"):
        build_run(GOOD, {"train_batch_size": 7, "train_micro_batch_size_per_gpu": 2}, tmp_path)


def test_model_that_cannot_fit(tmp_path, monkeypatch):
    import fastscale.model.gpt as gpt

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the memory check")

    monkeypatch.setattr("fastscale.train.launch.GPT", never)
    run = {**GOOD, "model": {"params": 3e11}}
    with pytest.raises(ConfigError, match=r"the model cannot fit: .* GiB of host memory"):
        build_run(run, DS, tmp_path)
    assert gpt.GPT is not never


def test_missing_data_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.path=.*nowhere.* does not exist"):
        build_run({**GOOD, "data": {"path": str(tmp_path / "nowhere")}}, DS, tmp_path)


def test_bad_model_fields(tmp_path):
    with pytest.raises(ConfigError, match="n_head=3"):
        build_run({**GOOD, "model": {"n_layer": 1, "d_model": 32, "n_head": 3}}, DS, tmp_path)
    with pytest.raises(ConfigError, match="model.vocab_size is set by the data"):
        build_run({**GOOD, "model": {**GOOD["model"], "vocab_size": 10}}, DS, tmp_path)


def test_the_run_configs_monitor_reaches_the_trainer(tmp_path, monkeypatch):
    """train.py / fastscale train / the sweep build every run here: the monitor section must get through."""
    given = {}
    monkeypatch.setattr("fastscale.train.launch.Trainer", lambda *args, **kwargs: given.update(kwargs))
    monitor = {"csv_monitor": {"enabled": True, "job_name": "csv"}}
    build_run({**GOOD, "monitor": monitor}, DS, tmp_path)
    assert given["monitor"] == monitor


def test_train_py_exits_with_a_clear_message(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**GOOD, "data": {"path": str(tmp_path / "missing")}}))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    result = processes.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--deepspeed_config", str(ROOT / "configs/ds/zero0.json"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert "data.path=" in result.stderr and "fastscale data" in result.stderr
    assert not (tmp_path / "o").exists()  # nothing started


@pytest.mark.slow
def test_train_py_stops_a_diverging_run_with_one_error_line(tmp_path):
    """lr 1e30 is finite, so the config passes; the first update blows the weights up and step 2's loss
    is NaN: train.py says so in one line (no traceback), exits 1, and keeps the metrics it wrote."""
    config = tmp_path / "run.json"
    train = {"steps": 6, "lr": 1e30, "warmup_steps": 0, "eval_interval": 0, "noise_scale_interval": 0, "checkpoint_interval": 0}
    config.write_text(json.dumps({**GOOD, "train": train}))
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4}))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    result = processes.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--deepspeed_config", str(ds), "--out", str(tmp_path / "o"), "--no-progress"],
        capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: step 2: loss=nan"), result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[1]["loss"] is None


SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from fastscale.train import Trainer

    class Regression(torch.nn.Module):  # any module whose forward returns a loss
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 1)
        def forward(self, x, y):
            return torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.linspace(-1, 1, 8) + 0.1 * torch.randn(256)
    data = torch.utils.data.TensorDataset(x, y)
    trainer = Trainer(Regression(), {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 8}, data, val_data=data,
                      out_dir=sys.argv[1], steps=40, lr=0.1, warmup_steps=2, eval_interval=20, checkpoint_interval=25,
                      noise_scale_interval=5)
    summary = trainer.fit()
    print("SUMMARY", json.dumps(summary))
    """
)


@pytest.mark.slow
def test_trainer_drives_a_users_module_in_one_process(tmp_path):
    result = processes.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=processes.training_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 41))
    assert records[-1]["loss"] < 0.1 * records[0]["loss"]
    assert records[-1]["eval_loss"] < 0.1 * records[0]["loss"]
    assert "noise_scale" in records[5] and records[-1]["tokens"] == 40 * 16 * 8
    assert "flops" not in records[-1]  # no FLOP count was given for this module
    tags = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step00000025", "step00000040"]  # every 25 steps and the final one


def test_progress_bar_counts_steps_without_a_loss_between_log_steps(tmp_path, capsys):
    """With log_interval > 1 the records of other steps have no loss: the bar still counts them."""
    from fastscale.train.launch import Progress

    progress = Progress(3, bar=True, resume=False, checkpoints=tmp_path)
    for record in ({"step": 1, "tokens": 8, "lr": 0.1}, {"step": 2, "tokens": 16, "lr": 0.1, "loss": 2.5}, {"step": 3, "tokens": 24, "lr": 0.1}):
        progress(record)
    assert progress.bar.n == 3 and progress.bar.postfix == "loss=2.5000"
    progress.close()
