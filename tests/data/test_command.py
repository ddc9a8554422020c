"""`fastscale data` and `fastscale plan` from the command line."""

import json

from fastscale.cli import main
from fastscale.data import TokenShard
from fastscale.train import check_deepspeed_config


def test_fastscale_data_writes_shards(tmp_path, capsys):
    assert main(["data", "captions", "--out", str(tmp_path / "c"), "--order", "image_first"]) == 0
    train = TokenShard(tmp_path / "c" / "train")
    assert len(train) == 1617 and train.meta["tokenizer"]["name"] == "image_caption"
    assert '"path"' in capsys.readouterr().out


def test_fastscale_data_bad_input(tmp_path, capsys):
    assert main(["data", "images", "--out", str(tmp_path / "x"), "--input", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "math", "--out", str(tmp_path / "m"), "--difficulty", "hard"]) == 2
    assert "--difficulty='hard'" in capsys.readouterr().err


def test_fastscale_plan_writes_a_deepspeed_config(tmp_path, capsys):
    out = tmp_path / "ds.json"
    assert main(["plan", "--params", "1.3e9", "--memory", "16GiB", "--host-memory", "256GiB", "--gpus", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pick: ZeRO-2 + optimizer->cpu + activation checkpointing" in printed
    ds = json.loads(out.read_text())
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu" and "activation_checkpointing" in ds
    check_deepspeed_config(ds, 1, device_type="cuda")
    assert main(["plan", "--params", "1e12", "--memory", "16GiB", "--host-memory", "64GiB"]) == 1
    assert "nothing fits" in capsys.readouterr().out


def test_command_line_set_up_imports_neither_torch_nor_deepspeed():
    """`fastscale fit` must work without the GPU stack: building the parser (with the data, plan and
    train subcommands) imports neither torch nor DeepSpeed."""
    import sys

    import processes

    code = "import sys, fastscale.cli as c; c.build_parser(); print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))"
    result = processes.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
