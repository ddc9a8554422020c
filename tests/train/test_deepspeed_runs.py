"""End-to-end runs of `deepspeed train.py` on CPU with two ranks (gloo): every ZeRO stage reduces the
loss, fp32 stages agree with each other, a killed run resumed from its checkpoint reproduces the
uninterrupted curve step for step, and the run directory holds what the contract promises.

Every DeepSpeed start imports DeepSpeed in each of its processes, so the runs are made once per module
and shared by the assertions.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import processes

# every test starts or reads two-rank DeepSpeed runs
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).with_name("train_then_kill.py")
pytest.importorskip("deepspeed")

STEPS = 12
RUN = {
    "model": {"n_layer": 2, "d_model": 32, "n_head": 2},
    "data": {"dataset": "digits"},
    "seq_len": 64,
    "train": {
        "steps": STEPS, "lr": 3e-3, "warmup_steps": 3, "min_lr_ratio": 0.1, "seed": 7,
        "eval_interval": 6, "eval_batches": 2, "checkpoint_interval": 4, "keep_checkpoints": 2, "noise_scale_interval": 3,
        "data_workers": 1,  # not the CPU's default: the resumed curve is checked through a worker's loader too
    },
}


def launch(tmp: Path, out: Path, ds: str | dict, *extra, fault_at=None, check=True):
    config = tmp / f"run-{out.name}.json"
    config.write_text(json.dumps(RUN))
    if isinstance(ds, dict):
        path = tmp / f"ds-{out.name}.json"
        path.write_text(json.dumps(ds))
        ds = str(path)
    # a killed run: train.py's run through a test entry whose callback kills rank 0 after step fault_at
    script = [str(ROOT / "train.py")] if fault_at is None else [str(KILLER), "--kill-after", str(fault_at)]
    command = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(processes.free_port()),
        *script, "--config", str(config), "--deepspeed_config", ds, "--out", str(out), "--no-progress", *extra,
    ]
    result = processes.run(command, cwd=ROOT, env=processes.training_env(), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def curve(out: Path) -> dict:
    """The last record of each step (a resumed run appends)."""
    records = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["step"]] = record
    return records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    outs = {stage: tmp / f"zero{stage}" for stage in (0, 1, 2, 3)}
    # two at a time: a start is mostly one process importing DeepSpeed, so two overlap on two cores
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda stage: launch(tmp, outs[stage], str(ROOT / "configs" / "ds" / f"zero{stage}.json")), outs))
    return tmp, outs


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_zero_stage_reduces_the_loss(runs, stage):
    records = curve(runs[1][stage])
    assert sorted(records) == list(range(1, STEPS + 1))
    first, last = records[1]["loss"], records[STEPS]["loss"]
    assert last < first - 1.0, (first, last)
    assert records[12]["eval_loss"] < records[6]["eval_loss"] < first


def test_fp32_zero_stages_agree(runs):
    """DeepSpeed's ZeRO stages change where states live, not the math: fp32 losses agree."""
    reference = curve(runs[1][0])
    for stage in (1, 2, 3):
        records = curve(runs[1][stage])
        for step in range(1, STEPS + 1):
            assert records[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-4, abs=1e-5), (stage, step)


def test_run_directory_contract(runs):
    out = runs[1][2]
    records = curve(out)
    for record in records.values():
        for key in ("step", "tokens", "flops", "loss", "lr", "tokens_per_s", "grad_norm", "mfu", "pf_days"):
            assert key in record, key
    assert records[1]["tokens"] == 8 * 64 and records[STEPS]["tokens"] == STEPS * 8 * 64
    config = json.loads((out / "config.json").read_text())
    assert config["n_params"] == 12 * 2 * 32**2 and config["model"]["d_model"] == 32
    assert records[STEPS]["flops"] == pytest.approx(config["flops_per_token"] * STEPS * 8 * 64)
    # noise scale every 3 steps under stages 0-2, never under stage 3
    assert [s for s, r in records.items() if "noise_scale" in r] == [1, 4, 7, 10]
    assert all("noise_scale" not in r for r in curve(runs[1][3]).values())
    assert records[10]["noise_scale"] is None or records[10]["noise_scale"] > 0
    # warmup then cosine: the LR peaks at the end of warmup and decays after
    lrs = [records[s]["lr"] for s in range(1, STEPS + 1)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(3e-3) and lrs[-1] < lrs[3]
    tags = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step00000008", "step00000012"]  # keep_checkpoints=2
    assert all((out / "checkpoints" / t / "COMPLETE").is_file() for t in tags)
    assert (out / "checkpoints" / "latest").read_text() == "step00000012"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] == pytest.approx(records[STEPS]["loss"]) and summary["tokens"] == STEPS * 8 * 64


def test_kill_and_resume_reproduces_the_curve(runs):
    tmp, outs = runs
    out = tmp / "killed"
    result = launch(tmp, out, str(ROOT / "configs" / "ds" / "zero2.json"), fault_at=7, check=False)
    assert result.returncode != 0  # rank 0 was SIGKILLed after step 7
    killed = curve(out)
    assert max(killed) == 7
    assert [t for _, t in __import__("fastscale.train.checkpoint", fromlist=["x"]).complete_tags(out / "checkpoints")] == ["step00000004"]
    # a torn, newer checkpoint (no COMPLETE marker) must never be picked
    torn = out / "checkpoints" / "step00000010"
    torn.mkdir()
    (torn / "garbage.pt").write_bytes(b"not a checkpoint")
    launch(tmp, out, str(ROOT / "configs" / "ds" / "zero2.json"), "--resume")
    resumed, reference = curve(out), curve(outs[2])
    assert sorted(resumed) == list(range(1, STEPS + 1))
    lines = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == list(range(1, 8)) + list(range(5, STEPS + 1))  # steps 5-7 appear twice
    for step in range(1, STEPS + 1):
        for key in ("loss", "lr", "tokens", "flops", "eval_loss", "noise_scale", "grad_norm"):
            assert resumed[step].get(key) == reference[step].get(key), (step, key)


def test_bf16_accumulation_and_activation_checkpointing(tmp_path):
    ds = {
        "train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0,
        "bf16": {"enabled": True}, "zero_optimization": {"stage": 1},
        "activation_checkpointing": {"partition_activations": False}, "steps_per_print": 10**9,
    }
    out = tmp_path / "bf16"
    launch(tmp_path, out, ds)
    records = curve(out)
    assert records[STEPS]["loss"] < records[1]["loss"] - 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["deepspeed"]["gradient_accumulation_steps"] == 2
