"""The tests' subprocesses: each starts in a session of its own, and its whole process group is killed
when it times out, when the test fails while it runs, and after its leader exits, so no worker (a
DeepSpeed rank, a launcher's child, a ninja build) outlives the test that started it.

subprocess.run's own timeout kills only the direct child: a launcher's ranks kept running (and kept
the output pipes open, so the test then waited for them too). Also: a free TCP port for a
process group's rendezvous, and the one way a test trains a tiny GPT in a process of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL every process of process's group (its session: started by `started` or `run`)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def started(command, **kwargs):
    """subprocess.Popen(command, **kwargs) in a new session; on leaving the block, by any way, its
    whole process group is killed and the leader reaped."""
    process = subprocess.Popen(command, start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        kill_group(process)
        process.wait()
        # Popen's pipes are closed by communicate(); a block that never called it leaves them to us
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def run(command, *, timeout: float, check: bool = False, capture_output: bool = False, input=None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(command, ...) in a new session: on timeout the whole process group is killed and
    subprocess.TimeoutExpired raised (with what the command printed so far); check=True raises
    CalledProcessError on a non-zero exit, as subprocess.run does."""
    if capture_output:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with started(command, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            kill_group(process)
            error.stdout, error.stderr = process.communicate()
            raise
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result


def free_port() -> int:
    """A TCP port free on the loopback interface now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_env(**extra) -> dict:
    """The environment for a training run started by a test: one thread per rank, DeepSpeed's op cache
    where the test run's is (TORCH_EXTENSIONS_DIR, else a fastscale one under ~/.cache), no rank
    variables inherited from the test process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.expanduser("~"), ".cache", "fastscale_torch_extensions"))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


# train.py's entry point as a `python -c` program: no path to the repository's file needed.
TRAINER = "import sys; from fastscale.train.launch import main; sys.exit(main())"


def train(folder: Path, config: dict, deepspeed: dict, *, timeout: float = 300) -> Path:
    """Train the run config `config` under the DeepSpeed config `deepspeed` in one process (the configs
    written to folder/run.json and folder/ds.json) into folder/run, and return that directory; a failed
    run raises with the end of what the trainer printed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(config))
    (folder / "ds.json").write_text(json.dumps(deepspeed))
    command = [sys.executable, "-c", TRAINER, "--config", str(folder / "run.json"), "--deepspeed_config", str(folder / "ds.json"),
               "--out", str(folder / "run"), "--no-progress"]
    result = run(command, env=training_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"the trainer failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return folder / "run"
