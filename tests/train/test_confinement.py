"""Nothing a DeepSpeed config says writes outside the run directory: path settings are resolved inside it
or refused naming the key, the value and where it resolves; a sweep file's escaping monitor path fails
its run before anything is written; a real run with csv_monitor on writes only under its run directory
(and its rendezvous listens on loopback only)."""

from __future__ import annotations

import ipaddress
import json
import re
import os
import sys

import pytest

from processes import run, training_env

from fastscale.sweep import SweepSpec, run_sweep
from fastscale.sweep.devices import Inventory, place_runs
from fastscale.sweep.spec import SweepError
from fastscale.train.confinement import confine_deepspeed_config, direct_monitor_files
from fastscale.train.config import ConfigError, DeepSpeedSettings

pytest.importorskip("deepspeed")

DS = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}


def test_relative_monitor_path_resolves_inside_and_input_is_kept(tmp_path):
    ds = {**DS, "csv_monitor": {"enabled": True, "output_path": "logs/csv", "job_name": "job"},
          "flops_profiler": {"enabled": True, "output_file": "flops.txt"}}
    confined = confine_deepspeed_config(ds, tmp_path)
    root = tmp_path.resolve()
    assert confined["csv_monitor"]["output_path"] == str(root / "logs" / "csv")
    assert confined["flops_profiler"]["output_file"] == str(root / "flops.txt")
    assert ds["csv_monitor"]["output_path"] == "logs/csv"  # the caller's dict is not changed


def test_enabled_monitor_without_output_path_writes_to_run_dir_monitor(tmp_path):
    confined = confine_deepspeed_config({**DS, "tensorboard": {"enabled": True}}, tmp_path)
    assert confined["tensorboard"]["output_path"] == str(tmp_path.resolve() / "monitor")


@pytest.mark.parametrize("key, section, expected", [
    ("csv_monitor.output_path", {"csv_monitor": {"enabled": True, "output_path": "../escape"}}, "escape"),
    ("tensorboard.output_path", {"tensorboard": {"enabled": False, "output_path": "/tmp/elsewhere"}}, "/tmp/elsewhere"),
    ("flops_profiler.output_file", {"flops_profiler": {"enabled": True, "output_file": "~/profile.txt"}}, "profile.txt"),
    ("autotuning.results_dir", {"autotuning": {"results_dir": "a/../../b"}}, "b"),
    ("future_section.dump_dir", {"future_section": {"nested": {"dump_dir": "../../x"}}}, "x"),  # a key we do not list
])
def test_escaping_paths_are_refused_naming_key_value_and_resolution(tmp_path, key, section, expected):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        confine_deepspeed_config({**DS, **section}, run_dir)
    message = str(error.value)
    assert key.split(".")[-1] in message and "outside the run directory" in message and str(run_dir.resolve()) in message
    assert expected in message


@pytest.mark.parametrize("job_name", ["../../x", "a/b", "..", ""])
def test_job_name_must_be_a_plain_name(tmp_path, job_name):
    with pytest.raises(ConfigError, match=r"csv_monitor\.job_name="):
        confine_deepspeed_config({**DS, "csv_monitor": {"enabled": True, "job_name": job_name}}, tmp_path)


def test_symlink_that_escapes_is_refused(tmp_path):
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    run_dir.mkdir()
    outside.mkdir()
    (run_dir / "logs").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the run directory") as error:
        confine_deepspeed_config({**DS, "csv_monitor": {"enabled": True, "output_path": "logs"}}, run_dir)
    assert str(outside) in str(error.value)


def test_absolute_path_inside_is_kept(tmp_path):
    inside = tmp_path / "run" / "tb"
    confined = confine_deepspeed_config({**DS, "tensorboard": {"enabled": True, "output_path": str(inside)}}, tmp_path / "run")
    assert confined["tensorboard"]["output_path"] == str(inside.resolve())


def test_nvme_path_absolute_kept_relative_confined(tmp_path):
    zero = {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/local_nvme"},
            "offload_optimizer": {"device": "nvme", "nvme_path": "swap"}}
    confined = confine_deepspeed_config({**DS, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "zero_optimization": zero}, tmp_path)
    assert confined["zero_optimization"]["offload_param"]["nvme_path"] == "/local_nvme"
    assert confined["zero_optimization"]["offload_optimizer"]["nvme_path"] == str(tmp_path.resolve() / "swap")
    with pytest.raises(ConfigError, match="nvme_path='../swap' resolves to"):
        confine_deepspeed_config({**DS, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "../swap"}}}, tmp_path)


