"""The sweep's Ray launcher (optional extra [cluster]): each run is a Ray task on the cluster that
starts the same trainer process as the process launcher, where Ray placed it.

What stays on the driver (the `fastscale sweep` process): the results index, the sweep's lock and the
scheduling loop of fastscale.sweep.runner, which sees a task as it sees a local process (`RayRun`:
poll, returncode, terminate, wait). What Ray does: placing each run on a node with the resources it
requests (one CPU; a share of a GPU or whole GPUs of one node; on CPU the planner's host memory
estimate as Ray's "memory" resource), and retrying a task whose node or worker died (system failures
only: a trainer that exits non-zero is the run's own failure and is not retried).

A run that needs more GPUs than one node has spans nodes (`submit_across_nodes`): a placement group
of one bundle per node, and on each node DeepSpeed's own per-node launcher (what `deepspeed --hostfile`
starts over ssh) with its --node_rank and node 0 as MASTER_ADDR; the launcher sets RANK, LOCAL_RANK and
WORLD_SIZE. Chosen over Ray Train's DeepSpeed integration because it runs the same trainer process,
checkpoints and logs as every other launcher (Ray Train would run the training loop inside its own
workers, with its own checkpoint and failure handling beside ours).

Storage. Every node reads and writes OUT_DIR at the same path (the run directories, checkpoints, the
prepared data): OUT must be on storage every node mounts there (NFS, Lustre, a shared volume). At the
start the driver writes a token into OUT and a task pinned to each node reads it back; a node that
cannot see it stops the sweep with the node's address named (`check_storage`).

Failures. A task's trainer always runs with --resume: started again after its node died (by Ray's retry,
or by a rerun of the sweep, possibly on another node) it continues from its newest checkpoint. Before it
starts, the task takes an exclusive flock on RUN_DIR/.trainer.lock and hands it to the trainer, so a
retry waits until the trainer of the previous attempt has exited instead of writing the same files
beside it (it gets SIGTERM when its task's worker dies, Linux PR_SET_PDEATHSIG). A killed driver takes
its tasks with it (Ray ends the tasks of a dead owner); the index says which runs were running, and a
rerun resumes them.

Loopback clusters (tests, one machine): Ray rewrites a loopback address given to ray.init into the
machine's interface address, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set before ray is imported
(ray._private.services.get_node_ip_address, Ray 2.60); the nodes are started with
node_ip_address="127.0.0.1" (tests/sweep/test_cluster.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import socket
import time
import uuid
from pathlib import Path

from .devices import Inventory, Placement
from .spec import SweepError

logger = logging.getLogger(__name__)

RETRIES = 2  # Ray's retries of a task whose node or worker died
TRAINER_LOCK = ".trainer.lock"
LOCK_WAIT_S = 300.0  # how long a retry waits for the previous attempt's trainer to exit
LOCK_POLL_S = 0.5
STOP_WAIT_S = 60.0  # how long terminate's cancel may take before the task's worker is killed
STORAGE_CHECK = ".storage-check"


@contextlib.contextmanager
def connected(address: str | None, out_dir: Path):
    """Connected to the Ray cluster at address ("auto", "HOST:PORT", "ray://HOST:PORT"; None: "auto"),
    with OUT_DIR seen by every node; yields the cluster's Inventory. Disconnects only if it connected
    (a caller already connected keeps its connection)."""
    try:
        import ray
    except ImportError:
        raise SweepError("launcher='ray' needs Ray: pip install 'fastscale[cluster]'") from None
    ours = not ray.is_initialized()
    if ours:
        try:
            ray.init(address=address or "auto", configure_logging=False, log_to_driver=False)
        except ConnectionError as error:
            raise SweepError(f"address={address!r}: no Ray cluster to connect to ({error}); start one with `ray start --head` "
                             "(README: Run on a cluster)") from None
    try:
        check_storage(out_dir)
        yield cluster_inventory()
    finally:
        if ours:
            ray.shutdown()


def _alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node["Alive"]]


def cluster_inventory() -> Inventory:
    """The cluster as one Inventory for the placement: all its CPUs (one run per CPU on CPU), the smallest
    node's memory (a run the placement fits in it fits on every node: Ray would hold a task that fits
    no node pending for ever), its GPUs as one pool (GPU memory read on a GPU node). Ray then places
    each run on a node where its request fits."""
    import ray

    nodes = _alive_nodes()
    cores = int(sum(node["Resources"].get("CPU", 0) for node in nodes))
    memory = int(min(node["Resources"].get("memory", 0) for node in nodes))
    gpus = int(sum(node["Resources"].get("GPU", 0) for node in nodes))
    if gpus == 0:
        return Inventory("cpu", memory, cores)
    probe = ray.get(ray.remote(num_gpus=1, num_cpus=0)(Inventory.detect).remote())
    return Inventory("cuda", memory, cores, probe.gpu_memory, tuple(str(k) for k in range(gpus)))


def check_storage(out_dir: Path) -> None:
    """Every alive node sees out_dir: a token written here is read back by a task pinned to each node;
    raises SweepError naming the nodes that cannot."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    directory = out_dir / STORAGE_CHECK
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / token
    path.write_text(token)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
        nodes = _alive_nodes()
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(path), token)
                        for node in nodes])
    finally:
        path.unlink()
    blind = [f"{node['NodeManagerAddress']} ({problem})" for node, problem in zip(nodes, seen) if problem]
    if blind:
        raise SweepError(f"OUT_DIR={str(out_dir)!r} is not visible from Ray node(s) {', '.join(blind)}: every node must see OUT_DIR at the "
                         "same path (shared storage: NFS, Lustre, a shared volume); use such a directory or remove those nodes")


