"""Run configuration (what to train: model, data, schedule, intervals) and the user's DeepSpeed
configuration (how to train it: batch sizes, ZeRO stage, precision, offload, activation checkpointing).

The DeepSpeed config is checked once, before DeepSpeed starts (every check names the field, its value
and what was expected), and read once into `DeepSpeedSettings`, a frozen typed view that the launcher,
the memory planner, the Trainer and the sweep's placement pass along: nothing else reads the dict's
sections. The dict itself, checked and with its batch sizes resolved, goes to `deepspeed.initialize`
unchanged (`DeepSpeedSettings.config`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from fastscale.data.packing import PACKINGS
from fastscale.io import json_kind

from .plan import Choice
from .schedule import DECAYS


class ConfigError(ValueError):
    """A run or DeepSpeed configuration that cannot work, found before any work starts."""


NONFINITE = ("stop", "skip")

def _require(ok: bool, where: str, name: str, value, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {name}={value!r}; expected {expectation}")


def _require_type(ok: bool, where: str, name: str, value, expectation: str) -> None:
    """Like _require, for a value of the wrong type: says what it is ("0.1" in quotes is a string, not
    a number; nothing is coerced)."""
    if not ok:
        raise ConfigError(f"{where}: {name}={value!r} is {json_kind(value)}; expected {expectation}")


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(where: str, name: str, value, ok, expectation: str) -> None:
    """value must be a finite JSON number (not a string, boolean or NaN/Infinity) with ok(value)."""
    _require_type(_is_real(value), where, name, value, expectation)
    _require(math.isfinite(value) and ok(value), where, name, value, expectation)


def check_integer(where: str, name: str, value, minimum: int, expectation: str) -> None:
    _require_type(_is_integer(value), where, name, value, expectation)
    _require(value >= minimum, where, name, value, expectation)


def check_betas(where: str, name: str, value) -> None:
    expectation = "a pair of numbers in [0, 1), e.g. [0.9, 0.95]"
    _require_type(isinstance(value, (list, tuple)), where, name, value, expectation)
    _require(len(value) == 2, where, name, value, expectation)
    for i, beta in enumerate(value):
        check_number(where, f"{name}[{i}]", beta, lambda b: 0 <= b < 1, "a number in [0, 1)")


@dataclass
class TrainSettings:
    """The `train` section of a run config. Intervals are in optimizer steps; 0 turns a feature off
    (checkpoint_interval=0: no checkpoints at all, else one every interval and one at the end).

    log_interval: the loop reads the device (losses, gradient norm) only on log steps (every
    log_interval-th, and the eval, noise-scale, checkpoint and last steps); the steps between run without
    waiting for it. metrics.jsonl gets a record on each log step.

    nonfinite: what a step with a non-finite loss or gradient norm does. "stop" (default) ends the run
    with an error after writing that step's metrics (no checkpoint of it); since values are read on log
    steps, the run ends at the first log step at or after the non-finite one (up to log_interval - 1
    steps later) and names it. "skip" withholds the step's update, counts it in the metrics'
    skipped_steps and goes on, until max_consecutive_skips steps in a row were skipped; to withhold an
    update it reads a finiteness verdict every step (one wait for the device per step). Under fp16,
    DeepSpeed's dynamic loss scaler skips overflowing steps itself while it searches for a scale: those
    count as skipped steps in either mode, and never stop the run on their own.

    data_workers: DataLoader worker processes collating batches ahead of the step (0: in the training
    process), each holding prefetch_batches micro-batches ready; None (the default) is 0 when training
    on a CPU and 1 on a GPU (fastscale.train.loader.worker_count says why).
    """

    steps: int = 100
    seed: int = 0
    lr: float = 1e-3
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 10
    decay: str = "cosine"
    min_lr_ratio: float = 0.1
    log_interval: int = 1
    eval_interval: int = 50
    eval_batches: int = 4
    checkpoint_interval: int = 100
    keep_checkpoints: int = 2
    noise_scale_interval: int = 10
    noise_scale_ema: float = 0.9
    nonfinite: str = "stop"
    max_consecutive_skips: int = 20
    data_workers: int | None = None
    prefetch_batches: int = 2

    def __post_init__(self) -> None:
        w = "train"
        for name in ("steps", "log_interval", "eval_batches", "keep_checkpoints", "max_consecutive_skips", "prefetch_batches"):
            check_integer(w, name, getattr(self, name), 1, "a positive integer")
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "noise_scale_interval", "seed"):
            check_integer(w, name, getattr(self, name), 0, "an integer >= 0 (0 turns it off)" if name != "seed" else "an integer >= 0")
        if self.data_workers is not None:
            check_integer(w, "data_workers", self.data_workers, 0, "an integer >= 0 (0: collate in the training process), or null for the default")
        check_number(w, "lr", self.lr, lambda v: v > 0, "a finite learning rate > 0")
        check_number(w, "eps", self.eps, lambda v: v > 0, "a finite number > 0")
        check_number(w, "weight_decay", self.weight_decay, lambda v: v >= 0, "a finite number >= 0")
        check_number(w, "min_lr_ratio", self.min_lr_ratio, lambda v: 0 <= v <= 1, "a fraction of the peak LR in [0, 1]")
        check_number(w, "noise_scale_ema", self.noise_scale_ema, lambda v: 0 <= v < 1, "a decay in [0, 1)")
        check_betas(w, "betas", self.betas)
        _require(isinstance(self.decay, str) and self.decay in DECAYS, w, "decay", self.decay, f"one of {DECAYS}")
        _require(isinstance(self.nonfinite, str) and self.nonfinite in NONFINITE, w, "nonfinite", self.nonfinite, f"one of {NONFINITE}")
        self.betas = tuple(self.betas)


@dataclass
class RunConfig:
    """A run: {"model": {...}, "data": {...}, "seq_len": T, "packing": "stream", "train": {...}}.

    model: GPTConfig fields, or {"params": N, ...from_params options} for a shape from a budget;
    vocab_size and seq_len come from the data and the run. data: {"path": DIR} or {"dataset": NAME, ...}.
    packing (fastscale.data.packing): "stream" cuts the token stream into rows, so a document may be
    split across two rows; "documents" keeps every document whole in one row (padding the rest), which
    needs seq_len >= the longest document. monitor: experiment tracking, DeepSpeed's monitor sections
    ({"tensorboard": {...}, "wandb": {...}, "csv_monitor": {...}, "comet": {...}}, each with
    "enabled": true) fed the metrics.jsonl records (fastscale.train.monitor).
    """

    model: dict
    data: dict
    seq_len: int
    train: TrainSettings = field(default_factory=TrainSettings)
    packing: str = "stream"
    monitor: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "run config") -> "RunConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        known = {"model", "data", "seq_len", "packing", "train", "monitor", "name", "description"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        for key in ("model", "data", "seq_len"):
            if key not in raw:
                raise ConfigError(f"{where}: missing key {key!r}")
        _require(isinstance(raw["model"], dict), where, "model", raw["model"], "an object")
        _require(isinstance(raw["data"], dict), where, "data", raw["data"], "an object")
        seq_len = raw["seq_len"]
        check_integer(where, "seq_len", seq_len, 2, "an integer >= 2")
        packing = raw.get("packing", "stream")
        _require(packing in PACKINGS, where, "packing", packing, f"one of {PACKINGS}")
        train = raw.get("train", {})
        _require_type(isinstance(train, dict), where, "train", train, "an object")
        names = {f.name for f in dataclasses.fields(TrainSettings)}
        unknown = sorted(set(train) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown train key(s) {unknown}; known keys are {sorted(names)}")
        monitor = raw.get("monitor", {})
        check_monitor(monitor, where)
        return cls(model=raw["model"], data=raw["data"], seq_len=seq_len, train=TrainSettings(**train), packing=packing, monitor=monitor)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunConfig":
        return cls.from_dict(_read_json(path, "--config"), where=str(path))

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "seq_len": self.seq_len, "packing": self.packing, "train": dataclasses.asdict(self.train),
                "monitor": self.monitor}


MONITORS = ("tensorboard", "wandb", "csv_monitor", "comet")


def check_monitor(monitor, where: str) -> None:
    """The run config's "monitor": an object of DeepSpeed monitor sections, each an object whose
    "enabled" (if given) is a boolean; wandb's "mode" is "offline" (the default) or "online"."""
    _require_type(isinstance(monitor, dict), where, "monitor", monitor, "an object of monitor sections")
    unknown = sorted(set(monitor) - set(MONITORS))
    if unknown:
        raise ConfigError(f"{where}: unknown monitor(s) {unknown}; known monitors are {list(MONITORS)}")
    for name, section in monitor.items():
        _require_type(isinstance(section, dict), where, f"monitor.{name}", section, "an object")
        if "enabled" in section:
            _require_type(isinstance(section["enabled"], bool), where, f"monitor.{name}.enabled", section["enabled"], "true or false")
    mode = (monitor.get("wandb") or {}).get("mode", "offline")
    _require(mode in ("offline", "online"), where, "monitor.wandb.mode", mode, "'offline' (the default) or 'online'")


