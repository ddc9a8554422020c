"""The memory planner: bytes per rank of each ZeRO stage / offload / activation-checkpointing choice,
and the fastest choice that fits.

Model states follow the ZeRO paper (Rajbhandari et al. 2020): with P parameters, mixed precision keeps
2P bytes of bf16 parameters, 2P of bf16 gradients and 12P of fp32 optimizer state (master copy, Adam's
m and v): K = 12; plain fp32 keeps 4P + 4P + 8P. DeepSpeed's bf16 optimizers also keep the gradients in
fp32 beside the master weights (4P more, partitioned like the optimizer state). Stage 1 partitions the optimizer state over the data-
parallel ranks, stage 2 also the gradients, stage 3 also the parameters (plus a gathered working set of
a few layers). Offload moves the optimizer state (and its fp32 gradients) and, at stage 3, the
parameters to host memory ("cpu") or to disk ("nvme", ZeRO-Infinity). Activations follow Korthikanti
et al. (2022): per layer s*b*h*(34 + 5*a*s/h) bytes in 16-bit without recomputation, 2*s*b*h with
full activation checkpointing plus one layer's worth during its recomputation; fp32 doubles both.

On a machine without GPUs (gpus=0) "device" memory is host memory: offload to "cpu" saves nothing
there, and only "nvme" takes states out of RAM.

Every rank also holds what no formula of the model gives: the process itself (PROCESS_HOST_BYTES, host
memory, measured). Not counted: token shards, which are memory-mapped (their pages count toward a
process's RSS as they are read, but the kernel can drop them), and the gradient noise scale's copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastscale.model.config import GPTConfig

if TYPE_CHECKING:
    from .config import DeepSpeedSettings

GiB = 2**30
MiB = 2**20
# Host memory of a trainer process beyond what estimate() derives from the model: the peak RSS
# (ru_maxrss) of the image8 preset's smallest run (35,392 parameters, fp32, ZeRO-0, micro batch 4 of 193
# tokens, one rank, OMP_NUM_THREADS=1) was 421.9-423.1 MiB, of which the planner's components are 6.5 MiB.
# Measured on the 2-core development machine (CPU only; Python 3.11, torch 2.13, DeepSpeed 0.19.8) with
# /proc/self/status's VmHWM along the way: the interpreter and torch 218 MiB, DeepSpeed's import +24,
# torch._dynamo, which torch.optim imports when the optimizer is built, ~+150 (importing it alone peaks
# at 371 MiB), the process group, DeepSpeed's engine and shm comm op and the first step ~+25. Over all
# 14 image8 runs (3.5e4 to 1.0e6 parameters) peak RSS minus the planner's components was 403-417 MiB.
# On a GPU machine the CUDA libraries and context add host memory this machine cannot measure: there
# this constant is a lower bound.
PROCESS_HOST_BYTES = 415 * MiB
UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "b": 1}
PLACES = {"device": "device (GPU) memory", "host": "host memory", "disk": "disk space at the nvme path"}


def parse_bytes(text: str, name: str = "memory") -> int:
    """'24GiB', '80GB', '512MiB', '1e9B' -> bytes. A size needs its unit: a bare number (is '24' bytes
    or GiB?) is refused, naming the argument (name) it was given for."""
    expected = "expected a size with its unit, such as 24GiB, 80GB, 512MiB or 1e9B"
    s = str(text).strip().lower()
    unit = next((u for u in sorted(UNITS, key=len, reverse=True) if s.endswith(u)), None)
    if unit is None:
        raise ValueError(f"{name}={text!r} has no unit; {expected}")
    try:
        value = float(s[: -len(unit)])
    except ValueError:
        raise ValueError(f"{name}={text!r}; {expected}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}={text!r}; expected a positive size, such as 24GiB")
    return int(value * UNITS[unit])


def host_memory() -> int:
    """Total RAM of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class Choice:
    stage: int
    offload_optimizer: str = "none"  # none | cpu | nvme
    offload_param: str = "none"
    checkpointing: bool = False

    def describe(self) -> str:
        parts = [f"ZeRO-{self.stage}"]
        if self.offload_optimizer != "none":
            parts.append(f"optimizer->{self.offload_optimizer}")
        if self.offload_param != "none":
            parts.append(f"params->{self.offload_param}")
        if self.checkpointing:
            parts.append("activation checkpointing")
        return " + ".join(parts)


