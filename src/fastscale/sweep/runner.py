"""Run a sweep: each grid point is one trainer process (fastscale.train.launch.main, what `python
train.py` runs) in OUT/runs/NAME, at most `jobs` at a time, tracked in the results index.

Resume: a rerun skips done runs and restarts the others with --resume, so the trainer continues from
the newest complete checkpoint (or from scratch if there is none). With a study (fastscale.sweep.studies)
a trained run is evaluated in a second process (`python -m fastscale.sweep.studies RUN_DIR`) and is done
only once RUN_DIR/study.json is written; a run that trained but was not evaluated is only evaluated. Children get SIGTERM when the sweep
process dies (Linux PR_SET_PDEATHSIG), so killing the sweep by any signal leaves no orphan training.

Placement (fastscale.sweep.devices): on CPU `jobs` runs at a time; on GPUs each run gets the planner's
DeepSpeed config and a share of a GPU (small runs are packed several per GPU) or several whole GPUs.
Launchers: "process" starts the trainer itself (one rank; on a GPU pinned by CUDA_VISIBLE_DEVICES);
"deepspeed" wraps the same command in DeepSpeed's per-node launcher (deepspeed.launcher.launch), which
pins the run's GPUs, starts one rank per GPU and gives the ranks a port of their own; "auto" is
deepspeed on GPUs, process on CPU; "ray" submits each run as a Ray task to a cluster
(fastscale.sweep.cluster: the runs go to the cluster's nodes, the index and this loop stay here).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fastscale.io import StateFileError, last_step, read_metrics, restore_previous, write_json
from fastscale.train.distributed import free_port

from .devices import Inventory, Layout, Placement, deepspeed_for, place_runs
from .index import SWEEP_FILES, ResultsIndex, read_state, write_state
from .spec import Run, SweepError, SweepSpec, study_options

if TYPE_CHECKING:
    from fastscale.train.config import DeepSpeedSettings

logger = logging.getLogger(__name__)

POLL_S = 0.2
LAUNCHERS = ("auto", "process", "deepspeed", "ray")
TRAINER = "import sys; from fastscale.train.launch import main; sys.exit(main())"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _lock(out_dir: Path):
    handle = open(out_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SweepError(f"OUT_DIR={str(out_dir)!r}: another sweep is running in it") from None
    return handle


def _check_same_sweep(out_dir: Path, spec: SweepSpec) -> None:
    """A rerun must be the same sweep: resuming with a different grid would mix two studies."""
    path = out_dir / "sweep.json"
    if path.exists():
        if read_state(path) != spec.raw:
            raise SweepError(f"OUT_DIR={str(out_dir)!r} holds a different sweep ({path}); use a new directory or the same preset/file")
    else:
        write_state(path, spec.raw)


def restore_state(out_dir) -> list[Path]:
    """Put back the previous good version (FILE.prev) of every damaged state file of the sweep in
    out_dir, under the sweep's lock; returns the files restored. A damaged file without a good previous
    version raises its StateFileError."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise SweepError(f"OUT_DIR={str(out_dir)!r}: no such sweep directory")
    lock = _lock(out_dir)
    try:
        restored = []
        for name, (_, check, _) in SWEEP_FILES.items():
            path = out_dir / name
            if path.exists() and restore_previous(path, check):
                restored.append(path)
            elif path.exists():
                read_state(path)  # damaged with no good previous version: its error says so; a good file passes
        return restored
    finally:
        lock.close()


def _check_configs(spec: SweepSpec, runs: list[Run], device_type: str, out_dir: Path) -> DeepSpeedSettings:
    """The trainer's own checks of every run config and of the DeepSpeed config (including where it
    writes files: inside each run's directory), before any work starts; returns the DeepSpeed section
    parsed for one rank."""
    from fastscale.train.confinement import confine_deepspeed_config
    from fastscale.train.config import ConfigError, DeepSpeedSettings, RunConfig

    try:
        ds = DeepSpeedSettings.parse(spec.deepspeed, world_size=1, device_type=device_type)
        for run in runs:
            RunConfig.from_dict(spec.run_config(run, spec.data), where=f"sweep run {run.name}")
            confine_deepspeed_config(spec.deepspeed, out_dir / "runs" / run.name)
    except ConfigError as error:
        raise SweepError(str(error)) from None
    return ds


