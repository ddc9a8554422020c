"""Where a sweep's runs go: the devices of this machine, each run's DeepSpeed config, and how many runs
share one device.

CPU: the host is one device with `jobs` slots (default one per core: each run is one thread), fewer for
runs whose planner estimate of host memory does not allow that many at once. Every run keeps the
sweep's DeepSpeed config as written (its batch sizes resolved for one rank).

CUDA GPUs: each run gets the planner's DeepSpeed config (fastscale.train.plan) merged under the sweep's
"deepspeed" section: the sweep's batch sizes and every key it sets explicitly win; the planner fills the
ZeRO stage, offload, activation checkpointing and bf16 that fit one GPU. Runs share a GPU when several
fit in its memory by the planner's estimate (plus a CUDA context each, with headroom), capped by
MAX_RUNS_PER_GPU and by the host's cores. A run that fits no single GPU spans the fewest GPUs on which
it fits (ZeRO partitions its states over them) and has them to itself.

Host memory per run includes the trainer process's own (fastscale.train.plan.PROCESS_HOST_BYTES,
measured on CPU): on the image8 sizes each run's estimate was within 3% of its measured peak RSS (421.5
to 499.1 MiB estimated; measured on the development machine at two commits). A machine short of memory
evicts the processes' library pages, which lowers their RSS: under such pressure the same runs measured
up to 16% below the estimate.
What this module cannot know without a GPU (none was available when it was written): the real memory
of each process on a GPU (context, allocator slack) and whether 4 runs per GPU actually keep it busier
than 1-2.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from fastscale.hardware import usable_cores
from fastscale.model.config import GPTConfig
from fastscale.train.plan import CHOICES, PROCESS_HOST_BYTES, GiB, Choice, deepspeed_config, estimate, host_memory

from .spec import SweepError

if TYPE_CHECKING:
    from fastscale.train.config import DeepSpeedSettings

# Without MPS the kernels of different processes never run at the same time: the GPU time-slices
# between their contexts. Packing small runs therefore pays only by filling the gaps in which one run's
# GPU waits for its Python loop (kernel launches, data, logging, checkpoints), which dominate for
# models below ~1e7 parameters whose kernels take microseconds. A few runs fill those gaps; each
# further one adds a context's memory and more context switches for no more GPU time. 4 is a judgement,
# not a measurement: measure the summed tokens/s of 1, 2, 4 and 8 runs on one GPU to settle it.
MAX_RUNS_PER_GPU = 4
# What the planner does not count, per process on a GPU: the CUDA context, cuBLAS workspaces and the
# caching allocator's slack (a context alone is ~0.3-0.6 GiB on recent GPUs; unmeasured here).
PROCESS_DEVICE_BYTES = GiB
HEADROOM = 0.9  # as fastscale.train.plan.plan: fit within 90% of each capacity
# On CPU, one run per core: each trainer process runs one thread (OMP_NUM_THREADS=1), and models of
# 1e4-1e6 parameters gain little from a second thread (per-op overhead dominates).
DEFAULT_JOBS = usable_cores()


@dataclass(frozen=True)
class Inventory:
    """What runs can be placed on: GPUs (kind "cuda") or the host alone (kind "cpu")."""

    kind: str
    host_memory: int
    cores: int
    gpu_memory: int = 0  # bytes per GPU: the smallest, if they differ
    device_ids: tuple = ()  # what CUDA_VISIBLE_DEVICES calls each GPU

    @classmethod
    def detect(cls) -> "Inventory":
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return cls("cpu", host_memory(), DEFAULT_JOBS)
        count = torch.cuda.device_count()
        memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(count))
        # torch numbers the GPUs CUDA_VISIBLE_DEVICES lets it see; a child pinned to one must be given its outer name
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = tuple(visible.split(",")[:count]) if visible else tuple(str(i) for i in range(count))
        return cls("cuda", host_memory(), DEFAULT_JOBS, memory, ids)

    @property
    def devices(self) -> int:
        """Devices the scheduler fills: the GPUs, or the host as one."""
        return len(self.device_ids) if self.kind == "cuda" else 1

    def describe(self) -> str:
        if self.kind == "cuda":
            return f"{self.devices} GPU(s) of {self.gpu_memory / GiB:.1f} GiB"
        return f"CPU, {self.cores} core(s), {self.host_memory / GiB:.1f} GiB"


@dataclass(frozen=True)
class Placement:
    """Where one run goes and with which DeepSpeed choice."""

    choice: Choice | None  # the planner's choice on GPUs; None: the sweep's DeepSpeed config as written
    bf16: bool  # 16-bit training (bf16 or the sweep's fp16)
    gpus: int  # devices one run spans (1 on CPU)
    per_device: int  # runs sharing one device
    device_bytes: int  # the planner's bytes per rank on its device (host memory on CPU)
    limit: str  # what caps per_device (or why the run spans several GPUs)

    @property
    def share(self) -> Fraction:
        return Fraction(1, self.per_device)


@dataclass(frozen=True)
class Layout:
    inventory: Inventory
    placements: dict  # run name -> Placement
    reason: str


def place_runs(models: dict[str, GPTConfig], ds: DeepSpeedSettings, inventory: Inventory, *, jobs: int | None = None) -> Layout:
    """Each run's placement (models: run name -> its GPTConfig; ds: the sweep's DeepSpeed section, parsed
    for one rank) and a one-line reason of what shares a device and why. Raises SweepError for a run
    that fits nowhere."""
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise SweepError(f"jobs={jobs!r}; expected a positive integer")
    _refuse_nvme_offload(ds)
    if inventory.kind == "cpu":
        slots = jobs or inventory.cores
        placements = {name: _place_on_host(name, config, ds, inventory, slots) for name, config in models.items()}
    else:
        placements = {name: _place_on_gpus(name, config, ds, inventory) for name, config in models.items()}
    reason = _reason(placements, inventory)
    if jobs is not None and inventory.kind == "cuda":
        reason += f"; at most {jobs} run(s) at a time (--jobs {jobs})"
    return Layout(inventory, placements, reason)


def _refuse_nvme_offload(ds: DeepSpeedSettings) -> None:
    """A sweep runs several runs at once from one DeepSpeed section, and DeepSpeed clears and refills
    nvme_path/zero_stage_*/ of each: they would share, and destroy, one swap directory outside OUT."""
    for section, device in (("offload_optimizer", ds.choice.offload_optimizer), ("offload_param", ds.choice.offload_param)):
        if device == "nvme":
            raise SweepError(f"sweep deepspeed section: zero_optimization.{section}.device='nvme' (nvme_path={ds.nvme_path(section)!r}): "
                             "a sweep's runs would share one swap directory outside the sweep's directory; offload to 'cpu', or train "
                             "that model alone with train.py --deepspeed_config and your nvme_path")


def _micro_batch(ds: DeepSpeedSettings, world_size: int) -> int | None:
    """The micro batch per rank, or None when the sweep's batch sizes do not divide over world_size."""
    from fastscale.train.config import ConfigError

    try:
        return ds.for_world_size(world_size).micro_batch
    except ConfigError:
        return None


