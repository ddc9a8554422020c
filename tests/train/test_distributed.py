"""The process group's start: the rendezvous of single-node ranks listens on loopback only, and DeepSpeed's
op build lock is looked at before DeepSpeed waits on it (a stale one removed, a held one left alone)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from processes import run, started

from fastscale.train import distributed
from fastscale.train.distributed import check_build_lock, shm_op_needs_build

RANK = """
import glob, json, os, psutil, torch, torch.distributed as dist, deepspeed.comm
from fastscale.train.distributed import init_process_group
init_process_group()
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)
shm_total = torch.tensor([float(dist.get_rank() + 1)])
deepspeed.comm.inference_all_reduce(shm_total)  # DeepSpeed's shared-memory all-reduce on CPU
shm_names = glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{os.environ['MASTER_PORT']}_*")
listening = [c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN]
dist.barrier()
shm_op = deepspeed.comm.comm.cdb.shm_comm_op is not None
print(json.dumps({"sum": total.item(), "shm_op": shm_op, "shm_sum": shm_total.item(), "shm_names": shm_names, "listening": listening}))
dist.destroy_process_group()
"""

HOLDER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL)  # what torch's FileBaton.try_acquire does, held while it builds
print("holding", flush=True)
time.sleep(60)
"""


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


@pytest.mark.slow
def test_two_ranks_rendezvous_and_gloo_listen_on_loopback_only():
    """Two ranks as DeepSpeed's single-node launcher starts them (MASTER_ADDR=127.0.0.1, LOCAL_SIZE=2):
    the store and gloo's sockets listen on loopback only (before: the store listened on [::]), the
    group works, and so does DeepSpeed's shared-memory all-reduce, whose /dev/shm names are gone once
    the group is up (before: 69 MB per rank left in /dev/shm by every run)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")}
    outputs = []
    with started([sys.executable, "-c", RANK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 env={**base, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) as first, \
         started([sys.executable, "-c", RANK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 env={**base, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) as second:
        for process in (first, second):
            out, err = process.communicate(timeout=180)
            assert process.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert [o["sum"] for o in outputs] == [3.0, 3.0]
    assert [o["shm_op"] for o in outputs] == [True, True]
    assert [o["shm_sum"] for o in outputs] == [3.0, 3.0]
    assert [o["shm_names"] for o in outputs] == [[], []]
    assert outputs[0]["listening"], "rank 0 runs the store: it must listen somewhere"
    for rank, output in enumerate(outputs):
        assert all(is_loopback(ip) for ip in output["listening"]), f"rank {rank} listens on {output['listening']}"


def test_stale_build_lock_is_removed_with_a_warning(tmp_path, caplog):
    """A lock left by a killed build (no process holds it) would make DeepSpeed poll forever: removed, named."""
    lock = tmp_path / "lock"
    lock.touch()
    os.utime(lock, (time.time() - 300, time.time() - 300))
    with caplog.at_level(logging.WARNING, logger=distributed.__name__):
        assert check_build_lock(tmp_path) == "stale"
    assert not lock.exists()
    assert str(lock) in caplog.text and "stale" in caplog.text


START = """
import logging
logging.basicConfig(level=logging.WARNING)
from fastscale.train.distributed import init_process_group
init_process_group()
print("started")
"""


@pytest.mark.slow
def test_stale_lock_of_a_killed_build_no_longer_hangs_a_run(tmp_path):
    """The newcomer's hang: a killed build left `lock` in the extension directory, and DeepSpeed polled
    it forever. Now the start removes it, says so naming it, and the process group comes up. (On a copy
    of this machine's built op: a real build takes minutes.)"""
    built = distributed.build_directory()
    if shm_op_needs_build(built):
        pytest.skip(f"DeepSpeed's {distributed.SHM_OP} op is not built in {built} yet (any DeepSpeed run builds it)")
    extensions = tmp_path / "torch_extensions"
    shutil.copytree(built, extensions / distributed.SHM_OP, ignore=shutil.ignore_patterns("lock"))
    lock = extensions / distributed.SHM_OP / "lock"
    lock.touch()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    result = run([sys.executable, "-c", START], env={**env, "TORCH_EXTENSIONS_DIR": str(extensions)}, timeout=120,
                 capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("started"), result.stderr[-3000:]
    assert f"removing {lock}: a stale build lock" in result.stderr
    assert not lock.exists()


def test_held_build_lock_is_left_alone_and_its_holder_named(tmp_path, caplog):
    """A lock a live process holds open is a build in progress: kept, and the warning names it and the process."""
    lock = tmp_path / "lock"
    with started([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "holding"
        with caplog.at_level(logging.WARNING, logger=distributed.__name__):
            assert check_build_lock(tmp_path) == "held"
        assert lock.exists()
        assert str(lock) in caplog.text and f"process {holder.pid} " in caplog.text


def test_no_lock_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=distributed.__name__):
        assert check_build_lock(tmp_path) == "none"
    assert caplog.text == ""


def test_first_build_detected_in_torch_extensions_dir(tmp_path, monkeypatch):
    """The op counts as unbuilt (the run announces a ~2 minute build) until its library is in
    TORCH_EXTENSIONS_DIR/deepspeed_shm_comm, where torch builds it."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    directory = distributed.build_directory()
    assert directory == tmp_path / distributed.SHM_OP
    assert shm_op_needs_build(directory)
    (directory / f"{distributed.SHM_OP}.so").touch()
    assert not shm_op_needs_build(directory)


def test_watcher_names_a_build_that_starts_later_then_its_death(tmp_path, caplog):
    """A lock taken after the start-up check (a peer's build) is reported while DeepSpeed waits; when its
    holder dies without removing it, the run is told it would wait forever and what to do."""
    lock = tmp_path / "lock"
    with caplog.at_level(logging.WARNING, logger=distributed.__name__), distributed.watching_build_lock(tmp_path, interval=0.2):
        with started([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True) as holder:
            assert holder.stdout.readline().strip() == "holding"
            deadline = time.time() + 10
            while f"process {holder.pid} " not in caplog.text and time.time() < deadline:
                time.sleep(0.1)
            assert f"process {holder.pid} " in caplog.text and str(lock) in caplog.text
        deadline = time.time() + 10  # the holder is killed; its lock stays
        while "wait forever" not in caplog.text and time.time() < deadline:
            time.sleep(0.1)
    assert lock.exists() and "wait forever" in caplog.text and "start it again" in caplog.text
