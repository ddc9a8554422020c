"""DeepSpeedSettings, the one typed view of a DeepSpeed config: its fields against the configs written
out by hand, batch sizes for other world sizes, the planner's config under a sweep's explicit keys, a
run checking its config once, and no module reading the dict's sections behind its back."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

import fastscale.train.config as config_module
from fastscale.train.config import ConfigError, DeepSpeedSettings
from fastscale.train.plan import Choice

SRC = Path(__file__).resolve().parents[2] / "src" / "fastscale"
BATCH = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2}
OFFLOAD = {"stage": 2, "offload_optimizer": {"device": "cpu"}}


@pytest.mark.parametrize("extra, device_type, expected", [
    ({}, "cpu", dict(precision="fp32", choice=Choice(0), optimizer=False, optimizer_lr=None, scheduler=False, written=frozenset())),
    ({"bf16": {"enabled": True}, "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}},
      "optimizer": {"type": "AdamW", "params": {"lr": 2e-4}}, "activation_checkpointing": {}}, "cpu",
     dict(precision="bf16", choice=Choice(3, "cpu", "cpu", True), optimizer=True, optimizer_lr=2e-4, scheduler=False,
          written=frozenset({"bf16", "zero_optimization.stage", "zero_optimization.offload_optimizer", "zero_optimization.offload_param",
                             "activation_checkpointing"}))),
    ({"fp16": {"enabled": True}, "bf16": {"enabled": False}, "zero_optimization": {"stage": 1}, "optimizer": {"type": "Adam"},
      "scheduler": {"type": "WarmupLR"}}, "cuda",
     dict(precision="fp16", choice=Choice(1), optimizer=True, optimizer_lr=None, scheduler=True,
          written=frozenset({"bf16", "fp16", "zero_optimization.stage"}))),
    ({"bf16": {"enabled": False}, "zero_optimization": {}}, "cpu",
     dict(precision="fp32", choice=Choice(0), optimizer=False, optimizer_lr=None, scheduler=False, written=frozenset({"bf16"}))),
])
def test_the_view_holds_what_the_config_says(extra, device_type, expected):
    ds = DeepSpeedSettings.parse({**BATCH, **extra}, 2, device_type=device_type)
    assert {name: getattr(ds, name) for name in expected} == expected
    assert (ds.world_size, ds.batch_size, ds.micro_batch, ds.accumulation) == (2, 16, 2, 4)
    assert ds.sixteen_bit == (expected["precision"] != "fp32")
    # what deepspeed.initialize gets: the config as written, its batch sizes resolved
    assert ds.config == {**BATCH, **extra, "gradient_accumulation_steps": 4}


def test_gradient_clipping_is_what_deepspeed_will_clip_at():
    """Without the key DeepSpeed clips at its own default (1.0 in 0.19), not at 0: the view says so."""
    from deepspeed.runtime.config import get_gradient_clipping

    for extra in ({}, {"gradient_clipping": 0}, {"gradient_clipping": 0.5}):
        ds = DeepSpeedSettings.parse({**BATCH, **extra}, 1, device_type="cpu")
        assert ds.gradient_clipping == get_gradient_clipping({**BATCH, **extra}), extra


def test_a_path_and_a_dict_give_the_same_view_and_the_view_is_frozen(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({**BATCH, "zero_optimization": OFFLOAD, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}))
    from_path = DeepSpeedSettings.parse(path, 1, device_type="cpu")
    assert from_path == DeepSpeedSettings.parse(json.loads(path.read_text()), 1, device_type="cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_path.micro_batch = 4
    with pytest.raises(ConfigError, match=r"--deepspeed_config='.*missing.json': no such file"):
        DeepSpeedSettings.parse(tmp_path / "missing.json", 1)


def test_parse_keeps_the_checks_messages():
    with pytest.raises(ConfigError, match=r"zero_optimization.offload_param needs stage 3, got stage=2"):
        DeepSpeedSettings.parse({**BATCH, "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, 1, device_type="cpu")
    with pytest.raises(ConfigError, match=r"fp16.enabled=true is not supported on CPU"):
        DeepSpeedSettings.parse({**BATCH, "fp16": {"enabled": True}}, 1, device_type="cpu")


def test_other_world_sizes_resolve_from_the_batch_keys_as_written():
    ds = DeepSpeedSettings.parse(BATCH, 1, device_type="cpu")
    assert ds.accumulation == 8
    wider = ds.for_world_size(4)
    assert (wider.world_size, wider.batch_size, wider.micro_batch, wider.accumulation) == (4, 16, 2, 2)
    assert wider.config["gradient_accumulation_steps"] == 2 and ds.config["gradient_accumulation_steps"] == 8
    with pytest.raises(ConfigError, match=r"train_batch_size=16 is not divisible by train_micro_batch_size_per_gpu=2 x world_size=3"):
        ds.for_world_size(3)


def test_reading_a_checked_config_gives_the_parsed_view():
    """A finished run's config.json holds the checked config: read back, it is the view the run had."""
    parsed = DeepSpeedSettings.parse({**BATCH, "zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}, 2, device_type="cuda")
    again = DeepSpeedSettings.read(json.loads(json.dumps(parsed.config)), 2)
    assert dataclasses.replace(again, requested_batch=parsed.requested_batch) == parsed
    assert again.choice == Choice(3) and again.precision == "bf16"


def test_the_sweeps_explicit_keys_win_over_the_planners_config():
    planned = {"train_batch_size": 16, "bf16": {"enabled": True}, "gradient_clipping": 1.0,
               "zero_optimization": {"stage": 2, "reduce_bucket_size": 50, "overlap_comm": False}}
    sweep = DeepSpeedSettings.parse({**BATCH, "fp16": {"enabled": True}, "zero_optimization": {"overlap_comm": True}}, 1, device_type="cuda")
    merged = sweep.written_over(planned)
    assert "bf16" not in merged and merged["fp16"] == {"enabled": True}  # the sweep chose its precision: no contradicting key
    assert merged["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 50, "overlap_comm": True}
    assert merged["gradient_clipping"] == 1.0 and merged["gradient_accumulation_steps"] == 8
    unset = DeepSpeedSettings.parse(BATCH, 1, device_type="cuda").written_over(planned)
    assert unset["bf16"] == {"enabled": True}  # left to the planner


def test_a_run_checks_its_deepspeed_config_once_and_the_trainer_keeps_the_view(tmp_path, monkeypatch):
    import torch

    from fastscale.train.launch import build_run

    monkeypatch.setenv("WORLD_SIZE", "1")
    calls = []
    check = config_module.check_deepspeed_config
    monkeypatch.setattr(config_module, "check_deepspeed_config", lambda *args, **kwargs: calls.append(args) or check(*args, **kwargs))
    run = {"model": {"n_layer": 1, "d_model": 16, "n_head": 2}, "data": {"dataset": "digits"}, "seq_len": 65}
    trainer = build_run(run, {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True}}, tmp_path)
    assert len(calls) == 1
    assert (trainer.ds.precision, trainer.ds.micro_batch, trainer.ds.accumulation) == ("bf16", 2, 2)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}  # built in bf16, as the view says


def test_the_trainer_refuses_a_view_checked_for_another_world_size(tmp_path, monkeypatch):
    import torch

    from fastscale.train.trainer import Trainer

    monkeypatch.setenv("WORLD_SIZE", "1")
    ds = DeepSpeedSettings.parse(BATCH, 2, device_type="cpu")
    with pytest.raises(ConfigError, match=r"deepspeed_config was checked for world_size=2; expected WORLD_SIZE=1"):
        Trainer(torch.nn.Linear(2, 1), ds, [torch.zeros(2)], out_dir=tmp_path)


# Reads of a DeepSpeed config's sections: .get("bf16"), "optimizer" in ds, ds["zero_optimization"] (not a write)
SECTIONS = "bf16|fp16|zero_optimization|optimizer|scheduler|activation_checkpointing|train_micro_batch_size_per_gpu|gradient_accumulation_steps"
READS = re.compile(rf'\.get\("({SECTIONS}|train_batch_size)"|"({SECTIONS})" (not )?in |\["({SECTIONS})"\](?!\s*=[^=])')
VIEW_USERS = ["train/trainer.py", "train/launch.py", "train/plan.py", "train/command.py", "train/monitor.py", "sweep/devices.py",
              "sweep/evaluation.py", "sweep/runner.py"]


@pytest.mark.parametrize("module", VIEW_USERS)
def test_modules_read_the_view_not_the_dict(module):
    lines = (SRC / module).read_text().splitlines()
    reads = [f"{module}:{i}: {line.strip()}" for i, line in enumerate(lines, 1) if READS.search(line)]
    assert reads == []


def test_the_read_pattern_finds_the_reads_it_forbids():
    for line in ('bf16 = (ds.get("bf16") or {}).get("enabled")', 'if "optimizer" in self.ds_config:', 'ds["zero_optimization"]["stage"]',
                 'mb = ds.get("train_batch_size")'):
        assert READS.search(line), line
    for line in ('config["optimizer"] = {"type": "AdamW"}', 'info["train_batch_size"] != self.ds.batch_size'):
        assert not READS.search(line), line
