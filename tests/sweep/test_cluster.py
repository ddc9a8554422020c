"""The ray launcher on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster), all of
it on the loopback address: a small sweep over both nodes equals the single-node sweep run by run and
step by step; with the worker node killed mid-sweep (its raylet and workers, cluster.remove_node) the
sweep still ends with the same numbers (Ray retries the run's task, which resumes from its checkpoint)
and a rerun of the same sweep has nothing left to do. Three very small runs (~2-3 minutes in all).

Ray rewrites a loopback address given to ray.init into the machine's interface address unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set before ray is imported (Ray 2.60): the module fixture sets it
for this process and every Ray process it starts, and imports ray only then.
"""

import importlib.util
import ipaddress
import json
import re
import shutil
import tempfile
import threading
import time

import pytest

import processes
from sweeps import curves, wait_for

from fastscale.sweep import SweepSpec, run_sweep
from fastscale.sweep.cluster import RayRun, check_storage, submit_across_nodes
from fastscale.sweep.runner import _deepspeed_launch, _trainer_command
from fastscale.sweep.spec import SweepError
from fastscale.train.checkpoint import complete_tags

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray (the [cluster] extra)")

# head_dim 8 and one layer: three distinct shapes; 16 steps each with a checkpoint every 4
TINY = {
    "name": "tiny", "data": {"dataset": "digits"}, "seq_len": 193, "tokens_per_item": 192,
    "sizes": [3e3, 1.2e4, 2.8e4], "tokens": [1.24e4], "seeds": [0], "model": {"head_dim": 8}, "lr": 3e-3,
    "train": {"warmup_steps": 2, "log_interval": 1, "eval_interval": 8, "eval_batches": 2, "checkpoint_interval": 4, "noise_scale_interval": 4},
    "deepspeed": {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}, "steps_per_print": 1000000000},
}
LOOPBACK = "127.0.0.1"
# one run of two ranks (ZeRO-2 partitions the optimizer states over them)
RUN = {
    "model": {"n_layer": 1, "d_model": 24, "n_head": 3}, "data": {"dataset": "digits"}, "seq_len": 33,
    "train": {"steps": 6, "lr": 3e-3, "warmup_steps": 2, "seed": 11, "eval_interval": 3, "eval_batches": 1, "checkpoint_interval": 3},
}
DEEPSPEED = {"train_batch_size": 6, "train_micro_batch_size_per_gpu": 3, "zero_optimization": {"stage": 2}, "steps_per_print": 10**9}


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a worker node of one CPU each on 127.0.0.1; every process of both is gone after
    the module, whatever happened in it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray kills workers when the machine's memory is 95% used: the memory of a shared test machine, not the cluster's
        patch.setenv("RAY_memory_monitor_refresh_ms", "0")
        import ray
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        assert not ray_constants.ENABLE_RAY_CLUSTER, "ray was imported before this module set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
        temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
        cluster = Cluster(shutdown_at_exit=False)
        try:
            node = {"node_ip_address": LOOPBACK, "num_cpus": 1}
            cluster.add_node(**node, include_dashboard=False, temp_dir=temp_dir)
            cluster.add_node(**node)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def single_node(tmp_path_factory):
    """The reference: the same sweep on this machine with the process launcher."""
    out = tmp_path_factory.mktemp("single")
    started = time.perf_counter()
    run_sweep(SweepSpec.from_dict(TINY), out, jobs=2, launcher="process")
    return out, time.perf_counter() - started


