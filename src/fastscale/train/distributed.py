"""Starting the process group: a rendezvous that listens on loopback only for runs on one machine, and
no silent wait on DeepSpeed's build of its shared-memory op.

Rendezvous. torch.distributed's env:// init makes rank 0 run a TCPStore server that listens on every
interface ([::], measured with torch 2.13) whatever MASTER_ADDR says, so a single-node run offered its
store to the network. When MASTER_ADDR is a loopback address (a process started without a launcher,
the sweep's and the `deepspeed` launcher's single-node default 127.0.0.1) we create the store
ourselves: rank 0 binds a socket to MASTER_ADDR:MASTER_PORT and hands it to TCPStore
(master_listen_fd), and gloo's own sockets are put on the loopback interface (GLOO_SOCKET_IFNAME=lo).
DeepSpeed then wraps that process group. A multi-node MASTER_ADDR is left to DeepSpeed's env:// init,
and so is torchrun, whose agent process serves the store itself (its listener is torchrun's). On GPUs
NCCL opens bootstrap sockets of its own on the interface NCCL_SOCKET_IFNAME names (not measured here:
no GPU); set NCCL_SOCKET_IFNAME=lo to keep a single-node GPU run on loopback too.

Build lock. On CPU, DeepSpeed JIT-builds the deepspeed_shm_comm op (C++) in torch's extension
directory the first time a run starts (28 s on a quiet 2-core machine, 193 s on a busy one); we announce it
and log how long it took. torch.utils.file_baton.FileBaton guards the build with a `lock` file: the
builder creates it, keeps it open while it builds and removes it; everyone else polls until it is
gone, with no message and no limit. A build that was killed leaves the file behind and every later run
sleeps forever. So before the process group starts we look: a lock some process of this machine holds
open (/proc/*/fd) is a build in progress (we say whose and wait); a lock nobody holds is stale and
removed, with a warning naming it. While DeepSpeed starts, a watcher reports a lock taken after that
look, and its builder's death. The holder check sees only this machine: an extension directory shared
by several machines (a network home) should be made node-local with TORCH_EXTENSIONS_DIR.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

SHM_OP = "deepspeed_shm_comm"
# FileBaton.release closes the lock file's descriptor, then removes the file: a lock nobody holds is
# stale only if it is still there a moment later
RELEASE_GRACE_S = 1.0
# torch's own backends, which take a store; DeepSpeed starts others (oneCCL) its own way
LOOPBACK_BACKENDS = ("gloo", "nccl")
WATCH_INTERVAL_S = 5.0  # how soon a run that waits on a build lock started after its own check says so


def free_port(taken=frozenset()) -> int:
    """A TCP port no process listens on now on the loopback interface and not in taken (ports already
    handed to processes that have not bound them yet), for a rendezvous's MASTER_PORT."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


def ensure_distributed_env() -> None:
    """A single process started without a launcher: set what torch.distributed's env:// init needs
    (MASTER_PORT 0: the rendezvous picks a free port and writes it back)."""
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "0")


def is_loopback(host: str) -> bool:
    """host is localhost or a loopback address (127.0.0.0/8, ::1): the ranks are all on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def init_process_group() -> None:
    """The process group of this run, then DeepSpeed's communication backend on it (module docstring)."""
    import deepspeed
    import torch.distributed as dist

    ensure_distributed_env()
    directory = build_directory() if _shm_builder() is not None else None
    first_build = directory is not None and check_build_lock(directory) != "held" and shm_op_needs_build(directory)
    if first_build:
        logger.warning("building DeepSpeed's %s op once (half a minute to 3 minutes on a 2-core machine; later runs reuse it)", SHM_OP)
    started = time.perf_counter()
    with watching_build_lock(directory):
        if not dist.is_initialized() and _single_node_store_is_ours():
            _init_on_loopback()
        deepspeed.init_distributed()
    if first_build:
        logger.warning("built DeepSpeed's %s op in %.0f s", SHM_OP, time.perf_counter() - started)
    _unlink_shm_workspace()


def _unlink_shm_workspace() -> None:
    """Remove the name of this rank's shared-memory all-reduce workspace once every rank has mapped it.

    On CPU, when every rank is on one machine (LOCAL_SIZE = WORLD_SIZE, as DeepSpeed's launcher sets
    it), DeepSpeed's shm op creates /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>
    (69 MB) per rank and never unlinks it (deepspeed 0.19.8, csrc/cpu/comm/shm.cpp: shared_close is
    never called), so each run left 69 MB of RAM per rank in /dev/shm until reboot: 19 GB on this
    machine after a day of tests. The peers map each other's workspace during init_distributed; after
    a barrier the names are no longer needed, and the mappings live on until the processes exit."""
    import deepspeed.comm
    import torch.distributed as dist

    backend = deepspeed.comm.comm.cdb
    if getattr(backend, "shm_comm_op", None) is None or os.environ.get("LOCAL_SIZE") != os.environ["WORLD_SIZE"]:
        return
    dist.barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}_{os.environ['RANK']}"
    (Path("/dev/shm") / name).unlink(missing_ok=True)


def _single_node_store_is_ours() -> bool:
    """All ranks on this machine, a backend torch starts from a store, and no torchrun agent serving the
    store already (torch.distributed.rendezvous reads the same variable)."""
    return (is_loopback(os.environ["MASTER_ADDR"]) and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            and _backend() in LOOPBACK_BACKENDS)