def _place_on_host(name: str, config: GPTConfig, ds: DeepSpeedSettings, inventory: Inventory, slots: int) -> Placement:
    bf16 = ds.sixteen_bit
    need = estimate(config, ds.choice, micro_batch=ds.micro_batch, bf16=bf16, gpus=0)["host"]
    fit = math.floor(HEADROOM * inventory.host_memory / max(need, 1))
    if fit < 1:
        raise SweepError(
            f"sweep run {name}: {config.n_params_total:.3g} parameters with {ds.choice.describe()} need about {need / GiB:.1f} GiB "
            f"of host memory by the planner; this machine has {inventory.host_memory / GiB:.1f} GiB (90% usable)"
        )
    limit = f"the {slots} slot(s)" if slots <= fit else "host memory"
    return Placement(None, bf16, 1, min(slots, fit), need, limit)


def _allowed(choice: Choice, ds: DeepSpeedSettings) -> bool:
    """A planner choice agrees with what the sweep's DeepSpeed section sets explicitly."""
    own = ds.choice
    agrees = {"zero_optimization.stage": choice.stage == own.stage,
              "zero_optimization.offload_optimizer": choice.offload_optimizer == own.offload_optimizer,
              "zero_optimization.offload_param": choice.offload_param == own.offload_param,
              "activation_checkpointing": choice.checkpointing}
    return all(ok for key, ok in agrees.items() if key in ds.written)


def _widths(gpus: int) -> list[int]:
    """GPUs one run may span: powers of two, and all of them."""
    return sorted({2**k for k in range(gpus.bit_length()) if 2**k <= gpus} | {gpus})


