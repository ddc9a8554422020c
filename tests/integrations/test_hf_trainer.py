"""transformers' Trainer with a DeepSpeed ZeRO-3 config on two CPU ranks (gloo): a model patched by
apply_fastscale (fused loss inside lm_head's gathered forward, fastscale attention) logs the same
loss as the stock model at every step, with gradient accumulation (num_items_in_batch) and tied
embeddings (GPT-2)."""

import json
import os
import sys
from pathlib import Path

import pytest

import processes

# every test reads one two-rank Hugging Face Trainer run
pytestmark = pytest.mark.slow

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("hf_trainer_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_zero3") / "losses.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(WORKER.parent), os.environ.get("PYTHONPATH")]))}
    env.pop("TRITON_INTERPRET", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(processes.free_port()), str(WORKER), str(out)]
    run = processes.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_ranks_and_the_fused_loss_ran(results):
    assert results["world_size"] == 2
    assert results["fused_loss_calls"] >= 2 * 4 * 2  # two models, four steps, two micro-batches each


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_zero3_trainer_losses_equal_stock_step_by_step(results, kind):
    stock, fused = results[kind]["stock"], results[kind]["fastscale"]
    assert len(stock) == len(fused) == 4
    assert fused[-1] < fused[0]  # it trains
    for step, (a, b) in enumerate(zip(stock, fused)):
        assert abs(b - a) <= 1e-5 * abs(a), f"step {step}: fastscale {b} vs stock {a}"
