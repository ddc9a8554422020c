"""Run configuration (what to train: model, data, schedule, intervals) and early checks of the user's
DeepSpeed configuration (how to train it: batch sizes, ZeRO stage, precision, offload, activation
checkpointing). Every check runs before DeepSpeed starts and names the field, its value and what was
expected."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fastscale.data.packing import PACKINGS

from .schedule import DECAYS


class ConfigError(ValueError):
    """A run or DeepSpeed configuration that cannot work, found before any work starts."""


def _require(ok: bool, where: str, name: str, value, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {name}={value!r}; expected {expectation}")


@dataclass
class TrainSettings:
    """The `train` section of a run config. Intervals are in optimizer steps; 0 turns a feature off
    (checkpoint_interval=0: no checkpoints at all, else one every interval and one at the end)."""

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

    def __post_init__(self) -> None:
        w = "train"
        positive = ("steps", "log_interval", "eval_batches", "keep_checkpoints")
        for name in positive:
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, w, name, value, "a positive integer")
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "noise_scale_interval", "seed"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, w, name, value, "an integer >= 0 (0 turns it off)")
        _require(isinstance(self.lr, (int, float)) and self.lr > 0, w, "lr", self.lr, "a positive learning rate")
        _require(self.decay in DECAYS, w, "decay", self.decay, f"one of {DECAYS}")
        _require(0 <= self.min_lr_ratio <= 1, w, "min_lr_ratio", self.min_lr_ratio, "a fraction of the peak LR in [0, 1]")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), w, "betas", self.betas, "two numbers in [0, 1)")
        _require(0 <= self.noise_scale_ema < 1, w, "noise_scale_ema", self.noise_scale_ema, "a decay in [0, 1)")
        self.betas = tuple(self.betas)


@dataclass
class RunConfig:
    """A run: {"model": {...}, "data": {...}, "seq_len": T, "packing": "stream", "train": {...}}.

    model: GPTConfig fields, or {"params": N, ...from_params options} for a shape from a budget;
    vocab_size and seq_len come from the data and the run. data: {"path": DIR} or {"dataset": NAME, ...}.
    packing (fastscale.data.packing): "stream" cuts the token stream into rows, so a document may be
    split across two rows; "documents" keeps every document whole in one row (padding the rest), which
    needs seq_len >= the longest document.
    """

    model: dict
    data: dict
    seq_len: int
    train: TrainSettings = field(default_factory=TrainSettings)
    packing: str = "stream"

    @classmethod
    def from_dict(cls, raw: dict, where: str = "run config") -> "RunConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        known = {"model", "data", "seq_len", "packing", "train", "name", "description"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        for key in ("model", "data", "seq_len"):
            if key not in raw:
                raise ConfigError(f"{where}: missing key {key!r}")
        _require(isinstance(raw["model"], dict), where, "model", raw["model"], "an object")
        _require(isinstance(raw["data"], dict), where, "data", raw["data"], "an object")
        seq_len = raw["seq_len"]
        _require(isinstance(seq_len, int) and seq_len >= 2, where, "seq_len", seq_len, "an integer >= 2")
        packing = raw.get("packing", "stream")
        _require(packing in PACKINGS, where, "packing", packing, f"one of {PACKINGS}")
        train = raw.get("train", {})
        names = {f.name for f in dataclasses.fields(TrainSettings)}
        unknown = sorted(set(train) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown train key(s) {unknown}; known keys are {sorted(names)}")
        return cls(model=raw["model"], data=raw["data"], seq_len=seq_len, train=TrainSettings(**train), packing=packing)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunConfig":
        return cls.from_dict(_read_json(path, "--config"), where=str(path))

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "seq_len": self.seq_len, "packing": self.packing, "train": dataclasses.asdict(self.train)}


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
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, where, name, value, "a positive integer")
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


def check_deepspeed_config(ds: dict, world_size: int, *, device_type: str | None = None) -> dict:
    """Check what can be checked before DeepSpeed starts; returns a copy with the batch sizes resolved."""
    where = "deepspeed config"
    ds = load_deepspeed_config(ds)
    ds.update(resolve_batch(ds, world_size))
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
    offload_optimizer = (zero.get("offload_optimizer") or {}).get("device", "none")
    offload_param = (zero.get("offload_param") or {}).get("device", "none")
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
