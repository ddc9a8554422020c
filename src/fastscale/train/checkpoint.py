"""Checkpoints that are data, never code, and that survive damage.

A step directory (checkpoints/stepNNNNNNNN) holds DeepSpeed's files (model states, ZeRO optimizer
shards) and each rank's RNG state. Once every rank has written its part, rank 0 writes the COMPLETE
marker: the step, the layout (world size, batch size) and the SHA-256 and size of every file of the
directory. Only a directory whose marker is valid and whose files all match it is ever loaded: a
checkpoint torn by a kill (no marker), truncated, with flipped bytes, a missing or an unknown extra
file, or a marker that is not valid JSON is named with its fault and the newest intact one is used.

Loading is `torch.load(weights_only=True)`: tensors, numbers, strings, containers and the four
DeepSpeed types its checkpoints hold (`allowed_globals`), never arbitrary pickles, which can run code
when loaded. DeepSpeed's own loads go through `SafeCheckpointEngine` (installed on the engine in place
of its TorchCheckpointEngine, which calls torch.load(weights_only=False)); zero_to_fp32's, which ZeRO-3
evaluation uses, through a `torch` of that module whose load is `safe_load`. Saves write through a
Python file, so a full disk surfaces as ENOSPC with the path (torch.save on a path reports only
"basic_ios::clear: iostream error").
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import threading
import types
from contextlib import contextmanager
from pathlib import Path

import torch

from fastscale.io import write_atomically, write_json

logger = logging.getLogger(__name__)

TAG = re.compile(r"^step(\d{8})$")
MARKER = "COMPLETE"
READ_SIZE = 1 << 20  # hashing reads: large enough to stream at disk speed, small enough for any memory
MARKER_FIELDS = {"step": int, "world_size": int, "train_batch_size": int, "files": dict}


class CheckpointError(RuntimeError):
    """A checkpoint that must not or cannot be used; the message names each file and its fault."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def rng_name(rank: int) -> str:
    return f"rng_rank{rank}.pt"


# ------------------------------------------------------------------ loading: data, never code
@functools.cache
def allowed_globals() -> tuple:
    """The non-tensor types DeepSpeed 0.19 pickles into its checkpoints (ZeRO 1-3 optimizer shards, fp32,
    bf16 and fp16, torch or DeepSpeed optimizers): plain records, none of which runs code when rebuilt."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)


def safe_load(path, map_location=None, **options):
    """torch.load(path) restricted to tensors, plain containers and `allowed_globals`; anything else is
    refused with a CheckpointError naming the file and the types it asked for."""
    options.pop("weights_only", None)
    allowed = list(allowed_globals())
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True, **options)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        with torch.serialization.safe_globals(allowed):
            refused = _unsafe_globals(path)
        if refused:
            raise CheckpointError(
                f"{path}: refused to load: it asks for {', '.join(sorted(refused))}, which is not plain data "
                "(a checkpoint holding it could run code when loaded); only tensors, containers and DeepSpeed's "
                "checkpoint records are loaded"
            ) from None
        raise CheckpointError(f"{path}: cannot be loaded: {str(error).splitlines()[0]}") from error


def _unsafe_globals(path) -> list[str]:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a readable torch.save zip: no pickle to name
        return []


@contextmanager
def interrupts_held():
    """A Ctrl-C (SIGINT) during the block takes effect when it ends: one inside torch.save leaves a torn
    file, and the writer's RuntimeError ("unexpected pos") replaces the KeyboardInterrupt; one inside
    a DataLoader's receipt of a batch resets the worker's connection, and the worker prints a
    traceback. Only in the main thread, where Python runs signal handlers, and only over a handler
    Python installed."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            signal.raise_signal(signal.SIGINT)


class SafeCheckpointEngine:
    """DeepSpeed's TorchCheckpointEngine with safe loads and saves that name a full disk; everything
    else (create, commit, makedirs, ...) is the wrapped engine's."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def load(self, path: str, map_location=None):
        return safe_load(path, map_location)

    def save(self, state_dict, path: str) -> None:
        save_state(state_dict, path, zipfile=self.inner.zipfile_serialization)


def install_safe_engine(engine) -> None:
    """Route a DeepSpeed engine's checkpoint reads and writes through SafeCheckpointEngine. Other engines
    (checkpoint.writer, datastates_ckpt) write asynchronously or through their own loaders: the COMPLETE
    marker could not vouch for their files, so they are refused."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if isinstance(current, SafeCheckpointEngine):
        return
    if type(current) is not TorchCheckpointEngine:
        raise CheckpointError(
            f"DeepSpeed checkpoint engine {type(current).__name__} (from the config's 'checkpoint.writer' or "
            "'datastates_ckpt'): fastscale checkpoints only through DeepSpeed's default torch engine; remove that section"
        )
    engine.checkpoint_engine = SafeCheckpointEngine(current)


class _TorchWithSafeLoad(types.ModuleType):
    """The torch module as a DeepSpeed module sees it, except that its load is safe_load."""

    def __getattr__(self, name):
        return getattr(torch, name)

    load = staticmethod(safe_load)


