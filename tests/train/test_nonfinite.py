"""Non-finite training, for real: a regression trained by the Trainer in one process (DeepSpeed, CPU) on
data with poisoned rows (x = 1e30, so the loss overflows float32 to inf and the gradients to inf/NaN)
placed at chosen steps. A non-finite step stops the run after writing its metrics (strict JSON, null
for the non-finite values) and no checkpoint after it; train.nonfinite="skip" withholds the update and
goes on, until max_consecutive_skips; a torn last metrics line is cut before a resumed run appends (the
kill comes from the Trainer's callback).

fp16 (DeepSpeed's dynamic loss scaler) cannot run on this CPU-only machine (check_deepspeed_config
refuses it, and DeepSpeed's CPU accelerator has no fp16 optimizer), so its rule is tested on
step_outcome, the function the loop asks.
"""

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

from fastscale.train.trainer import step_outcome
from processes import run, training_env

pytest.importorskip("deepspeed")

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, torch
    from fastscale.data.packing import rows_for
    from fastscale.train import Trainer

    spec = json.loads(sys.argv[1])

    class Regression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 1)
        def forward(self, x, y):
            prediction = self.linear(x.to(self.linear.weight.dtype)).squeeze(-1).float()
            return torch.nn.functional.mse_loss(prediction, y)

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.linspace(-1, 1, 8) + 0.1 * torch.randn(256)
    for step in spec["poison"]:  # the first sample of these (1-based) steps
        x[int(rows_for(256, 0, (step - 1) * 16, 1)[0])] = 1e30
    ds = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 8, **spec.get("ds", {})}
    trainer = Trainer(Regression(), ds, torch.utils.data.TensorDataset(x, y), out_dir=spec["out"],
                      **{"lr": 0.05, "warmup_steps": 1, "eval_interval": 0, "noise_scale_interval": 0, **spec["train"]})

    def kill_after_fault_step(record):  # a hard kill right after that step's record, before its checkpoint
        if record["step"] == spec.get("fault_at"):
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.fit(resume=spec.get("resume", False), callback=kill_after_fault_step)
    """
)


def train(out: Path, train: dict, *, poison=(), ds=None, resume=False, fault_at=None):
    spec = {"out": str(out), "train": train, "poison": list(poison), "ds": ds or {}, "resume": resume, "fault_at": fault_at}
    return run([sys.executable, "-c", SCRIPT, json.dumps(spec)], capture_output=True, text=True, env=training_env(), timeout=300)


def refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def strict_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, parsed strictly (NaN/Infinity literals raise)."""
    return [json.loads(line, parse_constant=refuse_constant) for line in path.read_text().splitlines()]


def strict_json(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=refuse_constant)


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) if (out / "checkpoints").is_dir() else []


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_after_writing_its_step(tmp_path):
    out = tmp_path / "run"
    result = train(out, {"steps": 8, "checkpoint_interval": 2, "keep_checkpoints": 5}, poison=[4])
    assert result.returncode != 0
    assert "step 4: loss=inf" in result.stderr or "step 4: loss=nan" in result.stderr, result.stderr[-3000:]
    assert ": not finite" in result.stderr and "learning rate too high" in result.stderr and "bad data" in result.stderr
    records = strict_lines(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records[:3])
    assert records[3]["loss"] is None and records[3]["grad_norm"] is None
    assert checkpoints(out) == ["step00000002"]  # step 4 would have had one: the non-finite state is not saved
    summary = strict_json(out / "summary.json")
    assert summary["stopped"]["step"] == 4 and "not finite" in summary["stopped"]["reason"]
    assert summary["final_loss"] is None and summary["tokens"] == 4 * 16 * 8  # tokens: the elements of x