def prepare_data(spec: SweepSpec, out_dir: Path) -> dict:
    """Every run reads the same shards: {"dataset": ...} is prepared once into OUT/data."""
    if "dataset" not in spec.data:
        return spec.data
    from fastscale.data.prepare import prepare

    target = out_dir / "data"
    if not (target / "meta.json").is_file():
        temporary = out_dir / ".data.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        options = {k: v for k, v in spec.data.items() if k != "dataset"}
        meta = prepare(spec.data["dataset"], temporary, **options)
        write_json(temporary / "meta.json", meta, indent=2, default=str)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(temporary, target)
    return {"path": str(target.resolve())}


def _spawn(args: list[str], log_path: Path, devices: dict | None = None, keep_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """keep_fds: descriptors the child inherits (the Ray launcher's trainer lock)."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}  # each run is its own world (the launcher sets them)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(devices or {}))
    log = open(log_path, "a")
    try:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent, pass_fds=keep_fds)
    finally:
        log.close()


def _deepspeed_launch(command: list[str], world: dict[str, list[str]], port: int, *, node_rank: int = 0,
                      master_addr: str = "127.0.0.1") -> list[str]:
    """command under DeepSpeed's per-node launcher as node node_rank of world (node name -> its device
    names; one rank per device), the master at master_addr:port (rank 0's node).

    Not the `deepspeed` command (deepspeed.launcher.runner): on one node it starts this same launcher
    and installs no signal handler, so a SIGTERM (ours, at PR_SET_PDEATHSIG) kills the runner and leaves
    the launcher and its ranks training (deepspeed 0.19.8 runner.py main(); checked on CPU: the rank
    outlived the runner). deepspeed.launcher.launch terminates its ranks' process trees on SIGTERM.
    What the runner adds on one node, finding the devices and parsing --include, the sweep's
    inventory does. --no_python runs command as given (the process launcher's), --no_local_rank because
    the trainer reads LOCAL_RANK from the environment."""
    world_info = base64.urlsafe_b64encode(json.dumps(world).encode()).decode()
    return [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}", f"--node_rank={node_rank}",
            f"--master_addr={master_addr}", f"--master_port={port}", "--no_python", "--no_local_rank", *command]


def _trainer_command(run_dir: Path, config: dict, deepspeed: dict, resume: bool) -> list[str]:
    """The trainer's command line for a run, its config files written into run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "run.json", config, indent=2)
    write_json(run_dir / "ds.json", deepspeed, indent=2)
    return [sys.executable, "-c", TRAINER, "--config", str(run_dir / "run.json"), "--deepspeed_config", str(run_dir / "ds.json"),
            "--out", str(run_dir), "--no-progress"] + (["--resume"] if resume else [])


def _start_training(run_dir: Path, config: dict, deepspeed: dict, resume: bool, *, launcher: str, device_ids: list[str] | None,
                    port: int) -> subprocess.Popen:
    """device_ids: the run's GPUs (CUDA_VISIBLE_DEVICES names), None on CPU."""
    args = _trainer_command(run_dir, config, deepspeed, resume)
    if launcher == "deepspeed":
        return _spawn(_deepspeed_launch(args, {"localhost": device_ids or ["0"]}, port), run_dir / "train.log")
    return _spawn(args, run_dir / "train.log", {"CUDA_VISIBLE_DEVICES": ",".join(device_ids)} if device_ids else None)


def _evaluation_command(run_dir: Path, study: dict, data: dict) -> list[str]:
    """The study's measurements of a trained run, in a process of its own (torch, one thread)."""
    task = {"kind": study["kind"], "options": study_options(study), "data_dir": data["path"]}
    write_json(run_dir / "study_task.json", task, indent=2)
    return [sys.executable, "-m", "fastscale.sweep.studies", str(run_dir)]


def run_sweep(spec: SweepSpec, out_dir, *, jobs: int | None = None, launcher: str = "auto", address: str | None = None,
              retrain: tuple[str, ...] = (), on_layout: Callable[[str], None] | None = None, on_update: Callable[[str, str], None] | None = None,
              on_step: Callable[[str, int, int], None] | None = None) -> ResultsIndex:
    """Train (and, with a study, evaluate) every run of the grid not yet done; returns the results
    index. jobs: runs at a time (default: one per core on CPU; on GPUs as many as the placement packs).
    launcher: "auto", "process", "deepspeed" or "ray" (module docstring); address: the Ray cluster's
    ("auto", "HOST:PORT" or "ray://HOST:PORT"; launcher "ray" only, default "auto"). retrain: names
    of runs to train again (their files were damaged; from their newest checkpoint). on_layout(reason) is called once with
    the placement's reason, on_update(name, state) whenever a run's process starts or ends,
    on_step(name, step, steps) as a training run logs steps."""
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise SweepError(f"jobs={jobs!r}; expected a positive integer")
    if launcher not in LAUNCHERS:
        raise SweepError(f"launcher={launcher!r}; expected one of {LAUNCHERS}")
    if address is not None and launcher != "ray":
        raise SweepError(f"address={address!r} is the Ray cluster's; it needs launcher='ray', got launcher={launcher!r}")
    out_dir = Path(out_dir).absolute() if launcher == "ray" else Path(out_dir)  # the runs' paths are read on other nodes
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(out_dir)
    try:
        with contextlib.ExitStack() as cluster:
            inventory = _inventory(launcher, address, out_dir, cluster)
            return _sweep(spec, out_dir, inventory, jobs, launcher, retrain, on_layout, on_update, on_step)
    finally:
        lock.close()


def _inventory(launcher: str, address: str | None, out_dir: Path, cluster: contextlib.ExitStack) -> Inventory:
    """This machine's devices, or with the ray launcher the cluster's (connected for as long as cluster lasts)."""
    if launcher != "ray":
        return Inventory.detect()
    from .cluster import connected

    return cluster.enter_context(connected(address, out_dir))


def _sweep(spec, out_dir, inventory, jobs, launcher, retrain, on_layout, on_update, on_step) -> ResultsIndex:
    """run_sweep under the sweep's lock, on inventory (this machine's devices or the Ray cluster's)."""
    launcher = launcher if launcher != "auto" else "deepspeed" if inventory.kind == "cuda" else "process"
    runs = spec.runs()
    ds = _check_configs(spec, runs, inventory.kind, out_dir)
    index = ResultsIndex(out_dir / "results.json")  # a damaged index stops the sweep before anything in OUT changes
    _check_same_sweep(out_dir, spec)
    data = prepare_data(spec, out_dir)
    layout, deepspeed = _place(spec, ds, runs, data, inventory, jobs, launcher)
    logger.info("placement: %s", layout.reason)
    on_layout and on_layout(layout.reason)
    for run in runs:
        index.add(run.name, n_target=run.n_target, tokens_target=run.tokens, seed=run.seed, steps=run.steps, lr=run.lr)
    _mark_for_retraining(index, retrain)
    todo = sorted((_next_task(index, run) for run in runs if index.state(run.name) != "done"), key=_longest_first)
    limit = jobs or inventory.cores
    logger.info("sweep %s: %d runs, %d done, %d to do, at most %d at a time, %s launcher", spec.name, len(runs), len(runs) - len(todo),
                len(todo), limit, launcher)
    _schedule(spec, out_dir, data, index, todo, _Slots(layout, limit, launcher, deepspeed), on_update, on_step)
    return index


def _place(spec: SweepSpec, ds: DeepSpeedSettings, runs: list[Run], data: dict, inventory: Inventory, jobs: int | None,
           launcher: str) -> tuple[Layout, dict]:
    """Every run's placement and DeepSpeed config (run name -> config; ds: the sweep's section, parsed),
    checked by the trainer's own checks before any run starts."""
    from fastscale.data import load
    from fastscale.train.config import ConfigError, RunConfig, check_deepspeed_config
    from fastscale.train.launch import model_config

    vocab_size = _check_rows(spec, *load(data))
    configs = {run.name: RunConfig.from_dict(spec.run_config(run, data)) for run in runs}
    layout = place_runs({name: model_config(c, vocab_size) for name, c in configs.items()}, ds, inventory, jobs=jobs)
    deepspeed = {}
    for name, placement in layout.placements.items():
        if placement.gpus > 1 and launcher == "process":
            raise SweepError(f"sweep run {name} needs {placement.gpus} GPUs (devices: {layout.reason}); launcher='process' starts one rank: "
                             "use launcher 'deepspeed' or 'auto'")
        deepspeed[name] = deepspeed_for(placement, ds, configs[name].train)
        if launcher == "ray":
            from .cluster import nodes_for

            nodes_for(name, placement)  # a run the cluster cannot hold stops the sweep before any starts
        try:
            check_deepspeed_config(deepspeed[name], placement.gpus, device_type=inventory.kind)
        except ConfigError as error:
            raise SweepError(f"sweep run {name}: {error}") from None
    return layout, deepspeed


def _check_rows(spec: SweepSpec, train, val) -> int:
    """The packing of every run, tried on the prepared shards before any run starts (a document longer
    than seq_len under "documents" packing); returns the vocabulary size."""
    from fastscale.data import has_rows, pack_rows

    packing = spec.packing or "stream"  # RunConfig's default
    try:
        for shard in (train, val) if has_rows(val, spec.seq_len, packing) else (train,):
            pack_rows(shard, spec.seq_len, packing)
    except ValueError as error:
        raise SweepError(f"sweep: seq_len={spec.seq_len}, packing={spec.packing!r}: {error}") from None
    return train.vocab_size


@dataclass
class _Active:
    task: str  # "train" | "evaluate"
    run: Run
    process: subprocess.Popen
    devices: list[int]
    share: Fraction
    port: int | None


class _Slots:
    """What may start now: the share of each device its running runs hold, and a cap on processes; and
    how a run starts there (launcher, its DeepSpeed config)."""

    def __init__(self, layout: Layout, limit: int, launcher: str, deepspeed: dict):
        self.layout, self.limit, self.launcher, self.deepspeed = layout, limit, launcher, deepspeed
        self.load = [Fraction(0)] * layout.inventory.devices

    def share_of(self, task: str, run: Run) -> tuple[Placement, Fraction]:
        """An evaluation runs on the CPU (fastscale.sweep.evaluation): on CPU it holds its run's share of
        the host, on a GPU machine no share of a GPU."""
        placement = self.layout.placements[run.name]
        on_host = self.layout.inventory.kind == "cpu"
        return placement, placement.share if task == "train" or on_host else Fraction(0)

    def take(self, task: str, run: Run) -> tuple[list[int], Fraction] | None:
        """The devices of a task, now held, or None when they are busy."""
        placement, share = self.share_of(task, run)
        if placement.gpus == 1 or task != "train":
            k = min(range(len(self.load)), key=self.load.__getitem__)  # the least loaded: the run gets the most of a device
            devices = [k] if self.load[k] + share <= 1 else None
        else:  # a run spanning GPUs has them to itself
            idle = [k for k, load in enumerate(self.load) if load == 0]
            devices = idle[: placement.gpus] if len(idle) >= placement.gpus else None
        for k in devices or ():
            self.load[k] += share
        return None if devices is None else (devices, share)

    def release(self, active: _Active) -> None:
        for k in active.devices:
            self.load[k] -= active.share

    def device_ids(self, devices: list[int]) -> list[str] | None:
        ids = self.layout.inventory.device_ids
        return [ids[k] for k in devices] if ids else None


def _longest_first(task: tuple[str, Run]) -> tuple[int, float]:
    """Evaluations (short) first, then training by decreasing work, N x steps: started last, the largest
    run would train alone at the end while the other slots idle (benchmarks/results/notes.md)."""
    kind, run = task
    return (kind == "train", -run.n_target * run.steps)


def _next_task(index: ResultsIndex, run: Run) -> tuple[str, Run]:
    """A run with a recorded summary has trained: only its study evaluation is left."""
    return ("evaluate" if "summary" in index.runs[run.name] else "train", run)


def _schedule(spec, out_dir, data, index, todo, slots: _Slots, on_update, on_step) -> None:
    active: dict[str, _Active] = {}
    try:
        while todo or active:
            while todo and len(active) < slots.limit:
                task, run = todo[0]
                held = slots.take(task, run)
                if held is None:  # first come, first served: a run spanning GPUs is not overtaken by small ones for ever
                    break
                todo.pop(0)
                active[run.name] = _start(spec, out_dir, data, index, task, run, held, slots, {a.port for a in active.values()})
                on_update and on_update(run.name, index.state(run.name))
            time.sleep(POLL_S)
            for name in active if on_step else ():
                if active[name].task == "train":
                    on_step(name, last_step(out_dir / "runs" / name / "metrics.jsonl"), index.runs[name]["steps"])
            for name, entry in list(active.items()):
                if entry.process.poll() is not None:
                    del active[name]
                    slots.release(entry)
                    run_dir = out_dir / "runs" / name
                    if entry.task == "train":
                        _finish_training(index, run_dir, name, entry.process.returncode, has_study=spec.study is not None)
                    else:
                        _finish_evaluation(index, run_dir, name, entry.process.returncode)
                    on_update and on_update(name, index.state(name))
                    if index.state(name) == "trained":  # evaluate it next, while its model is fresh on disk
                        todo.insert(0, ("evaluate", entry.run))
    finally:
        for entry in active.values():  # interrupted: stop the children (the launcher stops its ranks); they resume next time
            entry.process.terminate()
        for entry in active.values():
            entry.process.wait()


def _start(spec, out_dir, data, index, task: str, run: Run, held: tuple[list[int], Fraction], slots: _Slots, ports: set) -> _Active:
    """Start a run's training or evaluation process on the devices held for it."""
    devices, share = held
    run_dir = out_dir / "runs" / run.name
    if task == "evaluate":
        index.update(run.name, "evaluating")
        command = _evaluation_command(run_dir, spec.study, data)
        process = _submit(command, run_dir, "study.log", task, run, slots) if slots.launcher == "ray" else _spawn(command, run_dir / "study.log")
        return _Active(task, run, process, devices, share, None)
    port = free_port(ports - {None}) if slots.launcher == "deepspeed" else None
    if slots.launcher == "ray":  # always --resume: a task Ray retries after its node died continues from its checkpoint
        command = _trainer_command(run_dir, spec.run_config(run, data), slots.deepspeed[run.name], resume=True)
        process = _submit(command, run_dir, "train.log", task, run, slots)
    else:
        resume = index.runs[run.name]["attempts"] > 0  # started before: continue from its checkpoint
        process = _start_training(run_dir, spec.run_config(run, data), slots.deepspeed[run.name], resume, launcher=slots.launcher,
                                  device_ids=slots.device_ids(devices), port=port)
    index.update(run.name, "running", attempts=index.runs[run.name]["attempts"] + 1, run_dir=str(run_dir.relative_to(out_dir)))
    return _Active(task, run, process, devices, share, port)


def _submit(command: list[str], run_dir: Path, log_name: str, task: str, run: Run, slots: _Slots):
    """command as Ray task(s) (fastscale.sweep.cluster) with the resources of the run's placement: one
    task on one node, or a training run's ranks over the nodes it spans."""
    from .cluster import nodes_for, resources, submit, submit_across_nodes

    placement = slots.layout.placements[run.name]
    nodes = nodes_for(run.name, placement) if task == "train" else 1
    if nodes > 1:
        return submit_across_nodes(command, run_dir, log_name, nodes=nodes, ranks_per_node=placement.gpus // nodes, gpus=True)
    return submit(command, run_dir, log_name, resources(placement, task, slots.layout.inventory))


def _finish_training(index: ResultsIndex, run_dir: Path, name: str, returncode: int, *, has_study: bool) -> None:
    summary = _summary(run_dir) if returncode == 0 else None
    if summary is not None:
        index.update(name, "trained" if has_study else "done", returncode=0, summary=summary)
    else:
        logger.warning("run %s failed (exit code %d); see %s", name, returncode, run_dir / "train.log")
        index.update(name, "failed", returncode=returncode)


def _summary(run_dir: Path) -> dict | None:
    """The summary.json of a run whose trainer exited 0, completed from its learning curve; None when it
    is missing or damaged (the run is failed and retried, which rewrites it)."""
    try:
        return _complete(read_state(run_dir / "summary.json"), run_dir / "metrics.jsonl")
    except StateFileError as error:
        logger.warning("%s", error)
        return None


def _finish_evaluation(index: ResultsIndex, run_dir: Path, name: str, returncode: int) -> None:
    try:
        evaluated = returncode == 0 and read_state(run_dir / "study.json") is not None
    except StateFileError as error:
        logger.warning("%s", error)
        evaluated = False
    if evaluated:
        index.update(name, "done", returncode=0)
    else:
        logger.warning("study evaluation of run %s failed (exit code %d); see %s", name, returncode, run_dir / "study.log")
        index.update(name, "failed", returncode=returncode)


def _complete(summary: dict, metrics_path: Path) -> dict:
    """The trainer's summary covers its own process: resumed from the final checkpoint (killed after it
    and before the summary), it trains no step and reports final losses of None. The learning curve
    (last record of each step) has them."""
    if summary.get("final_loss") is not None and summary.get("final_eval_loss") is not None:
        return summary
    curve = read_metrics(metrics_path).records
    evals = [r["eval_loss"] for r in curve if r.get("eval_loss") is not None]
    if summary.get("final_loss") is None and curve:
        summary["final_loss"] = curve[-1].get("loss")
    if summary.get("final_eval_loss") is None and evals:
        summary["final_eval_loss"] = evals[-1]
    return summary


def _mark_for_retraining(index: ResultsIndex, names) -> None:
    """Runs whose files are damaged train again: each resumes from its newest intact checkpoint, which
    rewrites its config.json and summary.json, and is evaluated again."""
    unknown = sorted(set(names) - set(index.runs))
    if unknown:
        raise SweepError(f"--retrain {' '.join(unknown)}: not runs of {index.path} (its runs: {', '.join(sorted(index.runs))})")
    for name in names:
        index.runs[name].pop("summary", None)
        index.update(name, "failed")
