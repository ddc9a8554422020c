"""The sweep's Ray launcher (optional extra [cluster]): each run is a Ray task on the cluster that
starts the same trainer process as the process launcher, where Ray placed it.

What stays on the driver (the `fastscale sweep` process): the results index, the sweep's lock and the
scheduling loop of fastscale.sweep.runner, which sees a task as it sees a local process (`RayRun`:
poll, returncode, terminate, wait). What Ray does: placing each run on a node with the resources it
requests (one CPU; a share of a GPU or whole GPUs of one node; on CPU the planner's host memory
estimate as Ray's "memory" resource), and retrying a task whose node or worker died (system failures
only: a trainer that exits non-zero is the run's own failure and is not retried).

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
    node's memory, its GPUs as one pool (GPU memory read on a GPU node). Ray then places each run on
    one node where its request fits."""
    import ray

    nodes = _alive_nodes()
    cores = int(sum(node["Resources"].get("CPU", 0) for node in nodes))
    memory = int(min(node["Resources"].get("memory", 0) for node in nodes))
    gpus = int(sum(node["Resources"].get("GPU", 0) for node in nodes))
    if gpus == 0:
        return Inventory("cpu", memory, cores)
    probe = ray.get(ray.remote(num_gpus=1, num_cpus=0)(Inventory.detect).remote())
    return Inventory("cuda", memory, cores, probe.gpu_memory, tuple(str(k) for k in range(gpus)))


def gpus_per_node() -> int:
    return int(max(node["Resources"].get("GPU", 0) for node in _alive_nodes()))


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
    """Ray resources of one task: a CPU; on CPU the planner's host memory estimate; a training run on
    GPUs its share of one GPU or its whole GPUs (one node's: a run spanning nodes is refused by
    check_fits_nodes); an evaluation runs on the CPU."""
    options = {"num_cpus": 1}
    if inventory.kind == "cpu":
        options["memory"] = placement.device_bytes
    elif task == "train":
        options["num_gpus"] = float(placement.share) if placement.gpus == 1 else placement.gpus
    return options


def check_fits_nodes(name: str, placement: Placement) -> None:
    """A run spanning more GPUs than one node has is not placed by this launcher (run it with
    `deepspeed --hostfile`)."""
    if placement.gpus > 1:
        per_node = gpus_per_node()
        if placement.gpus > per_node:
            raise SweepError(f"sweep run {name} needs {placement.gpus} GPUs and the largest Ray node has {per_node}: the ray launcher "
                             "places a run on one node; run it across nodes with `deepspeed --hostfile` (README: Run on a cluster)")


def submit(command: list[str], run_dir: Path, log_name: str, options: dict) -> "RayRun":
    """command (a trainer's or an evaluation's) as a Ray task with options (resources); its output
    appended to RUN_DIR/log_name."""
    return RayRun(_task().options(**options, max_retries=RETRIES, retry_exceptions=False).remote(command, str(run_dir), log_name))


@functools.cache
def _task():
    import ray

    return ray.remote(_run_on_node)


def _run_on_node(command: list[str], run_dir: str, log_name: str) -> int:
    """In a Ray worker: command in its own process, holding the run's trainer lock; its exit code.
    A run with more than one GPU (Ray set CUDA_VISIBLE_DEVICES to them) starts under DeepSpeed's
    per-node launcher, one rank per GPU, on a port free on this node."""
    import ray

    from .runner import _deepspeed_launch, _free_port, _spawn

    gpus = [str(g) for g in ray.get_gpu_ids()]
    if len(gpus) > 1:
        command = _deepspeed_launch(command, gpus, _free_port(set()))
    log = Path(run_dir) / log_name
    with _trainer_lock(Path(run_dir)) as lock:
        with open(log, "a") as handle:  # which node ran which attempt, for whoever reads the log after a failure
            handle.write(f"fastscale: started on Ray node {ray.get_runtime_context().get_node_id()} ({ray.util.get_node_ip_address()}, "
                         f"host {socket.gethostname()})\n")
        process = _spawn(command, log, keep_fds=(lock.fileno(),))
        try:
            return process.wait()
        except KeyboardInterrupt:  # ray.cancel: stop the trainer (its launcher stops its ranks), then let Ray end the task
            process.terminate()
            process.wait()
            raise


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
    """A Ray task seen as the scheduler sees a subprocess.Popen: poll() is None while it runs, then its
    exit code; a task that failed without one (its node died after Ray's retries, or it was cancelled)
    exits with LOST."""

    LOST = -1

    def __init__(self, ref):
        self.ref, self.returncode = ref, None

    def poll(self) -> int | None:
        import ray

        if self.returncode is None and ray.wait([self.ref], timeout=0)[0]:
            self.returncode = self._result()
        return self.returncode

    def _result(self) -> int:
        import ray

        try:
            return ray.get(self.ref)
        except ray.exceptions.RayError as error:
            logger.warning("a Ray task of the sweep ended without an exit code: %s", str(error).splitlines()[0])
            return self.LOST

    def terminate(self) -> None:
        """Ask the task to stop its process (KeyboardInterrupt in the task); wait() insists."""
        import ray

        if self.returncode is None:
            ray.cancel(self.ref)

    def wait(self) -> int:
        import ray

        if self.returncode is None and not ray.wait([self.ref], timeout=STOP_WAIT_S)[0]:
            ray.cancel(self.ref, force=True)  # its worker is killed; the trainer gets SIGTERM (PR_SET_PDEATHSIG)
        if self.returncode is None:
            self.returncode = self._result()
        return self.returncode