def _read_json(path, flag: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{flag}={str(path)!r}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{flag}={str(path)!r} is not valid JSON: {error}") from None


def load_deepspeed_config(source) -> dict:
    """A DeepSpeed config from a path or a dict (copied)."""
    if isinstance(source, dict):
        return json.loads(json.dumps(source))
    return _read_json(source, "--deepspeed_config")


def resolve_batch(ds: dict, world_size: int) -> dict:
    """Fill in train_batch_size / train_micro_batch_size_per_gpu / gradient_accumulation_steps the way
    DeepSpeed does (any two determine the third; one alone: gradient_accumulation_steps = 1), checking
    train_batch_size = micro * accumulation * world_size. Returns the three, resolved."""
    where = "deepspeed config"
    tb = ds.get("train_batch_size")
    mb = ds.get("train_micro_batch_size_per_gpu")
    gas = ds.get("gradient_accumulation_steps")
    for name, value in (("train_batch_size", tb), ("train_micro_batch_size_per_gpu", mb), ("gradient_accumulation_steps", gas)):
        if value is not None:
            check_integer(where, name, value, 1, "a positive integer")
    if tb is None and mb is None:
        raise ConfigError(f"{where}: set train_batch_size or train_micro_batch_size_per_gpu (or both)")
    if tb is not None and mb is not None and gas is not None:
        if tb != mb * gas * world_size:
            raise ConfigError(
                f"{where}: train_batch_size={tb} must equal train_micro_batch_size_per_gpu={mb} x "
                f"gradient_accumulation_steps={gas} x world_size={world_size} = {mb * gas * world_size}"
            )
    elif tb is not None and mb is not None:
        if tb % (mb * world_size):
            raise ConfigError(
                f"{where}: train_batch_size={tb} is not divisible by train_micro_batch_size_per_gpu={mb} x world_size={world_size}"
            )
        gas = tb // (mb * world_size)
    elif tb is not None:
        gas = gas or 1
        if tb % (gas * world_size):
            raise ConfigError(
                f"{where}: train_batch_size={tb} is not divisible by gradient_accumulation_steps={gas} x world_size={world_size}"
            )
        mb = tb // (gas * world_size)
    else:
        gas = gas or 1
        tb = mb * gas * world_size
    return {"train_batch_size": tb, "train_micro_batch_size_per_gpu": mb, "gradient_accumulation_steps": gas}


def _check_checkpoint_engine(ds: dict, where: str) -> None:
    """fastscale.train.checkpoint hashes every file of a step once DeepSpeed's save returns: engines that
    write in the background or elsewhere would leave files the COMPLETE record cannot vouch for."""
    checkpoint = ds.get("checkpoint") or {}
    _require_type(isinstance(checkpoint, dict), where, "checkpoint", checkpoint, "an object")
    for key in ("writer", "use_node_local_storage"):
        if checkpoint.get(key):
            raise ConfigError(f"{where}: checkpoint.{key}={checkpoint[key]!r}: fastscale checkpoints only through DeepSpeed's default "
                              "engine on shared storage (it verifies every file on resume); remove it")
    if ds.get("datastates_ckpt", False) is not False:  # DeepSpeed's own test: present and not false
        raise ConfigError(f"{where}: datastates_ckpt={ds['datastates_ckpt']!r}: asynchronous checkpointing is not supported "
                          "(fastscale verifies every checkpoint file on resume); remove the section")


DEEPSPEED_RECOMPUTE_OPTIONS = ("partition_activations", "cpu_checkpointing", "contiguous_memory_optimization")


def _check_activation_checkpointing(ds: dict, where: str) -> None:
    """The section turns recomputation on; the Trainer recomputes with torch.utils.checkpoint
    (use_reentrant=False), so the options of DeepSpeed's own checkpointing API would do nothing: refused on."""
    section = ds.get("activation_checkpointing")
    if section is None:
        return
    _require_type(isinstance(section, dict), where, "activation_checkpointing", section, "an object")
    for key in DEEPSPEED_RECOMPUTE_OPTIONS:
        if section.get(key):
            raise ConfigError(f"{where}: activation_checkpointing.{key}={section[key]!r}: fastscale recomputes each block with "
                              "torch.utils.checkpoint(use_reentrant=False), which has no such option (it belongs to DeepSpeed's "
                              "own checkpointing API); remove it or set it false")


def check_deepspeed_config(ds: dict, world_size: int, *, device_type: str | None = None) -> dict:
    """Check what can be checked before DeepSpeed starts; returns a copy with the batch sizes resolved."""
    where = "deepspeed config"
    ds = load_deepspeed_config(ds)
    _require_type(isinstance(ds, dict), where, "the config", ds, "a JSON object")
    for section in ("optimizer", "zero_optimization", "fp16", "bf16"):
        _require_type(isinstance(ds.get(section) or {}, dict), where, section, ds.get(section), "an object")
    ds.update(resolve_batch(ds, world_size))
    _check_numbers_the_trainer_relies_on(ds)
    if device_type is None:
        import torch

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    zero = ds.get("zero_optimization", {}) or {}
    stage = zero.get("stage", 0)
    _require(stage in (0, 1, 2, 3), where, "zero_optimization.stage", stage, "0, 1, 2 or 3")
    if (ds.get("fp16") or {}).get("enabled") and device_type == "cpu":
        raise ConfigError(f"{where}: fp16.enabled=true is not supported on CPU; use bf16 or fp32")
    if (ds.get("fp16") or {}).get("enabled") and (ds.get("bf16") or {}).get("enabled"):
        raise ConfigError(f"{where}: fp16 and bf16 are both enabled; choose one")
    _check_checkpoint_engine(ds, where)
    _check_activation_checkpointing(ds, where)
    offload_optimizer, offload_param = _offload_device(zero, "offload_optimizer"), _offload_device(zero, "offload_param")
    _require(offload_optimizer in ("none", "cpu", "nvme"), where, "zero_optimization.offload_optimizer.device", offload_optimizer, "none, cpu or nvme")
    _require(offload_param in ("none", "cpu", "nvme"), where, "zero_optimization.offload_param.device", offload_param, "none, cpu or nvme")
    if offload_param != "none" and stage != 3:
        raise ConfigError(f"{where}: zero_optimization.offload_param needs stage 3, got stage={stage}")
    if offload_optimizer != "none" and stage == 0:
        raise ConfigError(f"{where}: zero_optimization.offload_optimizer needs stage 1, 2 or 3, got stage=0")
    if offload_optimizer != "none" and "optimizer" not in ds and zero.get("zero_force_ds_cpu_optimizer", ds.get("zero_force_ds_cpu_optimizer", True)):
        raise ConfigError(
            f"{where}: offload_optimizer.device={offload_optimizer!r} needs an \"optimizer\" section (e.g. "
            '{"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1}}) so DeepSpeed steps it with DeepSpeedCPUAdam'
        )
    for device, section in ((offload_optimizer, "offload_optimizer"), (offload_param, "offload_param")):
        if device == "nvme":
            path = (zero.get(section) or {}).get("nvme_path")
            if not path:
                raise ConfigError(f"{where}: zero_optimization.{section}.device='nvme' needs nvme_path")
    return ds


BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
PRECISIONS = ("bf16", "fp16")
# what a config may leave to fastscale's memory planner (the sweep on GPUs): its explicit settings win
PLANNED_KEYS = ("bf16", "fp16", "zero_optimization.stage", "zero_optimization.offload_optimizer", "zero_optimization.offload_param",
                "activation_checkpointing")


# What DeepSpeed clips at when its config has no "gradient_clipping" (deepspeed.runtime.constants.GRADIENT_CLIPPING_DEFAULT)
DEEPSPEED_GRADIENT_CLIPPING = 1.0


@dataclass(frozen=True)
class DeepSpeedSettings:
    """What fastscale needs to know of a DeepSpeed config, read once from the checked config and passed
    along (launcher, planner, Trainer, sweep placement), so no other module reads the dict's sections.

    config: the checked config with its batch sizes resolved for world_size, as deepspeed.initialize
    gets it (not to be changed; `with_config` makes a view of an edited copy). precision: "bf16", "fp16"
    or "fp32". choice: the ZeRO stage, offload devices and activation checkpointing, as the planner
    (fastscale.train.plan) names them. optimizer / scheduler: the config has that section (DeepSpeed
    builds it; otherwise the Trainer supplies AdamW / its LR schedule); optimizer_lr: that section's
    peak lr, if it sets one. gradient_clipping: the max gradient norm (0: no clipping; a config without
    the key clips at DeepSpeed's default, DEEPSPEED_GRADIENT_CLIPPING). written: which of PLANNED_KEYS the config sets itself. requested_batch: the
    batch keys as written, from which `for_world_size` resolves the batch sizes for another world size.
    """

    config: dict
    world_size: int
    batch_size: int
    micro_batch: int
    accumulation: int
    precision: str
    choice: Choice
    optimizer: bool
    optimizer_lr: float | None
    scheduler: bool
    written: frozenset
    requested_batch: dict
    gradient_clipping: float = 0.0

    @classmethod
    def parse(cls, source, world_size: int, *, device_type: str | None = None) -> "DeepSpeedSettings":
        """Check the config (a path or a dict; check_deepspeed_config) and read it."""
        as_written = load_deepspeed_config(source)
        checked = check_deepspeed_config(as_written, world_size, device_type=device_type)
        return cls.read(checked, world_size, requested_batch={key: as_written[key] for key in BATCH_KEYS if key in as_written})

    @classmethod
    def read(cls, config: dict, world_size: int, *, requested_batch: dict | None = None) -> "DeepSpeedSettings":
        """The view of a config check_deepspeed_config already passed for world_size (a finished run's
        config.json, say): read, not checked again."""
        zero = config.get("zero_optimization") or {}
        precision = next((key for key in PRECISIONS if (config.get(key) or {}).get("enabled")), "fp32")
        choice = Choice(zero.get("stage", 0), _offload_device(zero, "offload_optimizer"), _offload_device(zero, "offload_param"),
                        "activation_checkpointing" in config)
        written = frozenset(key for key in PLANNED_KEYS if _has_key(config, key))
        lr = ((config.get("optimizer") or {}).get("params") or {}).get("lr")
        return cls(config, world_size, config["train_batch_size"], config["train_micro_batch_size_per_gpu"],
                   config["gradient_accumulation_steps"], precision, choice, "optimizer" in config, None if lr is None else float(lr),
                   "scheduler" in config, written, {key: config[key] for key in BATCH_KEYS} if requested_batch is None else requested_batch,
                   float(config.get("gradient_clipping", DEEPSPEED_GRADIENT_CLIPPING)))

    @property
    def sixteen_bit(self) -> bool:
        return self.precision != "fp32"

    def nvme_path(self, section: str) -> str | None:
        """The swap directory of zero_optimization.<section> ("offload_optimizer" or "offload_param")."""
        return ((self.config.get("zero_optimization") or {}).get(section) or {}).get("nvme_path")

    def for_world_size(self, world_size: int) -> "DeepSpeedSettings":
        """This config's batch sizes resolved for another world size (resolve_batch: a ConfigError when
        they do not divide over it)."""
        batch = resolve_batch(self.requested_batch, world_size)
        return dataclasses.replace(self, config={**self.config, **batch}, world_size=world_size, batch_size=batch["train_batch_size"],
                                   micro_batch=batch["train_micro_batch_size_per_gpu"], accumulation=batch["gradient_accumulation_steps"])

    def with_config(self, config: dict) -> "DeepSpeedSettings":
        """The view of an edited copy of config that changes none of the fields read here (the run
        directory's paths, fastscale.train.confinement)."""
        return dataclasses.replace(self, config=config)

    def written_over(self, base: dict) -> dict:
        """base (the planner's config) with every key this config sets written over it: zero_optimization
        merged key by key, and base's precision dropped when this config chooses its own."""
        own_precision = bool(self.written & set(PRECISIONS))
        merged = {key: value for key, value in base.items() if not (own_precision and key in PRECISIONS)}
        merged.update(self.config)
        merged["zero_optimization"] = {**(base.get("zero_optimization") or {}), **(self.config.get("zero_optimization") or {})}
        return merged


def _offload_device(zero: dict, section: str) -> str:
    return (zero.get(section) or {}).get("device", "none")


def _has_key(config: dict, dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    return section in config and (not key or key in (config[section] or {}))


def _check_numbers_the_trainer_relies_on(ds: dict) -> None:
    """The optimizer's hyperparameters, gradient clipping and the fp16 loss scaler: finite numbers of the
    right type and range (DeepSpeed would take lr=Infinity, or fail later with a TypeError on "0.1")."""
    where = "deepspeed config"
    params = (ds.get("optimizer") or {}).get("params", {})
    _require_type(isinstance(params, dict), where, "optimizer.params", params, "an object")
    optimizer_checks = {
        "lr": (lambda v: v > 0, "a finite learning rate > 0"),
        "eps": (lambda v: v > 0, "a finite number > 0"),
        "weight_decay": (lambda v: v >= 0, "a finite number >= 0"),
    }
    for name, (ok, expectation) in optimizer_checks.items():
        if name in params:
            check_number(where, f"optimizer.params.{name}", params[name], ok, expectation)
    if "betas" in params:
        check_betas(where, "optimizer.params.betas", params["betas"])
    if "gradient_clipping" in ds:
        check_number(where, "gradient_clipping", ds["gradient_clipping"], lambda v: v >= 0, "a finite max gradient norm >= 0 (0 turns clipping off)")
    fp16 = ds.get("fp16") or {}
    for section, settings in (("fp16", fp16), ("bf16", ds.get("bf16") or {})):
        if "enabled" in settings:
            _require_type(isinstance(settings["enabled"], bool), where, f"{section}.enabled", settings["enabled"], "true or false")
    if "loss_scale" in fp16:
        check_number(where, "fp16.loss_scale", fp16["loss_scale"], lambda v: v >= 0, "a finite number >= 0 (0: dynamic loss scaling)")
    if "initial_scale_power" in fp16:
        power, expectation = fp16["initial_scale_power"], "an integer in [0, 127] (the first dynamic scale is 2**power, a finite float32)"
        check_integer(where, "fp16.initial_scale_power", power, 0, expectation)
        _require(power <= 127, where, "fp16.initial_scale_power", power, expectation)
    for name in ("loss_scale_window", "hysteresis"):
        if name in fp16:
            check_integer(where, f"fp16.{name}", fp16[name], 1, "a positive integer")
    if "min_loss_scale" in fp16:
        check_number(where, "fp16.min_loss_scale", fp16["min_loss_scale"], lambda v: v > 0, "a finite number > 0")
