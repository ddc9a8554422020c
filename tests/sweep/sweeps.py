"""What the sweep tests share: a tiny CPU sweep, the learning curves two sweeps are compared by, and
waiting on (and finding) the trainer processes of a sweep. tests/sweep is on sys.path (rootdir-relative
imports, no package), so its tests import this module by name."""

import json
import os
import time

# head_dim 8 and one layer: d_model 16, 24, 32, 40, 48 give five distinct shapes from from_params
TINY = {
    "name": "tiny", "data": {"dataset": "digits"}, "seq_len": 193, "tokens_per_item": 192,
    "sizes": [3e3, 7e3, 1.2e4, 1.9e4, 2.8e4], "tokens": [2.4e4], "seeds": [0], "model": {"head_dim": 8}, "lr": 3e-3,
    "train": {"warmup_steps": 2, "log_interval": 1, "eval_interval": 10, "eval_batches": 2, "checkpoint_interval": 5, "noise_scale_interval": 5},
    "deepspeed": {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}, "steps_per_print": 1000000000},
}


def curves(sweep_dir):
    """Each run's learning curve, the last record of each step (a resumed run appends)."""
    out = {}
    for run_dir in sorted((sweep_dir / "runs").iterdir()):
        by_step = {}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            by_step[record["step"]] = (record["loss"], record.get("eval_loss"))
        out[run_dir.name] = by_step
    return out


def wait_for(value, timeout, what):
    """value()'s first truthy result, polled until timeout seconds have passed (then an AssertionError naming what)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = value()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def trainers_of(out):
    """The pids of this machine's processes started for the runs of the sweep in out."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if str(out / "runs") in cmdline:
                yield pid