def zero3_fp32_state(tag_dir) -> dict:
    """fp32 weights of a ZeRO-3 checkpoint, consolidated by DeepSpeed's zero_to_fp32 with its torch.load
    calls (weights_only=False in DeepSpeed 0.19) made safe for the duration of the call."""
    from deepspeed.utils import zero_to_fp32

    tag_dir = Path(tag_dir)
    original = zero_to_fp32.torch
    zero_to_fp32.torch = _TorchWithSafeLoad("torch")
    try:
        state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    finally:
        zero_to_fp32.torch = original
    return {without_recompute_wrapper(name): tensor for name, tensor in state.items()}


def without_recompute_wrapper(name: str) -> str:
    """A parameter name as the unwrapped model has it. ZeRO-3 records the names the engine saw, which
    under activation checkpointing include the wrapper torch's checkpoint_wrapper puts around each
    recomputed module (its state_dict strips it; its parent's named_parameters does not)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX

    return name.replace(_CHECKPOINT_PREFIX, "")


def load_rng(path) -> None:
    """Restore the CPU generator and the generator of every CUDA device saved by rng_bytes. Where this
    process sees a different number of CUDA devices than the saving one, the devices both have are
    restored and a warning says the resume is not exact (dropout draws differ from the uninterrupted run)."""
    state = safe_load(path)
    torch.set_rng_state(state["cpu"])
    saved = list(state.get("cuda") or [])
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(saved) != present:
        logger.warning("%s holds the generators of %d CUDA device(s), this process has %d: the resume is not exact "
                       "(random draws on the devices differ from the uninterrupted run)", path, len(saved), present)
    if saved and present:
        torch.cuda.set_rng_state_all(saved[:present])


def rng_bytes() -> bytes:
    """This process's generator states, the CPU's and every CUDA device's (exact resume needs each device
    that draws dropout masks), as a torch.save of tensors only (so it loads with weights_only)."""
    buffer = io.BytesIO()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    torch.save({"cpu": torch.get_rng_state(), "cuda": cuda}, buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------ saving
def save_state(state, path, *, zipfile: bool = True) -> None:
    """torch.save(state) to path through a Python file, fsynced (the marker must never vouch for data
    still in the page cache); a full disk raises OSError(ENOSPC) naming path and the tensor bytes."""
    try:
        with open(path, "wb") as out:
            torch.save(state, out, _use_new_zipfile_serialization=zipfile)
            out.flush()
            os.fsync(out.fileno())
    except Exception as error:
        if disk_full(error):
            raise OSError(errno.ENOSPC, f"no space left on device writing {path} (it needs at least {tensor_bytes(state):,} bytes for its tensors) (ENOSPC)", str(path)) from error
        raise


def disk_full(error: BaseException) -> OSError | None:
    """The ENOSPC error among error and the errors it was raised from or during (torch.save wraps the
    OSError of a failed write in a RuntimeError about its zip writer's position), or None."""
    seen = []
    while error is not None and error not in seen:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error
        seen.append(error)
        error = error.__cause__ or error.__context__
    return None


def tensor_bytes(state) -> int:
    """Bytes of the tensors in a nested state (what torch.save will write, within its small overhead)."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(value) for value in state)
    return 0


def file_digest(path) -> dict:
    """SHA-256 (hex) and size of a file, read in 1 MiB pieces."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while piece := f.read(READ_SIZE):
            sha.update(piece)
            size += len(piece)
    return {"sha256": sha.hexdigest(), "bytes": size}


def step_files(tag_dir) -> list[str]:
    """Every file of a step directory but the marker, as sorted relative paths."""
    tag_dir = Path(tag_dir)
    return sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*") if p.is_file() and p.name != MARKER)


def hash_step(tag_dir, *, collective: bool = False) -> dict:
    """{relative path: file_digest} of every file of a step directory. collective: every rank of the
    process group calls it, hashes every ranks-th file, and all receive the whole table."""
    names = step_files(tag_dir)
    rank, ranks = _share(collective)
    mine = [(name, file_digest(Path(tag_dir) / name)) for name in names[rank::ranks]]
    return dict(_everyones(mine) if collective else mine)


def _share(collective: bool) -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if collective else (0, 1)


def _everyones(items: list) -> list:
    """The items of every rank of the process group, in rank order."""
    import torch.distributed as dist

    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def mark_complete(directory, tag: str, info: dict, keep: int) -> None:
    """Rank 0, after every rank wrote its part and the files were hashed (info["files"]): the marker,
    DeepSpeed's `latest` file, then pruning of older checkpoints beyond keep and older torn ones."""
    directory = Path(directory)
    write_json(directory / tag / MARKER, info)
    write_atomically(directory / "latest", tag)
    prune(directory, info["step"], keep)


def prune(directory, step: int, keep: int) -> None:
    """Delete marked step directories older than step beyond the keep newest (step's included) and every
    unmarked (torn) one older than step. Newer ones are left: a resume from an older checkpoint rewrites them."""
    marked = [tag for older, tag in complete_tags(directory) if older < step]
    torn = [tag for older, tag in step_dirs(directory) if older < step and tag not in marked]
    for tag in marked[: max(0, len(marked) - (keep - 1))] + torn:
        shutil.rmtree(Path(directory) / tag, ignore_errors=True)


def save_failed(error: Exception, tag_dir) -> Exception:
    """The error to raise after a save failed and its partial directory was removed: a full disk names
    the file, the bytes when known and the checkpoints still intact; any other error is returned as is."""
    full = disk_full(error)
    if full is None:
        return error
    tag_dir = Path(tag_dir)
    path = full.filename or tag_dir
    what = full.strerror if str(path) in (full.strerror or "") else f"no space left on device writing {path} (ENOSPC)"
    kept = [tag for _, tag in complete_tags(tag_dir.parent)]
    return OSError(errno.ENOSPC, f"checkpoint {tag_dir} not saved: {what}; the partial directory was removed; checkpoints kept: {', '.join(kept) or 'none'}")


# ------------------------------------------------------------------ finding an intact checkpoint
def step_dirs(directory) -> list[tuple[int, str]]:
    """(step, tag) of every step directory under directory, marked or not, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), entry.name) for entry in directory.iterdir() if entry.is_dir() and (m := TAG.match(entry.name)))


def complete_tags(directory) -> list[tuple[int, str]]:
    """(step, tag) of every step directory with a COMPLETE marker (intact or not), oldest first."""
    return [(step, tag) for step, tag in step_dirs(directory) if (Path(directory) / tag / MARKER).is_file()]


def read_marker(tag_dir) -> tuple[dict | None, str | None]:
    """(the marker's fields, None) or (None, what is wrong with it)."""
    marker = Path(tag_dir) / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"{marker}: not a readable JSON marker ({error})"
    if not isinstance(info, dict):
        return None, f"{marker}: a JSON {type(info).__name__}, not an object"
    missing = [name for name, kind in MARKER_FIELDS.items() if not isinstance(info.get(name), kind)]
    if missing:
        return None, f"{marker}: missing or mistyped field(s) {', '.join(missing)} (written by a fastscale before checksums, or damaged)"
    if tag_for(info["step"]) != Path(tag_dir).name:
        return None, f"{marker}: records step {info['step']}, not the directory's"
    return info, None


def verify(tag_dir, share: tuple[int, int] = (0, 1)) -> tuple[dict | None, list[str]]:
    """(marker fields, faults) of a marked step directory. Every caller checks the marker, the file list
    and the sizes; the SHA-256 of the files is checked in shares: (rank, ranks) checks every ranks-th."""
    tag_dir = Path(tag_dir)
    info, fault = read_marker(tag_dir)
    if fault:
        return None, [fault]
    recorded = info["files"]
    present = set(step_files(tag_dir))
    faults = [f"{tag_dir / name}: not part of the checkpoint (an unknown extra file)" for name in sorted(present - set(recorded))]
    faults += [f"{tag_dir / name}: missing" for name in sorted(set(recorded) - present)]
    rank, ranks = share
    for i, name in enumerate(sorted(set(recorded) & present)):
        expected = recorded[name]
        if not isinstance(expected, dict) or not isinstance(expected.get("bytes"), int) or not isinstance(expected.get("sha256"), str):
            faults.append(f"{tag_dir / MARKER}: its entry for {name} is not {{sha256, bytes}}")
            continue
        size = (tag_dir / name).stat().st_size
        if size != expected["bytes"]:
            faults.append(f"{tag_dir / name}: {size:,} bytes, {expected['bytes']:,} recorded (truncated or overwritten)")
        elif i % ranks == rank and file_digest(tag_dir / name)["sha256"] != expected["sha256"]:
            faults.append(f"{tag_dir / name}: SHA-256 differs from the recorded one (damaged bytes)")
    return info, faults


def newest_intact(directory, *, collective: bool = False) -> tuple[int, str, dict] | None:
    """(step, tag, marker fields) of the newest marked step directory whose files all match its marker;
    each damaged newer one is logged with its faults. None when no directory is marked; CheckpointError
    naming every checkpoint and its faults when none is intact. collective: every rank of the process
    group calls it and hashes a share of the files; all reach the same answer."""
    directory = Path(directory)
    damaged = []
    for step, tag in reversed(complete_tags(directory)):  # unmarked ones were torn by a kill while saving
        info, faults = verify(directory / tag, _share(collective))
        faults = sorted(set(_everyones(faults) if collective else faults))
        if not faults:
            return step, tag, info
        logger.warning("checkpoint %s is damaged, using an older one: %s", directory / tag, "; ".join(faults))
        damaged.append(f"{tag}: {'; '.join(faults)}")
    if damaged:
        raise CheckpointError(f"no intact checkpoint in {directory}: " + " | ".join(damaged))
    return None