# Fastest first: less communication, then less recomputation, then less traffic to host and disk.
CHOICES = (
    Choice(0), Choice(1), Choice(2), Choice(0, checkpointing=True), Choice(1, checkpointing=True), Choice(2, checkpointing=True),
    Choice(3), Choice(3, checkpointing=True),
    Choice(2, "cpu", checkpointing=True), Choice(3, "cpu", checkpointing=True), Choice(3, "cpu", "cpu", checkpointing=True),
    Choice(3, "nvme", checkpointing=True), Choice(3, "nvme", "nvme", checkpointing=True),
)


def activation_bytes(config: GPTConfig, micro_batch: int, bytes_per_value: int, checkpointing: bool) -> int:
    s, b, h, a, L = config.seq_len, micro_batch, config.d_model, config.n_head, config.n_layer
    scale = bytes_per_value / 2
    full_layer = s * b * h * (34 + 5 * a * s / h) * scale
    if checkpointing:
        return int(L * 2 * s * b * h * scale + full_layer)
    return int(L * full_layer)


def state_bytes(bf16: bool) -> tuple[int, int]:
    """(bytes per parameter of the weights and of their gradients, bytes per parameter of the optimizer
    state): 2 and 12 in mixed precision (fp32 master, Adam's m and v), 4 and 8 in fp32 (the module docstring)."""
    return (2, 12) if bf16 else (4, 8)


def vocabulary_bytes(vocab_size: int, d_model: int, tokens: int, *, tie_embeddings: bool = False, bf16: bool = False) -> dict:
    """What the vocabulary costs a training step on one rank before ZeRO partitions it, closed form: its
    weights (the token embedding and, untied, the output projection: V x d each), their gradients and
    optimizer state at the estimate's bytes per parameter, and the loss's peak at `tokens` tokens per
    micro-batch either way. Eager: the float32 logits [tokens, V], their log-softmax and its gradient
    are alive together (3 arrays; the text study measures exactly that on CPU). Fused
    (fastscale.ops.linear_cross_entropy, torch backend): one float32 chunk of logits overwritten in place
    by its gradient (chunk_rows rows, at most `tokens`), plus the gradients of the output weight and of
    the hidden states it writes. eager_loss - fused_loss is the memory the fused loss saves per micro-batch;
    the estimate counts fused_loss (its "logits")."""
    import torch

    from fastscale.ops.cross_entropy_torch import chunk_rows

    weights = (1 if tie_embeddings else 2) * vocab_size * d_model
    p_bytes, optimizer_bytes = state_bytes(bf16)
    rows = min(tokens, chunk_rows(vocab_size, torch.float32))
    return {"weights": weights * p_bytes, "gradients": weights * p_bytes, "optimizer_state": weights * optimizer_bytes,
            "eager_loss": 3 * tokens * vocab_size * 4, "fused_loss": (rows * vocab_size + vocab_size * d_model + tokens * d_model) * 4}