def _sees(path: str, token: str) -> str | None:
    """On a node: None when path holds token, else what this node sees there (its hostname included)."""
    try:
        content = Path(path).read_text()
    except OSError as error:
        return f"host {socket.gethostname()}: {error.strerror}"
    return None if content == token else f"host {socket.gethostname()}: another file at that path"


def resources(placement: Placement, task: str, inventory: Inventory) -> dict:
    """Ray resources of one task on one node: a CPU; on CPU the planner's host memory estimate; a
    training run on GPUs its share of one GPU or its whole GPUs; an evaluation runs on the CPU."""
    options = {"num_cpus": 1}
    if inventory.kind == "cpu":
        options["memory"] = placement.device_bytes
    elif task == "train":
        options["num_gpus"] = float(placement.share) if placement.gpus == 1 else placement.gpus
    return options


def nodes_for(name: str, placement: Placement) -> int:
    """How many nodes a run spans: 1 when its GPUs fit the largest node, else the fewest nodes over
    which its ranks divide evenly; raises SweepError when the cluster has not that many such nodes."""
    if placement.gpus <= 1:
        return 1
    per_node = [int(node["Resources"].get("GPU", 0)) for node in _alive_nodes()]
    nodes = next(n for n in range(1, placement.gpus + 1) if placement.gpus % n == 0 and placement.gpus // n <= max(per_node))
    if sum(gpus >= placement.gpus // nodes for gpus in per_node) < nodes:
        raise SweepError(f"sweep run {name} needs {placement.gpus} GPUs: {nodes} node(s) of {placement.gpus // nodes} GPU(s), and the Ray "
                         f"cluster's nodes have {sorted(per_node, reverse=True)} GPUs")
    return nodes


def submit(command: list[str], run_dir: Path, log_name: str, options: dict) -> "RayRun":
    """command (a trainer's or an evaluation's) as a Ray task on one node with options (resources);
    its output appended to RUN_DIR/log_name. Ray retries it where its node or worker died."""
    task = _task().options(**options, max_retries=RETRIES, retry_exceptions=False)
    return RayRun([task.remote(command, str(run_dir), log_name, None)])


def submit_across_nodes(command: list[str], run_dir: Path, log_name: str, *, nodes: int, ranks_per_node: int, gpus: bool) -> "RayRun":
    """A trainer command with nodes x ranks_per_node ranks: a placement group of one bundle per node
    (STRICT_SPREAD: each on a different node), in each a task that starts DeepSpeed's per-node launcher
    with its --node_rank, the per-node rank counts as --world_info, and node 0's address and a port
    free there as the master (a task in bundle 0 picks them; the node tasks wait for its result).
    Not retried by Ray: a rank lost takes the whole group down; the sweep's rerun resumes the run."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {"CPU": ranks_per_node, **({"GPU": ranks_per_node} if gpus else {})}
    group = placement_group([bundle] * nodes, strategy="STRICT_SPREAD")
    where = [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=k) for k in range(nodes)]
    master = ray.remote(_master_address).options(num_cpus=0, scheduling_strategy=where[0], max_retries=0).remote()
    options = {"num_cpus": ranks_per_node, "num_gpus": ranks_per_node if gpus else 0, "max_retries": 0}
    group_of = {"nodes": nodes, "ranks_per_node": ranks_per_node, "master": master}
    refs = [_task().options(**options, scheduling_strategy=where[k]).remote(command, str(run_dir), log_name, {**group_of, "node_rank": k})
            for k in range(nodes)]
    return RayRun(refs, group)


def _master_address() -> tuple[str, int]:
    """On node 0 of a group: its address and a port free there now (rank 0 binds it moments later)."""
    import ray

    from fastscale.train.distributed import free_port


    return ray.util.get_node_ip_address(), free_port()


@functools.cache
def _task():
    import ray

    return ray.remote(_run_on_node)


def _run_on_node(command: list[str], run_dir: str, log_name: str, group: dict | None) -> int:
    """In a Ray worker: command in its own process; its exit code. Alone (group None), a run with more
    than one GPU (Ray set CUDA_VISIBLE_DEVICES to them) starts under DeepSpeed's per-node launcher, one
    rank per GPU, on a port free on this node; in a group, under the launcher as node group["node_rank"].
    The process holds the run's trainer lock (node 0 of a group: the others cannot start without it)."""
    import ray

    from fastscale.train.distributed import free_port

    from .runner import _deepspeed_launch, _spawn

    gpus = [str(g) for g in ray.get_gpu_ids()]
    if group is not None:
        command = _node_of_group(command, group, gpus, _deepspeed_launch)
    elif len(gpus) > 1:
        command = _deepspeed_launch(command, {"localhost": gpus}, free_port())
    log = Path(run_dir) / log_name
    with _trainer_lock(Path(run_dir)) if group is None or group["node_rank"] == 0 else contextlib.nullcontext() as lock:
        with open(log, "a") as handle:  # which node ran which attempt, for whoever reads the log after a failure
            handle.write(f"fastscale: started on Ray node {ray.get_runtime_context().get_node_id()} ({ray.util.get_node_ip_address()}, "
                         f"host {socket.gethostname()}){'' if group is None else ' as node_rank ' + str(group['node_rank'])}\n")
        process = _spawn(command, log, keep_fds=(lock.fileno(),) if lock else ())
        try:
            return process.wait()
        except KeyboardInterrupt:  # ray.cancel: stop the trainer (its launcher stops its ranks), then let Ray end the task
            process.terminate()
            process.wait()
            raise


def _node_of_group(command: list[str], group: dict, gpus: list[str], deepspeed_launch) -> list[str]:
    """command under DeepSpeed's per-node launcher as one node of a group. --world_info lists each
    node's devices; the launcher reads only this node's names (the others count ranks), so the other
    nodes are given placeholders; on CPU this node's "devices" are its rank numbers too."""
    import ray

    host, port = ray.get(group["master"])
    node_rank, count = group["node_rank"], group["ranks_per_node"]
    world = {f"node{k}": gpus if k == node_rank and gpus else [str(r) for r in range(count)] for k in range(group["nodes"])}
    return deepspeed_launch(command, world, port, node_rank=node_rank, master_addr=host)


@contextlib.contextmanager
def _trainer_lock(run_dir: Path):
    """RUN_DIR/.trainer.lock held exclusively: waits (up to LOCK_WAIT_S) for a previous attempt's trainer."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / TRAINER_LOCK, "w")
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{run_dir / TRAINER_LOCK}: held for {LOCK_WAIT_S:.0f} s by another trainer of this run "
                                       "(a previous attempt still running, on this or another node)") from None
                time.sleep(LOCK_POLL_S)
        yield handle
    finally:
        handle.close()


class RayRun:
    """A run's Ray task(s) seen as the scheduler sees a subprocess.Popen: poll() is None while they
    run, then the exit code (the first non-zero one of a group's nodes). A task that ended without an
    exit code (its node died after Ray's retries, or it was cancelled) counts as LOST; when one node of
    a group fails the others are stopped (their ranks would wait for it until the collective's timeout)."""

    LOST = -1

    def __init__(self, refs: list, group=None):
        self.refs, self.group, self.returncode, self.terminating = refs, group, None, False
        self.codes: dict[int, int] = {}

    def poll(self) -> int | None:
        import ray

        if self.returncode is None:
            running = [ref for k, ref in enumerate(self.refs) if k not in self.codes]
            for ref in ray.wait(running, num_returns=len(running), timeout=0)[0]:
                self.codes[self.refs.index(ref)] = self._result(ref)
            if any(self.codes.values()) and len(self.codes) < len(self.refs):
                self._cancel(force=True)
            if len(self.codes) == len(self.refs):
                self._finish()
        return self.returncode

    def _finish(self) -> None:
        self.returncode = next((code for code in self.codes.values() if code), 0)
        if self.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.group)

    @staticmethod
    def _result(ref) -> int:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as error:
            lines = str(error).strip().splitlines()
            logger.warning("a Ray task of the sweep ended without an exit code: %s", lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}")
            return RayRun.LOST

    def _cancel(self, force: bool) -> None:
        import ray

        for k, ref in enumerate(self.refs):
            if k not in self.codes:
                ray.cancel(ref, force=force)

    def terminate(self) -> None:
        """Ask the tasks to stop their processes (KeyboardInterrupt in each task); wait() insists."""
        if self.returncode is None:
            self._cancel(force=False)
            self.terminating = True

    def wait(self) -> int:
        """The exit code once every task has ended; after terminate(), tasks still running STOP_WAIT_S
        later are killed."""
        import ray

        if self.terminating and len(ray.wait(self.refs, num_returns=len(self.refs), timeout=STOP_WAIT_S)[0]) < len(self.refs):
            self._cancel(force=True)  # their workers are killed; each trainer gets SIGTERM (PR_SET_PDEATHSIG)
        while self.poll() is None:
            ray.wait(self.refs, num_returns=len(self.refs))
        return self.returncode
