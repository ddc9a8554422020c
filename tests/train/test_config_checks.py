"""Every number of a run config and of the DeepSpeed config the trainer relies on is checked for type and
finiteness before anything starts: the error names the key, the value and what was expected (a string
"0.1" is refused, not coerced; JSON's NaN/Infinity literals, which Python's json accepts, are refused)."""

import json
import math
import os
import sys
from pathlib import Path

import pytest

from fastscale.train import ConfigError, RunConfig, check_deepspeed_config
from processes import run

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"model": {"n_layer": 1, "d_model": 32, "n_head": 2}, "data": {"dataset": "digits"}, "seq_len": 64}


def run_config(**train) -> RunConfig:
    return RunConfig.from_dict({**GOOD, "train": train})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lr", math.inf, "train: lr=inf; expected a finite learning rate > 0"),
        ("lr", math.nan, "train: lr=nan; expected a finite learning rate > 0"),
        ("lr", "1e-3", "train: lr='1e-3' is a string; expected a finite learning rate > 0"),
        ("lr", 0, "train: lr=0; expected a finite learning rate > 0"),
        ("min_lr_ratio", "0.1", "train: min_lr_ratio='0.1' is a string; expected a fraction of the peak LR in [0, 1]"),
        ("min_lr_ratio", 1.5, "train: min_lr_ratio=1.5; expected a fraction of the peak LR in [0, 1]"),
        ("betas", 0.9, "train: betas=0.9 is a number; expected a pair of numbers in [0, 1)"),
        ("betas", [0.9], "train: betas=[0.9]; expected a pair of numbers in [0, 1)"),
        ("betas", [0.9, 1.0], "train: betas[1]=1.0; expected a number in [0, 1)"),
        ("betas", [0.9, math.nan], "train: betas[1]=nan; expected a number in [0, 1)"),
        ("betas", ["0.9", 0.95], "train: betas[0]='0.9' is a string; expected a number in [0, 1)"),
        ("eps", -1e-8, "train: eps=-1e-08; expected a finite number > 0"),
        ("eps", None, "train: eps=None is null; expected a finite number > 0"),
        ("weight_decay", -0.1, "train: weight_decay=-0.1; expected a finite number >= 0"),
        ("weight_decay", math.inf, "train: weight_decay=inf; expected a finite number >= 0"),
        ("warmup_steps", 1.5, "train: warmup_steps=1.5 is a number; expected an integer >= 0"),
        ("warmup_steps", -1, "train: warmup_steps=-1; expected an integer >= 0"),
        ("steps", "10", "train: steps='10' is a string; expected a positive integer"),
        ("steps", True, "train: steps=True is a boolean; expected a positive integer"),
        ("steps", 10.0, "train: steps=10.0 is a number; expected a positive integer"),
        ("eval_interval", -5, "train: eval_interval=-5; expected an integer >= 0"),
        ("checkpoint_interval", 2.5, "train: checkpoint_interval=2.5 is a number; expected an integer >= 0"),
        ("keep_checkpoints", 0, "train: keep_checkpoints=0; expected a positive integer"),
        ("log_interval", 0, "train: log_interval=0; expected a positive integer"),
        ("noise_scale_interval", "10", "train: noise_scale_interval='10' is a string; expected an integer >= 0"),
        ("noise_scale_ema", 1.0, "train: noise_scale_ema=1.0; expected a decay in [0, 1)"),
        ("noise_scale_ema", "0.9", "train: noise_scale_ema='0.9' is a string; expected a decay in [0, 1)"),
        ("seed", -1, "train: seed=-1; expected an integer >= 0"),
        ("seed", 1.0, "train: seed=1.0 is a number; expected an integer >= 0"),
        ("decay", ["cosine"], "train: decay=['cosine']; expected one of"),
        ("nonfinite", "ignore", "train: nonfinite='ignore'; expected one of ('stop', 'skip')"),
        ("max_consecutive_skips", 0, "train: max_consecutive_skips=0; expected a positive integer"),
        ("data_workers", -1, "train: data_workers=-1; expected an integer >= 0 (0: collate in the training process), or null"),
        ("data_workers", "2", "train: data_workers='2' is a string; expected an integer >= 0"),
    ],
)
def test_bad_train_values_name_the_key_the_value_and_the_expectation(key, value, message):
    with pytest.raises(ConfigError) as error:
        run_config(**{key: value})
    assert str(error.value).startswith(message), str(error.value)


def test_good_train_values_are_kept():
    settings = run_config(lr=1, betas=[0.8, 0.99], min_lr_ratio=0, weight_decay=0, nonfinite="skip", max_consecutive_skips=3).train
    assert settings.lr == 1 and settings.betas == (0.8, 0.99) and settings.min_lr_ratio == 0
    assert settings.nonfinite == "skip" and settings.max_consecutive_skips == 3
    assert run_config().train.nonfinite == "stop"
    assert run_config().train.data_workers is None and run_config(data_workers=0).train.data_workers == 0