def estimate(config: GPTConfig, choice: Choice, *, world_size: int = 1, micro_batch: int = 1, bf16: bool = True, gpus: int = 1) -> dict:
    """Bytes per rank by place (device, host, nvme) and by component, the process itself (PROCESS_HOST_BYTES,
    on the host) included."""
    P = config.n_params_total
    W = world_size
    p_bytes, optimizer_bytes = state_bytes(bf16)
    params, grads, optim = p_bytes * P, p_bytes * P, optimizer_bytes * P
    grads_fp32 = 4 * P if bf16 or choice.offload_optimizer != "none" else 0
    if choice.stage >= 1:
        optim /= W
        grads_fp32 /= W
    if choice.stage >= 2:
        grads /= W
    working = 0
    if choice.stage == 3:
        params /= W
        per_layer = (config.n_params_exact / config.n_layer) * p_bytes
        working = 4 * per_layer + config.vocab_size * config.d_model * p_bytes  # prefetched layers, embedding
    buffers = 0.0
    if 1 <= choice.stage <= 2:
        buffers = 2 * min(5e7, P) * 4  # reduce / all-gather buckets (the planner writes 5e7 elements)
    components = {
        "params": params,
        "grads": grads,
        "optimizer": optim,
        "grads_fp32": grads_fp32,
        "gathered_params": working,
        "activations": activation_bytes(config, micro_batch, p_bytes, choice.checkpointing),
        "logits": vocabulary_bytes(config.vocab_size, config.d_model, micro_batch * config.seq_len, bf16=bf16)["fused_loss"],
        "buffers": buffers,
        "process": PROCESS_HOST_BYTES,
    }
    place = {k: "device" for k in components}
    place["process"] = "cpu"
    if choice.offload_optimizer != "none":
        place["optimizer"] = choice.offload_optimizer
        # DeepSpeed 0.19 (stage3.py) keeps each rank's gradient partition in a flat host buffer in the
        # parameters' dtype and swaps the fp32 copy out with the optimizer state
        place["grads"] = "cpu"
        place["grads_fp32"] = choice.offload_optimizer
    if choice.offload_param != "none":
        place["params"] = choice.offload_param
    totals = {"device": 0.0, "cpu": 0.0, "nvme": 0.0}
    for name, value in components.items():
        totals[place[name]] += value
    if choice.offload_optimizer == "nvme":
        totals["cpu"] += 4 * 1e8 * 4  # swap buffers: buffer_count 4 x sub_group_size 1e8 fp32 values (deepspeed_config below)
    if choice.offload_param == "nvme":
        totals["cpu"] += 5 * 1e8 * p_bytes  # parameter swap buffers: buffer_count 5 x buffer_size 1e8
    if gpus == 0:  # the device is the host
        totals["cpu"] += totals.pop("device")
        totals["device"] = 0.0
    return {"components": {k: int(v) for k, v in components.items()}, "place": place, "device": int(totals["device"]), "host": int(totals["cpu"]), "nvme": int(totals["nvme"])}


def plan(config: GPTConfig, *, memory: int, host: int | None = None, disk: int | None = None, gpus: int = 1, nodes: int = 1,
         micro_batch: int = 1, bf16: bool = True, headroom: float = 0.9, allow_nvme: bool = True) -> list[dict]:
    """Every choice with its estimate and whether it fits; the first fitting one is the pick.

    memory: bytes per GPU (ignored when gpus=0); host: host RAM per node (default: this machine's),
    shared by the node's ranks; disk: free bytes for nvme offload per node (None: not checked). A
    choice fits when each place is within headroom of its capacity; "over" maps each place that is not
    ("device", "host", "disk") to (bytes needed, bytes usable), which no_fit_reason explains."""
    host = host_memory() if host is None else host
    ranks_per_node = max(gpus, 1)
    world = ranks_per_node * nodes
    rows = []
    for choice in CHOICES:
        if not allow_nvme and "nvme" in (choice.offload_optimizer, choice.offload_param):
            continue
        if gpus == 0 and choice.offload_param == "cpu" or (gpus == 0 and choice.offload_optimizer == "cpu"):
            continue  # no memory saved on a CPU-only machine
        est = estimate(config, choice, world_size=world, micro_batch=micro_batch, bf16=bf16, gpus=gpus)
        needs = {"host": (est["host"] * ranks_per_node, headroom * host)}
        if gpus:
            needs["device"] = (est["device"], headroom * memory)
        if disk is not None and est["nvme"]:
            needs["disk"] = (est["nvme"] * ranks_per_node, headroom * disk)
        over = {place: (need, usable) for place, (need, usable) in needs.items() if need > usable}
        rows.append({"choice": choice, **est, "fits": not over, "over": over})
    return rows


def no_fit_reason(rows: list[dict]) -> str:
    """Why no row of plan() fits: the memory (device, host or disk) that stops the closest choice, with
    its bytes needed and usable, and how many choices each memory stops."""
    if not rows:
        raise ValueError("no_fit_reason: rows is empty; expected plan()'s rows")
    if any(row["fits"] for row in rows):
        raise ValueError("no_fit_reason: a choice fits; expected plan()'s rows of which none fits")

    closest = min(rows, key=lambda row: _ratio(row, limit_of(row)))
    limit = limit_of(closest)
    need, usable = closest["over"][limit]
    counts = {place: sum(limit_of(row) == place for row in rows) for place in PLACES}
    stopped = ", ".join(f"{count} by {PLACES[place]}" for place, count in counts.items() if count)
    text = (f"{PLACES[limit]} is the limit: the closest choice, {closest['choice'].describe()}, needs {need / GiB:.1f} GiB of "
            f"{PLACES[limit]}{' per GPU' if limit == 'device' else ' per node'} where {usable / GiB:.1f} GiB is usable; choices stopped: {stopped}")
    if not any("nvme" in (row["choice"].offload_optimizer, row["choice"].offload_param) for row in rows):
        text += "; offloading to disk (nvme) was not considered"
    return text