def _place_on_gpus(name: str, config: GPTConfig, ds: DeepSpeedSettings, inventory: Inventory) -> Placement:
    # left to the planner: bf16 (Ampere and later)
    bf16 = ds.sixteen_bit if ds.written & {"bf16", "fp16"} else True
    # nvme offload needs a fast disk's path, which a sweep does not have
    candidates = [c for c in CHOICES if _allowed(c, ds) and "nvme" not in (c.offload_optimizer, c.offload_param)] or [ds.choice]
    capacity, host_capacity, best = HEADROOM * inventory.gpu_memory, HEADROOM * inventory.host_memory, None
    # Spanning more GPUs before offloading: offload moves states over PCIe every step, a wider run only
    # adds ZeRO's collectives between GPUs
    for offload in (False, True):
        for width in _widths(inventory.devices):
            micro_batch = _micro_batch(ds, width)
            if micro_batch is None:
                continue
            for choice in candidates:
                if (choice.offload_optimizer != "none" or choice.offload_param != "none") != offload:
                    continue
                est = estimate(config, choice, world_size=width, micro_batch=micro_batch, bf16=bf16, gpus=width)
                need, host_need = est["device"] + PROCESS_DEVICE_BYTES, est["host"] * width
                if need <= capacity and host_need <= host_capacity:
                    if width > 1:
                        return Placement(choice, bf16, width, 1, est["device"], "too large for one GPU: a run spanning GPUs has them to itself")
                    per_device, limit = _runs_per_gpu(need, est["host"], inventory)
                    return Placement(choice, bf16, 1, per_device, est["device"], limit)
                overflow = max(need / capacity, host_need / host_capacity)
                if best is None or overflow < best[0]:
                    best = (overflow, need, host_need, choice, width)
    _, need, host_need, choice, width = best
    raise SweepError(
        f"sweep run {name}: {config.n_params_total:.3g} parameters fit on no GPU layout of this machine ({inventory.describe()}, "
        f"{inventory.host_memory / GiB:.1f} GiB host memory); the closest, {choice.describe()} on {width} GPU(s), needs {need / GiB:.1f} GiB "
        f"per GPU (planner estimate plus {PROCESS_DEVICE_BYTES / GiB:.1f} GiB per process) and {host_need / GiB:.1f} GiB of host memory, "
        f"against {capacity / GiB:.1f} and {host_capacity / GiB:.1f} GiB usable; reduce the size or the micro batch, or train it alone with "
        "`fastscale plan` and an nvme offload"
    )


def _runs_per_gpu(need: int, host_need: int, inventory: Inventory) -> tuple[int, str]:
    """Runs of this size on one GPU and what caps them: its memory, MAX_RUNS_PER_GPU, one core per run
    (each run's Python loop launches its kernels) or host memory."""
    fit = math.floor(HEADROOM * inventory.gpu_memory / need)
    limits = {
        f"memory: {fit} fit": fit,
        f"MAX_RUNS_PER_GPU={MAX_RUNS_PER_GPU}: without MPS a GPU time-slices between processes, so more runs only add contexts": MAX_RUNS_PER_GPU,
        f"one host core per run ({inventory.cores} cores)": max(1, inventory.cores // inventory.devices),
    }
    if host_need:
        limits["host memory"] = math.floor(HEADROOM * inventory.host_memory / (host_need * inventory.devices))
    limit = min(limits, key=limits.get)
    return max(1, limits[limit]), limit


def _reason(placements: dict, inventory: Inventory) -> str:
    """What shares a device and why, one clause per group of runs placed alike: the CLI prints it, the runner logs it."""
    groups: dict = {}
    for name, p in placements.items():
        groups.setdefault((p.gpus, p.per_device, p.choice, p.limit), []).append(name)
    clauses = []
    for (gpus, per_device, choice, limit), names in groups.items():
        need = max(placements[n].device_bytes for n in names)
        runs = f"{len(names)} run(s) {names[0]}{' .. ' + names[-1] if len(names) > 1 else ''}"
        if inventory.kind == "cpu":
            least = min(placements[n].device_bytes for n in names)
            each = _size(need) if least == need else f"{_size(least)} to {_size(need)}"
            clauses.append(f"{runs}: {per_device} at a time, each needs {each} of host memory by the planner "
                           f"(incl. {_size(PROCESS_HOST_BYTES)} per process); capped by {limit}")
        elif gpus > 1:
            clauses.append(f"{runs}: on {gpus} GPUs each with {choice.describe()}, <= {_size(need)} per GPU by the planner; {limit}")
        else:
            clauses.append(f"{runs}: {per_device} per GPU with {choice.describe()}, each needs <= {_size(need + PROCESS_DEVICE_BYTES)} "
                           f"by the planner (incl. {_size(PROCESS_DEVICE_BYTES)} per process); capped by {limit}")
    return f"{inventory.describe()}: " + "; ".join(clauses)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GiB:.2f} GiB" if n_bytes >= GiB else f"{n_bytes / 2**20:.1f} MiB"


def deepspeed_for(placement: Placement, ds: DeepSpeedSettings, train) -> dict:
    """The DeepSpeed config of one run: the sweep's (batch sizes resolved for one rank) on CPU; on GPUs
    the planner's config of the placement's choice under the sweep's explicit keys, the batch sizes
    resolved for the GPUs the run spans. train: the run's TrainSettings (the optimizer an offload choice
    needs takes its lr, betas, eps and weight decay)."""
    if placement.choice is None:
        return ds.config
    ds = ds.for_world_size(placement.gpus)
    planned = deepspeed_config(placement.choice, micro_batch=ds.micro_batch, accumulation=ds.accumulation, bf16=placement.bf16, lr=train.lr,
                               betas=train.betas, eps=train.eps, weight_decay=train.weight_decay)
    return ds.written_over(planned)
