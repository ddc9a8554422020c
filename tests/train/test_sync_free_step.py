"""A real two-rank run (torchrun, gloo, CPU) of a tiny GPT whose host syncs are counted (sync_worker.py):
between log steps the training step never waits for the device (no tensor read on the host, no
collective of fastscale's own); the run config's csv_monitor receives the same numbers as
metrics.jsonl.

What counts as a sync is what Python code can be seen doing (sync_worker.py's wrappers); a sync inside a
C++ operator (torch.repeat_interleave without output_size, say) is not visible to them, and no GPU
timeline was measured.
"""

import csv
import json
import math
import sys
from pathlib import Path

import pytest

import processes

# every test reads one two-rank training run
pytestmark = pytest.mark.slow

pytest.importorskip("deepspeed")
WORKER = Path(__file__).with_name("sync_worker.py")
LOG_STEPS = [1, 4, 5, 6, 8, 10]  # noise (before steps 0 and 5), log_interval 4, checkpoints 5 and 10, eval 8, the last


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync") / "run"
    env = processes.training_env()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(processes.free_port()), str(WORKER), str(out)]
    result = processes.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return out


def _syncs_between_log_steps(run: Path, layer: str) -> dict:
    steps = json.loads((run / "syncs.json").read_text())
    assert [s["step"] for s in steps] == list(range(1, 11))
    assert [s["step"] for s in steps if s["logged"]] == LOG_STEPS
    # the counter sees the reads a log step makes (one read of the pending losses, the eval's mean...)
    assert all(any(" at train/" in sync for sync in s["syncs"]) for s in steps if s["logged"])
    return {s["step"]: sorted({sync for sync in s["syncs"] if (" at train/" in sync) == (layer == "train")}) for s in steps if not s["logged"]}


def test_the_trainer_never_waits_between_log_steps(run):
    assert _syncs_between_log_steps(run, "train") == {2: [], 3: [], 7: [], 9: []}


# The ops' reads of CPU tensors on their CPU-only paths, which on CUDA read nothing (tests/ops/test_target_range.py
# and test_attention.py test those device paths with a recorder): the target-range check (on CUDA it is on
# the device), the validation of cu_seqlens (with the triton backend and max_seqlen given, nothing is read)
# and the torch backend's split into documents (the CPU backend; on CUDA the triton one serves packed rows).
CPU_ONLY_READS = {
    "host read __bool__ at ops/cross_entropy.py",  # _check_target_range
    "host read tolist at ops/attention.py",  # _check_cu_seqlens
    "host read tolist at ops/attention_torch.py",  # attention_packed
}


def test_the_model_and_ops_read_only_on_their_cpu_paths_between_log_steps(run):
    """On this CPU-only machine the ops run their CPU paths; the reads there are of CPU tensors (no device
    to wait for). Any other read in the model or the ops, or a new one, fails this test."""
    reads = _syncs_between_log_steps(run, "model and ops")
    assert sorted(reads) == [2, 3, 7, 9]
    for step, syncs in reads.items():
        assert {sync.rsplit(":", 1)[0] for sync in syncs} == CPU_ONLY_READS, step


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_metrics_hold_the_log_steps_with_values_read_once(run):
    records = _metrics(run)
    assert [r["step"] for r in records] == LOG_STEPS
    assert [r["tokens"] for r in records] == [8 * 48 * s for s in LOG_STEPS]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert [r["step"] for r in records if "noise_scale_raw" in r] == [1, 6]
    assert [r["step"] for r in records if "eval_loss" in r] == [8, 10]


def test_csv_monitor_receives_the_metrics(run):
    """Every number of every record, as Train/<field> at the record's step, under RUN_DIR/monitor."""
    records = _metrics(run)
    directory = run / "monitor" / "csv"
    for key in ("loss", "grad_norm", "lr", "tokens", "eval_loss", "tokens_per_s", "noise_scale"):
        with open(directory / f"Train_{key}.csv") as f:
            rows = [row for row in csv.reader(f)][1:]
        expected = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        assert [(int(step), float(value)) for step, value in rows] == expected, key  # floats written by repr: exact