@pytest.fixture(scope="module")
def on_two_nodes(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray")
    started = time.perf_counter()
    run_sweep(SweepSpec.from_dict(TINY), out, launcher="ray", address=ray_cluster.address)
    return out, time.perf_counter() - started


def summaries(sweep_dir):
    runs = json.loads((sweep_dir / "results.json").read_text())["runs"]
    return {name: (entry["state"], entry["summary"]["steps"], entry["summary"]["final_loss"], entry["summary"]["final_eval_loss"])
            for name, entry in runs.items()}


def nodes_of(run_dir):
    """The Ray nodes that started the run's trainer, in order (the task's first line in train.log)."""
    return re.findall(r"started on Ray node ([0-9a-f]+)", (run_dir / "train.log").read_text())


@pytest.mark.slow
def test_every_ray_process_is_on_loopback(ray_cluster):
    import psutil
    import ray

    assert ray_cluster.address.startswith(f"{LOOPBACK}:")
    ray.init(address=ray_cluster.address, configure_logging=False, log_to_driver=False)
    try:
        nodes = ray.nodes()
    finally:
        ray.shutdown()
    assert len(nodes) == 2 and all(node["Alive"] for node in nodes)
    assert {node["NodeManagerAddress"] for node in nodes} == {LOOPBACK}
    processes = [psutil.Process(info.process.pid) for node in ray_cluster.list_all_nodes()
                 for infos in node.all_processes.values() for info in infos]
    processes += [child for process in processes for child in process.children(recursive=True)]
    listening = {(c.laddr.ip, c.laddr.port) for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening and all(_is_loopback(ip) for ip, _ in listening), listening


def _is_loopback(ip):
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1: gRPC's dual-stack sockets)."""
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


@pytest.mark.slow
def test_sweep_on_two_nodes_equals_the_single_node_sweep(on_two_nodes, single_node, ray_cluster):
    out, seconds = on_two_nodes
    reference, reference_seconds = single_node
    assert summaries(out) == summaries(reference)
    assert all(state == "done" and steps == 16 for state, steps, _, _ in summaries(out).values())
    assert curves(out) == curves(reference)
    ran_on = {node for run_dir in (out / "runs").iterdir() for node in nodes_of(run_dir)}
    assert ran_on == {node.node_id for node in ray_cluster.list_all_nodes()}  # both nodes trained runs
    print(f"3 runs: single node (process launcher, 2 at a time) {reference_seconds:.0f} s, two Ray nodes of 1 CPU {seconds:.0f} s")


@pytest.mark.slow
def test_sweep_with_a_node_killed_mid_run_ends_with_the_same_numbers(ray_cluster, single_node, tmp_path):
    import ray

    out = tmp_path / "sweep"
    worker = next(node for node in ray_cluster.worker_nodes)
    spec = SweepSpec.from_dict(TINY)
    ray.init(address=ray_cluster.address, configure_logging=False, log_to_driver=False)  # the sweep thread uses this connection
    try:
        failure = []
        sweep = threading.Thread(target=lambda: _run_catching(failure, spec, out))
        sweep.start()
        try:
            victim = wait_for(lambda: _checkpointed_run_on(out, worker.node_id), 900, "a run on the worker node with a checkpoint")
        finally:
            ray_cluster.remove_node(worker)  # its raylet and workers are killed; the run's trainer gets SIGTERM
            sweep.join(timeout=600)
        assert not sweep.is_alive() and not failure, failure
        ray_cluster.add_node(node_ip_address=LOOPBACK, num_cpus=1)  # the cluster as other tests expect it
    finally:
        ray.shutdown()
    reference = single_node[0]
    assert summaries(out) == summaries(reference)
    assert curves(out) == curves(reference)
    nodes = nodes_of(out / "runs" / victim)
    assert nodes[0] == worker.node_id and len(nodes) == 2 and nodes[1] != worker.node_id  # retried on the head node
    steps = [json.loads(line)["step"] for line in (out / "runs" / victim / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(1) == 1 and steps.count(16) == 1  # resumed from its checkpoint, not trained again from step 1
    before = (out / "results.json").read_text()

    index = run_sweep(spec, out, launcher="ray", address=ray_cluster.address)  # the same command again: nothing left to do

    assert all(entry["state"] == "done" for entry in index.runs.values())
    assert json.loads((out / "results.json").read_text())["runs"] == json.loads(before)["runs"]


def _run_catching(failure, spec, out):
    try:
        run_sweep(spec, out, launcher="ray")
    except BaseException as error:  # reported by the test's thread
        failure.append(error)


def _checkpointed_run_on(out, node_id):
    for run_dir in sorted((out / "runs").glob("*")) if (out / "runs").is_dir() else ():
        if (run_dir / "train.log").is_file() and nodes_of(run_dir) == [node_id] and complete_tags(run_dir / "checkpoints"):
            return run_dir.name
    return None


@pytest.mark.slow
def test_a_node_that_cannot_see_out_dir_is_refused(ray_cluster, tmp_path, monkeypatch):
    """Every node of this cluster shares this machine's files: the nodes are made to look for the token
    at a path where it is not."""
    import ray

    from fastscale.sweep import cluster

    original = cluster._sees
    ray.init(address=ray_cluster.address, configure_logging=False, log_to_driver=False)
    try:
        monkeypatch.setattr(cluster, "_sees", lambda path, token: original(path + ".elsewhere", token))
        with pytest.raises(SweepError, match=r"OUT_DIR=.* is not visible from Ray node\(s\) 127\.0\.0\.1 \(host .*No such file"):
            check_storage(tmp_path)
    finally:
        ray.shutdown()


def test_address_needs_the_ray_launcher(tmp_path):
    with pytest.raises(SweepError, match=r"address='auto' is the Ray cluster's; it needs launcher='ray', got launcher='process'"):
        run_sweep(SweepSpec.from_dict(TINY), tmp_path, launcher="process", address="auto")


@pytest.mark.slow
def test_a_task_that_dies_without_exit_code_is_lost(ray_cluster):
    import ray

    ray.init(address=ray_cluster.address, configure_logging=False, log_to_driver=False)
    try:
        def die():
            import os
            os._exit(3)  # the worker itself dies: no exit code reaches the driver

        run = RayRun([ray.remote(max_retries=0)(die).remote()])
        assert run.wait() == RayRun.LOST and run.poll() == RayRun.LOST
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_run_across_two_nodes_equals_its_two_ranks_on_one_node(ray_cluster, tmp_path):
    """What the sweep does for a run needing more GPUs than a node has, on CPU ranks: a placement group
    of one bundle per node, DeepSpeed's per-node launcher on each with its node_rank and node 0 as
    the master. Reference: the same two ranks under one launcher on this machine."""
    import ray

    one_node, two_nodes = tmp_path / "one_node", tmp_path / "two_nodes"
    command = _trainer_command(one_node, RUN, DEEPSPEED, resume=False)
    processes.run(_deepspeed_launch(command, {"localhost": ["0", "1"]}, processes.free_port()), timeout=600, check=True,
                  capture_output=True, env=_rank_free_env())
    ray.init(address=ray_cluster.address, configure_logging=False, log_to_driver=False)
    try:
        run = submit_across_nodes(_trainer_command(two_nodes, RUN, DEEPSPEED, resume=True), two_nodes, "train.log", nodes=2,
                                  ranks_per_node=1, gpus=False)
        assert run.wait() == 0, _tail(two_nodes / "train.log")
        from ray.util import placement_group_table

        assert all(entry["state"] == "REMOVED" for entry in placement_group_table().values())
    finally:
        ray.shutdown()
    log = (two_nodes / "train.log").read_text()
    ranks = dict(re.findall(r"started on Ray node ([0-9a-f]+) .* as node_rank (\d)", log))
    assert len(ranks) == 2 and set(ranks.values()) == {"0", "1"}  # one node_rank on each node
    assert json.loads((two_nodes / "config.json").read_text())["world_size"] == 2
    assert losses(two_nodes) == losses(one_node) and sorted(losses(one_node)) == list(range(1, 7))


def _tail(log):
    return log.read_text()[-3000:] if log.is_file() else f"no {log}"


def _rank_free_env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}


def losses(run_dir):
    return {record["step"]: (record["loss"], record.get("eval_loss"))
            for record in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("gpus, per_node, nodes", [(1, [8, 8], 1), (4, [8, 8], 1), (16, [8, 8], 2), (12, [4, 4, 4], 3), (6, [4, 4, 4], 2)])
def test_a_run_spans_the_fewest_nodes_its_ranks_divide_over(monkeypatch, gpus, per_node, nodes):
    from fastscale.sweep import cluster

    monkeypatch.setattr(cluster, "_alive_nodes", lambda: [{"Resources": {"GPU": float(g), "CPU": 8.0}} for g in per_node])
    assert cluster.nodes_for("big", _placement(gpus)) == nodes


def test_a_run_the_cluster_cannot_hold_is_refused(monkeypatch):
    from fastscale.sweep import cluster

    monkeypatch.setattr(cluster, "_alive_nodes", lambda: [{"Resources": {"GPU": 8.0}}, {"Resources": {"GPU": 4.0}}])
    with pytest.raises(SweepError, match=r"sweep run big needs 16 GPUs: 2 node\(s\) of 8 GPU\(s\), and the Ray cluster's nodes have \[8, 4\] GPUs"):
        cluster.nodes_for("big", _placement(16))


def test_resources_of_a_task():
    from fractions import Fraction

    from fastscale.sweep.cluster import resources
    from fastscale.sweep.devices import Inventory

    cpu, gpus = Inventory("cpu", 2**33, 4), Inventory("cuda", 2**35, 16, 2**34, ("0", "1"))
    assert resources(_placement(1, per_device=4), "train", cpu) == {"num_cpus": 1, "memory": 1000}
    assert resources(_placement(1, per_device=4), "train", gpus) == {"num_cpus": 1, "num_gpus": float(Fraction(1, 4))}
    assert resources(_placement(2), "train", gpus) == {"num_cpus": 1, "num_gpus": 2}
    assert resources(_placement(2), "evaluate", gpus) == {"num_cpus": 1}


def _placement(gpus, per_device=1):
    from fastscale.sweep.devices import Placement

    return Placement(None, False, gpus, per_device, 1000, "test")