def test_run_config_shapes():
    with pytest.raises(ConfigError, match=r"train=\[\] is a list; expected an object"):
        RunConfig.from_dict({**GOOD, "train": []})
    with pytest.raises(ConfigError, match=r"seq_len='64' is a string; expected an integer >= 2"):
        RunConfig.from_dict({**GOOD, "seq_len": "64"})


BATCH = {"train_batch_size": 4}


@pytest.mark.parametrize(
    "ds, message",
    [
        ({"optimizer": {"type": "AdamW", "params": {"lr": math.inf}}}, "optimizer.params.lr=inf; expected a finite learning rate > 0"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": "1e-3"}}}, "optimizer.params.lr='1e-3' is a string"),
        ({"optimizer": {"type": "AdamW", "params": {"betas": 0.9}}}, "optimizer.params.betas=0.9 is a number; expected a pair"),
        ({"optimizer": {"type": "AdamW", "params": {"betas": [0.9, 1.2]}}}, "optimizer.params.betas[1]=1.2; expected a number in [0, 1)"),
        ({"optimizer": {"type": "AdamW", "params": {"eps": 0}}}, "optimizer.params.eps=0; expected a finite number > 0"),
        ({"optimizer": {"type": "AdamW", "params": {"weight_decay": "0.1"}}}, "optimizer.params.weight_decay='0.1' is a string"),
        ({"optimizer": {"type": "AdamW", "params": [1e-3]}}, "optimizer.params=[0.001] is a list; expected an object"),
        ({"optimizer": "AdamW"}, "optimizer='AdamW' is a string; expected an object"),
        ({"gradient_clipping": math.nan}, "gradient_clipping=nan; expected a finite max gradient norm >= 0"),
        ({"gradient_clipping": -1.0}, "gradient_clipping=-1.0; expected a finite max gradient norm >= 0"),
        ({"gradient_clipping": "1.0"}, "gradient_clipping='1.0' is a string"),
        ({"train_batch_size": "4"}, "train_batch_size='4' is a string; expected a positive integer"),
        ({"train_micro_batch_size_per_gpu": 2.0}, "train_micro_batch_size_per_gpu=2.0 is a number; expected a positive integer"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0; expected a positive integer"),
        ({"fp16": {"loss_scale": -1}}, "fp16.loss_scale=-1; expected a finite number >= 0 (0: dynamic loss scaling)"),
        ({"fp16": {"initial_scale_power": 200}}, "fp16.initial_scale_power=200; expected an integer in [0, 127]"),
        ({"fp16": {"initial_scale_power": 16.5}}, "fp16.initial_scale_power=16.5 is a number; expected an integer in [0, 127]"),
        ({"fp16": {"loss_scale_window": 0}}, "fp16.loss_scale_window=0; expected a positive integer"),
        ({"fp16": {"hysteresis": "2"}}, "fp16.hysteresis='2' is a string; expected a positive integer"),
        ({"fp16": {"min_loss_scale": 0}}, "fp16.min_loss_scale=0; expected a finite number > 0"),
        ({"fp16": {"enabled": "true"}}, "fp16.enabled='true' is a string; expected true or false"),
        ({"bf16": True}, "bf16=True is a boolean; expected an object"),
        ({"zero_optimization": 2}, "zero_optimization=2 is a number; expected an object"),
        ({"checkpoint": {"writer": {"type": "fast"}}}, "checkpoint.writer={'type': 'fast'}: fastscale checkpoints only through"),
        ({"checkpoint": {"use_node_local_storage": True}}, "checkpoint.use_node_local_storage=True: fastscale checkpoints only through"),
        ({"datastates_ckpt": {}}, "datastates_ckpt={}: asynchronous checkpointing is not supported"),
    ],
)
def test_bad_deepspeed_numbers_name_the_key_the_value_and_the_expectation(ds, message):
    with pytest.raises(ConfigError) as error:
        check_deepspeed_config({**BATCH, **ds}, 1, device_type="cpu")
    assert str(error.value).startswith(f"deepspeed config: {message}"), str(error.value)


def test_good_deepspeed_numbers_pass():
    ds = {
        **BATCH, "gradient_clipping": 1, "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0}},
        "fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
    }
    assert check_deepspeed_config(ds, 1, device_type="cuda")["train_micro_batch_size_per_gpu"] == 4


def test_train_py_refuses_lr_infinity_before_starting(tmp_path):
    """The issue's reproduction: `"lr": Infinity` (Python's json reads it) was accepted and the loss went NaN."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**GOOD, "train": {"lr": math.inf}}))
    assert "Infinity" in config.read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    out = tmp_path / "out"
    result = run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--deepspeed_config", str(ROOT / "configs/ds/zero0.json"), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == "error: train: lr=inf; expected a finite learning rate > 0"
    assert not out.exists()