def test_wandb_local_files_go_to_the_run_directory_unless_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", "")  # recorded, so that teardown restores the environment the test found
    monkeypatch.delenv("WANDB_DIR")
    confine_deepspeed_config({**DS, "wandb": {"enabled": True}}, tmp_path)
    assert "WANDB_DIR" not in os.environ  # confining is pure: a sweep driver checks every run's config with it
    direct_monitor_files({**DS, "wandb": {"enabled": True}}, tmp_path)
    assert os.environ["WANDB_DIR"] == str(tmp_path.resolve())
    monkeypatch.setenv("WANDB_DIR", "/users/choice")
    direct_monitor_files({**DS, "wandb": {"enabled": True}}, tmp_path)
    assert os.environ["WANDB_DIR"] == "/users/choice"


def test_autotuning_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="autotuning.enabled=true"):
        confine_deepspeed_config({**DS, "autotuning": {"enabled": True}}, tmp_path)


def test_sweep_refuses_nvme_offload():
    ds = {**DS, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
          "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme", "nvme_path": "/local_nvme"}}}
    from fastscale.model.config import GPTConfig

    with pytest.raises(SweepError, match=r"zero_optimization\.offload_optimizer\.device='nvme'.*/local_nvme"):
        place_runs({"a": GPTConfig(vocab_size=16, seq_len=8, n_layer=1, d_model=8, n_head=1)}, DeepSpeedSettings.parse(ds, 1, device_type="cpu"),
                   Inventory("cpu", 2**34, 2))


SWEEP = {
    "name": "escape", "data": {"dataset": "digits"}, "seq_len": 65, "tokens_per_item": 64, "sizes": [3e3], "tokens": [2e3], "seeds": [0],
    "model": {"head_dim": 8}, "lr": 3e-3, "train": {"checkpoint_interval": 0, "eval_interval": 0, "noise_scale_interval": 0},
}


@pytest.mark.slow
@pytest.mark.parametrize("monitor", [{"output_path": "../escape"}, {"output_path": "", "job_name": "../../x"}])
def test_sweep_file_cannot_write_outside_its_run(tmp_path, monitor):
    """A sweep whose DeepSpeed section points csv_monitor outside is refused before any run starts: the
    error names the key and the value, and nothing appears outside OUT (nor any run directory in it)."""
    spec = SweepSpec.from_dict({**SWEEP, "deepspeed": {**DS, "csv_monitor": {"enabled": True, **monitor}}})
    out = tmp_path / "out"
    key = "output_path" if "../escape" in monitor.values() else "job_name"
    with pytest.raises(SweepError, match=re.escape(f"csv_monitor.{key}={monitor[key]!r}")):
        run_sweep(spec, out, jobs=1)
    assert not (out / "runs").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "escape").exists()


RUN = """
import json, sys, psutil
from fastscale.train.launch import build_run
run, ds, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
listening = []
def record(_):
    listening.extend(c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN)
build_run(run, ds, out).fit(callback=record)
print(json.dumps(listening))
"""


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A real 3-step run with csv_monitor on (DeepSpeed's default output: the launching directory),
    started from a directory of its own so that anything written there shows."""
    root = tmp_path_factory.mktemp("csv_run")
    cwd, out = root / "cwd", root / "out"
    cwd.mkdir()
    config = {"model": {"n_layer": 1, "d_model": 16, "n_head": 2}, "data": {"dataset": "digits"}, "seq_len": 33,
              "train": {"steps": 3, "log_interval": 1, "checkpoint_interval": 0, "eval_interval": 0, "noise_scale_interval": 0}}
    ds = {**DS, "csv_monitor": {"enabled": True, "job_name": "job"}, "steps_per_print": 1}
    result = run([sys.executable, "-c", RUN, json.dumps(config), json.dumps(ds), str(out)], cwd=cwd, env=training_env(),
                 timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_real_run_csv_monitor_writes_only_under_run_directory(csv_run):
    root, _ = csv_run
    assert sorted(p.name for p in root.iterdir()) == ["cwd", "out"]
    assert list((root / "cwd").iterdir()) == []
    csv_files = list((root / "out" / "monitor" / "job").glob("*.csv"))
    assert csv_files and all(f.stat().st_size > 0 for f in csv_files)
    config = json.loads((root / "out" / "config.json").read_text())
    assert config["deepspeed"]["csv_monitor"]["output_path"] == str((root / "out" / "monitor").resolve())


@pytest.mark.slow
def test_real_run_rendezvous_listens_on_loopback_only(csv_run):
    _, listening = csv_run
    assert listening, "a single-process run still runs a rendezvous store: it must listen somewhere"
    for ip in listening:
        address = ipaddress.ip_address(ip)
        assert (getattr(address, "ipv4_mapped", None) or address).is_loopback, listening