def limit_of(row: dict) -> str | None:
    """The place that stops a plan() row most (largest need over usable), None when it fits."""
    if not row["over"]:
        return None
    return max(row["over"], key=lambda place: _ratio(row, place))


def _ratio(row: dict, place: str) -> float:
    need, usable = row["over"][place]
    return need / usable if usable else float("inf")


def deepspeed_config(choice: Choice, *, micro_batch: int = 1, accumulation: int = 1, bf16: bool = True, nvme_path: str | None = None, lr: float = 3e-4,
                     betas: tuple = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1) -> dict:
    """The DeepSpeed config of a choice (the planner's output file). lr, betas, eps and weight_decay go
    to the AdamW section that optimizer offload needs (DeepSpeed steps it with DeepSpeedCPUAdam)."""
    zero: dict = {"stage": choice.stage}
    if choice.stage in (1, 2):
        zero.update(reduce_bucket_size=int(5e7), allgather_bucket_size=int(5e7), overlap_comm=False, contiguous_gradients=True)
    if choice.stage == 3:
        zero.update(stage3_prefetch_bucket_size=int(5e7), stage3_param_persistence_threshold=int(1e5), stage3_max_live_parameters=int(1e8), stage3_max_reuse_distance=int(1e8), reduce_bucket_size=int(5e7), sub_group_size=int(1e8))
    for section, device in (("offload_optimizer", choice.offload_optimizer), ("offload_param", choice.offload_param)):
        if device != "none":
            zero[section] = {"device": device, "pin_memory": False}
            if device == "nvme":
                if not nvme_path:
                    raise ValueError(f"{choice.describe()} offloads to nvme: pass nvme_path (a directory on a fast disk)")
                zero[section]["nvme_path"] = nvme_path
                if section == "offload_param":
                    zero[section].update(buffer_count=5, buffer_size=int(1e8), max_in_cpu=int(1e9))
                else:
                    zero[section].update(buffer_count=4, fast_init=False)
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
    }
    if choice.offload_optimizer != "none":
        config["optimizer"] = {"type": "AdamW", "params": {"lr": lr, "betas": list(betas), "eps": eps, "weight_decay": weight_decay}}
    if choice.offload_optimizer == "nvme" or choice.offload_param == "nvme":
        config["aio"] = {"block_size": 1048576, "queue_depth": 8, "thread_count": 1, "single_submit": False, "overlap_events": True}
    if choice.checkpointing:
        config["activation_checkpointing"] = {"partition_activations": False, "contiguous_memory_optimization": False, "cpu_checkpointing": False}
    return config


def check_fits(config: GPTConfig, ds: DeepSpeedSettings) -> dict:
    """Raise ConfigError before any work starts when the run cannot fit in this machine's memory."""
    import torch

    from .config import ConfigError

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    choice, world_size = ds.choice, ds.world_size
    est = estimate(config, choice, world_size=world_size, micro_batch=ds.micro_batch, bf16=ds.sixteen_bit, gpus=gpus)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    need, have = est["host"] * ranks_here, host_memory()
    if need > have:
        raise ConfigError(
            f"the model cannot fit: {config.n_params_total:.3g} parameters with {choice.describe()} need about {need / GiB:.1f} GiB "
            f"of host memory for {ranks_here} rank(s), this machine has {have / GiB:.1f} GiB; run `fastscale plan` for a choice that fits"
        )
    if gpus:
        capacity = torch.cuda.get_device_properties(0).total_memory
        if est["device"] > capacity:
            raise ConfigError(
                f"the model cannot fit: {choice.describe()} needs about {est['device'] / GiB:.1f} GiB per GPU, the GPU has "
                f"{capacity / GiB:.1f} GiB; run `fastscale plan` for a choice that fits"
            )
    return est


__all__ = ["CHOICES", "PROCESS_HOST_BYTES", "Choice", "check_fits", "deepspeed_config", "estimate", "no_fit_reason", "parse_bytes", "plan"]
