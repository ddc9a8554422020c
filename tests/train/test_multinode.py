"""One run across two "nodes" with DeepSpeed's own multi-node launching: two per-node launchers
(`python -m deepspeed.launcher.launch --node_rank 0/1`, what `deepspeed --hostfile` starts on each host
over ssh/pdsh) with one rank each, against a loopback master, gloo on CPU. ZeRO-2 partitions the
optimizer states over the two nodes' ranks; the losses equal those of the same run with its two ranks
started by one launcher on one node. ~40 s.
"""

import base64
import json
import sys
from pathlib import Path

import pytest

import processes

# two launcher runs of two ranks each
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("deepspeed")

STEPS = 6
RUN = {
    "model": {"n_layer": 1, "d_model": 24, "n_head": 3},
    "data": {"dataset": "digits"},
    "seq_len": 33,
    "train": {"steps": STEPS, "lr": 3e-3, "warmup_steps": 2, "seed": 11, "eval_interval": 3, "eval_batches": 1, "checkpoint_interval": 3},
}
DEEPSPEED = {"train_batch_size": 6, "train_micro_batch_size_per_gpu": 3, "zero_optimization": {"stage": 2}, "steps_per_print": 10**9}


def launcher(world: dict, node_rank: int, port: int, out: Path, configs: tuple[Path, Path]) -> list[str]:
    world_info = base64.urlsafe_b64encode(json.dumps(world).encode()).decode()
    return [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}", f"--node_rank={node_rank}",
            "--master_addr=127.0.0.1", f"--master_port={port}", str(ROOT / "train.py"), "--config", str(configs[0]),
            "--deepspeed_config", str(configs[1]), "--out", str(out), "--no-progress"]


def losses(out: Path) -> dict:
    records = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["step"]] = (record["loss"], record.get("eval_loss"))
    return records


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    (tmp / "run.json").write_text(json.dumps(RUN))
    (tmp / "ds.json").write_text(json.dumps(DEEPSPEED))
    return tmp, (tmp / "run.json", tmp / "ds.json")


def test_two_nodes_one_rank_each_equal_one_node_two_ranks(configs):
    tmp, files = configs
    one_node, two_nodes = tmp / "one_node", tmp / "two_nodes"
    processes.run(launcher({"localhost": [0, 1]}, 0, processes.free_port(), one_node, files), cwd=ROOT, env=processes.training_env(), timeout=600, check=True,
                  capture_output=True)
    port = processes.free_port()
    world = {"node0": [0], "node1": [0]}
    with processes.started(launcher(world, 1, port, two_nodes, files), cwd=ROOT, env=processes.training_env()) as second:
        first = processes.run(launcher(world, 0, port, two_nodes, files), cwd=ROOT, env=processes.training_env(), timeout=600, capture_output=True, text=True)
        assert second.wait(timeout=120) == 0
    assert first.returncode == 0, first.stderr[-3000:]
    assert "nnodes=2, num_local_procs=1, node_rank=0" in first.stderr + first.stdout
    config = json.loads((two_nodes / "config.json").read_text())
    assert config["world_size"] == 2
    assert sorted(losses(two_nodes)) == list(range(1, STEPS + 1))
    assert losses(two_nodes) == losses(one_node)