@pytest.mark.slow
def test_between_log_steps_a_non_finite_step_is_found_at_the_next_log_step(tmp_path):
    """The loop reads losses only on log steps: a non-finite step 5 under log_interval=4 is judged at
    step 8, which then records step 5 (and nothing after it), names it and writes no checkpoint of 8."""
    out = tmp_path / "run"
    result = train(out, {"steps": 12, "log_interval": 4, "checkpoint_interval": 4}, poison=[5])
    assert result.returncode != 0
    assert "step 5: loss=inf" in result.stderr or "step 5: loss=nan" in result.stderr, result.stderr[-3000:]
    records = strict_lines(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [4, 5]
    assert math.isfinite(records[0]["loss"]) and records[1]["loss"] is None
    assert checkpoints(out) == ["step00000004"]
    summary = strict_json(out / "summary.json")
    assert summary["stopped"]["step"] == 5 and summary["tokens"] == 8 * 16 * 8  # steps 6-8 ran before the read


@pytest.mark.slow
def test_skip_mode_withholds_updates_and_stops_after_too_many_in_a_row(tmp_path):
    out = tmp_path / "run"
    train_settings = {"steps": 12, "nonfinite": "skip", "max_consecutive_skips": 3, "checkpoint_interval": 5, "noise_scale_interval": 1}
    result = train(out, train_settings, poison=[4, 6, 7, 8])
    assert result.returncode != 0
    assert "step 8: 3 consecutive steps were skipped (train.max_consecutive_skips=3)" in result.stderr, result.stderr[-3000:]
    records = strict_lines(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["skipped_steps"] for r in records] == [0, 0, 0, 1, 1, 2, 3, 4]
    # the update of step 4 was withheld: had its NaN gradients been applied, every later loss would be NaN
    assert all(math.isfinite(records[i]["loss"]) for i in (0, 1, 2, 4))
    assert records[4]["loss"] < records[0]["loss"]
    assert records[4]["lr"] == records[3]["lr"] != records[2]["lr"]  # a withheld step does not advance the schedule
    # the noise scale's average skipped the NaN measurements
    assert records[3]["noise_scale_raw"] == [None, None] and records[3]["noise_scale"] is None
    assert records[4]["noise_scale"] is not None and math.isfinite(records[4]["noise_scale"])
    assert checkpoints(out) == ["step00000005"]
    summary = strict_json(out / "summary.json")
    assert summary["skipped_steps"] == 4 and summary["stopped"]["step"] == 8


@pytest.mark.slow
def test_bf16_steps_deepspeed_withholds_are_counted_as_skipped(tmp_path):
    """Under bf16 DeepSpeed itself withholds an update with non-finite gradients (bf16.check_grad_overflow);
    the trainer reads that from the engine and counts the step. The optimizer is DeepSpeed's own (an
    "optimizer" section; torch_adam: no JIT build), so the trainer's withholding hook is not involved."""
    out = tmp_path / "run"
    ds = {"bf16": {"enabled": True}, "optimizer": {"type": "AdamW", "params": {"lr": 0.05, "torch_adam": True}}}
    result = train(out, {"steps": 5, "nonfinite": "skip", "checkpoint_interval": 0}, poison=[3], ds=ds)
    assert result.returncode == 0, result.stderr[-3000:]
    records = strict_lines(out / "metrics.jsonl")
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1, 1]
    assert records[2]["loss"] is None
    assert records[3]["lr"] == records[2]["lr"] != records[1]["lr"]  # DeepSpeed does not advance the schedule either
    assert all(math.isfinite(records[i]["loss"]) for i in (0, 1, 3, 4))
    assert strict_json(out / "summary.json")["stopped"] is None


@pytest.mark.slow
def test_skip_mode_stops_when_the_update_could_not_be_withheld(tmp_path):
    """DeepSpeed's own optimizer (an "optimizer" section) under fp32 and ZeRO stage 0 applies whatever
    gradients it gets and the trainer's hook is not on it: the weights are then NaN, so skip mode stops."""
    out = tmp_path / "run"
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": 0.05, "torch_adam": True}}}
    result = train(out, {"steps": 5, "nonfinite": "skip", "checkpoint_interval": 1, "keep_checkpoints": 5}, poison=[2], ds=ds)
    assert result.returncode != 0
    assert "step 2: loss=inf, gradient norm=inf: not finite, and the update was applied anyway" in result.stderr, result.stderr[-3000:]
    assert [r["step"] for r in strict_lines(out / "metrics.jsonl")] == [1, 2]
    assert checkpoints(out) == ["step00000001"]


@pytest.mark.slow
def test_a_torn_metrics_line_is_cut_before_a_resumed_run_appends(tmp_path):
    settings = {"steps": 8, "checkpoint_interval": 4}
    reference = tmp_path / "reference"
    assert train(reference, settings).returncode == 0
    out = tmp_path / "killed"
    assert train(out, settings, fault_at=6).returncode != 0  # SIGKILLed after writing step 6's record
    metrics = out / "metrics.jsonl"
    data = metrics.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    metrics.write_bytes(data[: last + (len(data) - last) // 2])  # step 6's record torn in the middle
    result = train(out, settings, resume=True)
    assert result.returncode == 0, result.stderr[-3000:]
    records = strict_lines(metrics)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 5, 6, 7, 8]  # resumed from step 4's checkpoint
    expected = {r["step"]: r for r in strict_lines(reference / "metrics.jsonl")}
    resumed = {r["step"]: r for r in records}
    assert sorted(resumed) == sorted(expected) == list(range(1, 9))
    for step in expected:
        for key in ("loss", "lr", "tokens", "grad_norm", "skipped_steps"):
            assert resumed[step][key] == expected[step][key], (step, key)


@pytest.mark.parametrize(
    "loss, grad_norm, applied, loss_scaling, mode, outcome",
    [
        (2.0, 1.0, True, False, "stop", "ok"),
        (math.nan, 1.0, True, False, "stop", "stop"),
        (2.0, math.inf, False, False, "stop", "stop"),  # bf16: DeepSpeed withheld it, the config says stop
        (2.0, math.inf, False, False, "skip", "skipped"),
        (math.inf, math.nan, True, False, "skip", "stop"),  # applied anyway: the weights are not finite
        (2.0, math.inf, False, True, "stop", "skipped"),  # fp16 loss scaler overflow: skipped, never a stop
        (math.inf, math.inf, False, True, "stop", "stop"),  # fp16 with a non-finite loss: not an overflow of the scale
        (2.0, None, False, False, "stop", "skipped"),
    ],
)
def test_step_outcome(loss, grad_norm, applied, loss_scaling, mode, outcome):
    assert step_outcome(loss, grad_norm, applied=applied, loss_scaling=loss_scaling, mode=mode) == outcome