def _backend() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().communication_backend_name()


def _init_on_loopback() -> None:
    import torch.distributed as dist
    from deepspeed.constants import default_pg_timeout

    host, rank, world_size = os.environ["MASTER_ADDR"], int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    listen_fd = None
    if rank == 0:
        listener = _loopback_listener(host, int(os.environ["MASTER_PORT"]))
        os.environ["MASTER_PORT"] = str(listener.getsockname()[1])
        listen_fd = listener.detach()  # the store owns it from here
    store = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), world_size, rank == 0, timeout=default_pg_timeout,
                          master_listen_fd=listen_fd, use_libuv=True)
    dist.init_process_group(_backend(), store=store, rank=rank, world_size=world_size,
                            timeout=default_pg_timeout)


def _loopback_listener(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), host a loopback address or localhost."""
    family = socket.AF_INET6 if host != "localhost" and ipaddress.ip_address(host).version == 6 else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1" if host == "localhost" else host, port))
    except OSError as error:
        listener.close()
        raise OSError(error.errno, f"rendezvous: cannot listen on MASTER_ADDR={host} MASTER_PORT={port}: {error.strerror}; "
                                   "choose a free MASTER_PORT") from None
    listener.listen(128)
    return listener


# ---------------------------------------------------------------------------------- the build lock
def _shm_builder():
    """DeepSpeed's builder of the shm op when this machine JIT-builds it (as deepspeed.comm.torch.build_shm_op decides), else None."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False) or installed_ops.get(builder.NAME, False):
        return None
    return builder


def build_directory() -> Path:
    """Where torch builds the shm op: TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions/<python>_<device>, then the op's name."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(SHM_OP, verbose=False))


def shm_op_needs_build(directory: Path) -> bool:
    """True when starting DeepSpeed will compile the shm op: nothing built in its directory yet."""
    return not any(Path(directory).glob(f"{SHM_OP}*.so"))


def lock_holders(lock: Path) -> list[str] | None:
    """The processes of this machine that hold lock open ("pid command"), as far as we may look
    (/proc: other users' processes are not readable); None where there is no /proc to look in."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    target, holders = os.path.realpath(lock), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd")):
                holders.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
        except OSError:  # gone, or not ours to read
            continue
    return holders


def check_build_lock(directory: Path) -> str:
    """Look at the shm op's build lock in directory before DeepSpeed waits on it: "none", "held" (a
    build in progress: warn, naming the lock and its holder) or "stale" (nobody holds it: removed, with
    a warning naming it)."""
    lock = Path(directory) / "lock"
    if not lock.exists():
        return "none"
    holders = lock_holders(lock)
    if holders is None:
        logger.warning("DeepSpeed's %s op has a build lock, %s: a build in progress, or a stale lock a killed build left (then "
                       "this run waits forever: stop it and remove the lock with: rm %s)", SHM_OP, lock, lock)
        return "held"
    if not holders:
        time.sleep(RELEASE_GRACE_S)
        if not lock.exists():
            return "none"
        holders = lock_holders(lock)
    if holders:
        logger.warning("waiting for DeepSpeed's %s op: process %s is building it and holds %s; if that process is stuck, "
                       "kill it (the lock then goes stale and the next run clears it)", SHM_OP, ", ".join(holders), lock)
        return "held"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:  # released after all
        return "none"
    logger.warning("removing %s: a stale build lock of DeepSpeed's %s op (%.0f s old, held by no process of this machine: "
                   "a build was killed); it would make this run wait forever", lock, SHM_OP, age)
    try:
        lock.unlink(missing_ok=True)
    except PermissionError:
        raise PermissionError(f"a stale build lock of DeepSpeed's {SHM_OP} op, {lock}, would make this run wait forever and "
                              f"we may not remove it; remove it with: rm {lock}") from None
    return "stale"


@contextlib.contextmanager
def watching_build_lock(directory: Path | None, interval: float = WATCH_INTERVAL_S):
    """While the block runs (DeepSpeed starting), look at the build lock every interval seconds and warn
    when another process holds it (a build this run waits for, started after check_build_lock looked)
    or when nobody does any more (its builder died: DeepSpeed would wait forever, and only a new
    start can rebuild, since the waiter would import a library that was never built)."""
    if directory is None:
        yield
        return
    stop, lock = threading.Event(), Path(directory) / "lock"

    def watch() -> None:
        said, orphaned = None, 0
        while not stop.wait(interval):
            present = lock.exists()
            holders = lock_holders(lock) if present else []
            if holders is None:  # no /proc: holders cannot be told apart from a stale lock
                return
            others = [h for h in holders if not h.startswith(f"{os.getpid()} ")]  # not this process building it
            orphaned = orphaned + 1 if present and not holders else 0
            if others and said != "held":
                said = "held"
                logger.warning("waiting for DeepSpeed's %s op: process %s is building it and holds %s", SHM_OP, ", ".join(others), lock)
            elif orphaned >= 2 and said != "stale":  # twice: a release closes the file a moment before removing it
                said = "stale"
                logger.warning("the build of DeepSpeed's %s op holding %s ended without removing it, so this run would wait "
                               "forever: stop it and start it again (the next start removes the stale lock)", SHM_OP, lock)

    thread = threading.Thread(target=watch, name="fastscale-build-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

