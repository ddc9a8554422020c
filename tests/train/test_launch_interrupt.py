"""train.py under Ctrl-C: one line with the step, the newest checkpoint and the exact command to resume,
exit code 130, no traceback; that command then says which checkpoint it continued from. One small run
(~20-30 s on 2 busy cores)."""

import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

import processes

from fastscale.train.checkpoint import interrupts_held
from fastscale.train.launch import Progress, resume_command

ROOT = Path(__file__).resolve().parents[2]
RUN = {
    "model": {"n_layer": 1, "d_model": 16, "n_head": 2, "positions": "learned"},
    "data": {"dataset": "digits"},
    "seq_len": 193,
    "train": {"steps": 400, "seed": 0, "lr": 3e-3, "warmup_steps": 2, "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 5,
              "keep_checkpoints": 2, "noise_scale_interval": 0, "data_workers": 1},  # a worker: its hand-over of a batch must not be cut off
}
INTERRUPTED = re.compile(r"^interrupted at step (\d+) \(newest checkpoint: step (\d+)\); resume with: (.+)$")


def _last_step(metrics: Path) -> int:
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:  # a line being written
        return 0


@pytest.mark.slow
def test_ctrl_c_prints_one_line_with_the_resume_command_and_resume_names_its_checkpoint(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps(RUN))
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMP_NUM_THREADS")}
    command = [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--deepspeed_config", str(ROOT / "configs/ds/zero0.json"),
               "--out", str(out)]
    with processes.started(command, stdout=processes.subprocess.PIPE, stderr=processes.subprocess.PIPE, text=True, env=env, cwd=tmp_path) as process:
        deadline = time.time() + 180
        while _last_step(out / "metrics.jsonl") < 7 and process.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr + stdout
    assert "OMP_NUM_THREADS is unset: training with 1 thread per rank" in stderr
    match = INTERRUPTED.match(stderr.strip().splitlines()[-1])
    assert match, stderr[-2000:]
    step, checkpoint, again = int(match[1]), int(match[2]), shlex.split(match[3])
    assert 7 <= step < RUN["train"]["steps"] and checkpoint == step // 5 * 5
    assert again == ["python", str(ROOT / "train.py"), *command[2:], "--resume"]

    again[again.index("--out") + 2:] = ["--steps", str(checkpoint + 2), "--no-progress", "--resume"]  # two steps past it, not 400
    result = processes.run([sys.executable, *again[1:]], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from checkpoint {out / 'checkpoints' / f'step{checkpoint:08d}'} (step {checkpoint})" in result.stderr


def test_the_resume_command_drops_the_launchers_local_rank(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    words = ["python", "train.py", "--config", "a b.json", "--local_rank=0", "--out", "o", "--local-rank", "1"]
    assert resume_command(words) == "python train.py --config 'a b.json' --out o --resume"
    assert resume_command([*words, "--resume"]) == "python train.py --config 'a b.json' --out o --resume"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resume_command(words) == "deepspeed <launcher options> train.py --config 'a b.json' --out o --resume"


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler, as under a terminal: a job started in the background (nohup ... &)
    inherits SIGINT ignored, and Python then leaves it ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_during_a_checkpoint_save_takes_effect_when_the_save_ends(python_sigint_handler):
    before, saved = signal.getsignal(signal.SIGINT), []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            saved.append("the rest of the save ran")
    assert saved == ["the rest of the save ran"]
    assert signal.getsignal(signal.SIGINT) is before
    with interrupts_held():
        saved.append("no Ctrl-C, no interrupt")
    assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_lost_in_a_finalizer_is_raised_again_at_the_next_step(tmp_path):
    progress = Progress(10, bar=False, resume=False, checkpoints=tmp_path)
    progress({"step": 1, "tokens": 64, "lr": 1e-3})  # no Ctrl-C: a step goes by
    with pytest.raises(KeyboardInterrupt):
        progress.interrupt(signal.SIGINT, None)  # as if raised where Python drops it
    with pytest.raises(KeyboardInterrupt):
        progress({"step": 2, "tokens": 128, "lr": 1e-3})
