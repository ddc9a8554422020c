"""linear_cross_entropy under DeepSpeed ZeRO-3 (two CPU ranks, gloo): through the module wrapper
fastscale.nn.LinearCrossEntropyLoss, training follows the same loss curve as plain PyTorch on the
whole batch, with tied and untied output weights, for fused (mean) and recomputed (none) gradients;
called on a partitioned weight outside its module, the op refuses with a clear error."""

import json
import os
import sys
from pathlib import Path

import pytest

import processes

# every test reads one two-rank ZeRO-3 run
pytestmark = pytest.mark.slow

pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("zero3_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3") / "curves.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("TRITON_INTERPRET", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(processes.free_port()), str(WORKER), str(out)]
    run = processes.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["tied=False reduction=mean", "tied=False reduction=none", "tied=True reduction=mean", "tied=True reduction=none"])
def test_zero3_follows_the_plain_loss_curve(results, case):
    curves = results[case]
    assert len(curves["zero3"]) == 4
    assert curves["zero3"][-1] < curves["zero3"][0]  # it trains
    for step, (zero3, plain) in enumerate(zip(curves["zero3"], curves["plain"])):
        assert abs(zero3 - plain) <= 1e-5 * abs(plain), f"step {step}: ZeRO-3 {zero3} vs plain {plain}"


def test_partitioned_weight_outside_its_module_is_refused(results):
    for curves in results.values():
        assert curves["error"] is not None and "ZeRO-3 partitioned parameter" in curves["error"]
