"""`Trainer`: drives any torch.nn.Module whose forward returns a loss through a DeepSpeed engine built
from the user's DeepSpeed config, with a deterministic data order, evaluation, metrics.jsonl, atomic
checkpoints with exact resume, FLOP accounting and the gradient noise scale.

ZeRO stage, precision, gradient accumulation, offload and activation checkpointing all come from the
DeepSpeed config; the trainer only supplies the model, the optimizer (torch AdamW unless the config
has an "optimizer" section), the LR schedule (unless it has a "scheduler" section) and the batches.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import math
import os
import resource
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fastscale.model.flops import mfu, peak_flops, pf_days

from . import checkpoint as ckpt
from .config import ConfigError, TrainSettings, check_deepspeed_config
from .confinement import confine_deepspeed_config
from .distributed import init_process_group
from .noise_scale import GradientNoiseScale
from .schedule import lr_multiplier

logger = logging.getLogger(__name__)


def call_model(model, batch):
    """Call model with a batch (dict -> keywords, tuple/list -> positions) and return the loss: a
    scalar tensor, or the "loss" entry of a dict, or the first element of a tuple."""
    out = model(**batch) if isinstance(batch, dict) else model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
    if isinstance(out, dict):
        out = out["loss"]
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out) or out.numel() != 1:
        raise TypeError("Trainer: the model's forward must return a scalar loss (or a dict with 'loss', or a tuple starting with it)")
    return out


def default_token_count(batch) -> int:
    """Tokens in a batch: batch["idx"] if present, else the first tensor's element count."""
    if isinstance(batch, dict):
        tensor = batch.get("idx", next(v for v in batch.values() if torch.is_tensor(v)))
    elif isinstance(batch, (tuple, list)):
        tensor = batch[0]
    else:
        tensor = batch
    return int(tensor.numel())


def rows_for(n_rows: int, seed: int, first: int, count: int) -> np.ndarray:
    from fastscale.data.packing import rows_for as rows

    return rows(n_rows, seed, first, count)


_RECOMPUTE = {"on": True}  # off while the noise scale takes gradients with autograd.grad (DeepSpeed's
# reentrant checkpointing cannot serve .grad())


def _checkpointed_forward(forward, *args, **kwargs):
    import deepspeed

    if not (_RECOMPUTE["on"] and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    return deepspeed.checkpointing.checkpoint(lambda *a: forward(*a, **kwargs), *args)


class Trainer:
    """Train `model` (forward(**batch) -> loss) on `train_data` (a map-style dataset: len() and
    [i]; batches are collate_fn(list of items)) with the DeepSpeed config `deepspeed_config` (a dict
    or a path), writing the run directory `out_dir`.

    Sample k of the infinite stream (epochs of seeded permutations) goes to global step
    k // train_batch_size; within a step, rank r's micro-batch m holds the samples
    (m * world_size + r) * micro ... + micro - 1. The order is a pure function of (seed, step), which is
    what makes resume exact.

    flops_per_token (e.g. GPTConfig.flops_per_token()) enables compute, PF-days and MFU in the metrics;
    n_params is recorded. checkpoint_modules: the modules whose forward is recomputed in backward when
    the DeepSpeed config has an "activation_checkpointing" section (default: the members of every
    nn.ModuleList in the model, e.g. GPT's blocks).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        deepspeed_config,
        train_data,
        *,
        out_dir,
        val_data=None,
        collate_fn: Callable | None = None,
        settings: TrainSettings | None = None,
        flops_per_token: float | None = None,
        n_params: int | None = None,
        token_count: Callable = default_token_count,
        checkpoint_modules: Sequence[torch.nn.Module] | None = None,
        run_info: dict | None = None,
        **overrides,
    ) -> None:
        settings = settings or TrainSettings()
        if overrides:
            settings = TrainSettings(**{**settings.__dict__, **overrides})
        self.settings = settings
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.ds_config = confine_deepspeed_config(check_deepspeed_config(deepspeed_config, self.world_size), out_dir)
        self.micro = self.ds_config["train_micro_batch_size_per_gpu"]
        self.accumulation = self.ds_config["gradient_accumulation_steps"]
        self.batch_size = self.ds_config["train_batch_size"]
        self.stage = (self.ds_config.get("zero_optimization") or {}).get("stage", 0)
        if len(train_data) < 1:
            raise ConfigError("Trainer: train_data is empty")
        if val_data is not None and len(val_data) < 1:
            raise ConfigError("Trainer: val_data is empty")
        self.model, self.train_data, self.val_data = model, train_data, val_data
        self.collate_fn = collate_fn or torch.utils.data.default_collate
        self.flops_per_token, self.n_params, self.token_count = flops_per_token, n_params, token_count
        self.checkpoint_modules = checkpoint_modules
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.run_info = run_info or {}
        self.engine = None

    # ------------------------------------------------------------------ set-up
    def _param_groups(self):
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def _schedule(self, step: int) -> float:
        s = self.settings
        return lr_multiplier(step, total_steps=s.steps, warmup_steps=s.warmup_steps, decay=s.decay, min_lr_ratio=s.min_lr_ratio)

    def _setup(self) -> None:
        import deepspeed
        import torch.distributed as dist

        init_process_group()
        self.rank = dist.get_rank()
        if dist.get_world_size() != self.world_size:
            raise ConfigError(f"Trainer: WORLD_SIZE={self.world_size} but the process group has {dist.get_world_size()} ranks")
        if "activation_checkpointing" in self.ds_config:
            deepspeed.checkpointing.configure(None, deepspeed_config=self.ds_config)
            modules = self.checkpoint_modules
            if modules is None:
                modules = [m for lst in self.model.modules() if isinstance(lst, torch.nn.ModuleList) for m in lst]
            for module in modules:
                module.forward = functools.partial(_checkpointed_forward, module.forward)
            logger.info("activation checkpointing on %d modules", len(modules))
        s = self.settings
        optimizer = None
        if "optimizer" in self.ds_config:
            self.peak_lr = float(self.ds_config["optimizer"].get("params", {}).get("lr", s.lr))
        else:
            self.peak_lr = s.lr
            optimizer = torch.optim.AdamW(self._param_groups(), lr=s.lr, betas=s.betas, eps=s.eps)
        scheduler = None
        if "scheduler" not in self.ds_config:
            scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, self._schedule)  # noqa: E731
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model,
            optimizer=optimizer,
            model_parameters=self._param_groups() if optimizer is None else None,
            lr_scheduler=scheduler,
            config=self.ds_config,
        )
        device = self.engine.device
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.peak, self.peak_description = peak_flops(self.device)
        if self.device.type != "cpu" and self.peak == self.peak:
            self.peak *= self.world_size  # one device per rank; a CPU estimate is already the machine's
        self.dtype = torch.bfloat16 if (self.ds_config.get("bf16") or {}).get("enabled") else torch.float16 if (self.ds_config.get("fp16") or {}).get("enabled") else torch.float32

    # ------------------------------------------------------------------ data
    def _items(self, dataset, indices) -> list:
        return [dataset[int(i)] for i in indices]

    def _micro_batch(self, step: int, micro: int, rows: slice | None = None):
        first = step * self.batch_size + (micro * self.world_size + self.rank) * self.micro
        indices = rows_for(len(self.train_data), self.settings.seed, first, self.micro)
        if rows is not None:
            indices = indices[rows]
        return self._to_device(self.collate_fn(self._items(self.train_data, indices)))

    def _to_device(self, batch):
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self._to_device(v) for v in batch)
        return batch.to(self.device) if torch.is_tensor(batch) else batch

    # ------------------------------------------------------------------ measurements
    def _all_mean(self, values: list[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def _flat_grad(self, batch) -> torch.Tensor:
        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        _RECOMPUTE["on"] = False
        try:
            grads = torch.autograd.grad(call_model(self.engine.module, batch), params, allow_unused=True)
        finally:
            _RECOMPUTE["on"] = True
        return torch.cat([(torch.zeros_like(p) if g is None else g).float().reshape(-1) for p, g in zip(params, grads)])

    def _measure_noise(self, step: int) -> tuple[float, float, float, float] | None:
        """(|G_small|^2, |G_big|^2, B_small, B_big) in tokens. Small batches: each rank's first
        micro-batch (big: their mean over ranks); on one rank, the two halves of the micro-batch."""
        import torch.distributed as dist

        if self.world_size > 1:
            batch = self._micro_batch(step, 0)
            tokens = self.token_count(batch)
            flat = self._flat_grad(batch)
            small = flat.dot(flat).item()
            dist.all_reduce(flat)
            flat /= self.world_size
            big = flat.dot(flat).item()
            small = self._all_mean([small])[0]
            return small, big, tokens, tokens * self.world_size
        if self.micro < 2:
            return None
        half = self.micro // 2
        a, b = self._micro_batch(step, 0, slice(0, half)), self._micro_batch(step, 0, slice(half, 2 * half))
        ga, gb = self._flat_grad(a), self._flat_grad(b)
        tokens = self.token_count(a)
        mean = (ga + gb) / 2
        return (ga.dot(ga).item() + gb.dot(gb).item()) / 2, mean.dot(mean).item(), tokens, 2 * tokens

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the first eval_batches x train_batch_size rows of val_data (the same rows every time)."""
        if self.val_data is None:
            return None
        self.engine.eval()
        total = 0.0
        n = len(self.val_data)
        for i in range(self.settings.eval_batches):
            first = (i * self.world_size + self.rank) * self.micro
            batch = self._to_device(self.collate_fn(self._items(self.val_data, [(first + j) % n for j in range(self.micro)])))
            total += call_model(self.engine, batch).float().item()
        self.engine.train()
        return self._all_mean([total / self.settings.eval_batches])[0]

    def _grad_norm_stage0(self) -> float:
        sq = sum(p.grad.float().pow(2).sum().item() for p in self.engine.module.parameters() if p.grad is not None)
        return math.sqrt(sq)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, state: dict) -> None:
        import torch.distributed as dist

        tag = ckpt.tag_for(step)
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=state, save_latest=False)
        rng_path = self.ckpt_dir / tag / f"rng_rank{self.rank}.pt"
        torch.save({"torch": torch.get_rng_state()}, rng_path.with_suffix(".tmp"))
        os.replace(rng_path.with_suffix(".tmp"), rng_path)
        dist.barrier()
        if self.rank == 0:
            ckpt.mark_complete(self.ckpt_dir, tag, {"step": step, "world_size": self.world_size, "train_batch_size": self.batch_size}, self.settings.keep_checkpoints)
        dist.barrier()

    def _resume(self) -> dict | None:
        found = ckpt.latest_complete(self.ckpt_dir)
        if found is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch", self.ckpt_dir)
            return None
        step, tag = found
        info = json.loads((self.ckpt_dir / tag / ckpt.MARKER).read_text())
        if info.get("train_batch_size") != self.batch_size or info.get("world_size") != self.world_size:
            raise ConfigError(
                f"--resume: checkpoint {tag} was written with world_size={info.get('world_size')}, train_batch_size="
                f"{info.get('train_batch_size')}; this run has world_size={self.world_size}, train_batch_size={self.batch_size}"
            )
        _, state = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        if state is None:
            raise RuntimeError(f"--resume: DeepSpeed could not load checkpoint {self.ckpt_dir / tag}")
        rng = torch.load(self.ckpt_dir / tag / f"rng_rank{self.rank}.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        logger.info("resumed from %s (step %d)", tag, step)
        return state

    # ------------------------------------------------------------------ the loop
    def _write_json(self, name: str, data: dict) -> None:
        if self.rank == 0:
            ckpt.atomic_write_text(self.out_dir / name, json.dumps(data, indent=2, default=str))

    def fit(self, *, resume: bool = False, callback: Callable[[dict], None] | None = None) -> dict:
        """Train to settings.steps (continuing from the newest complete checkpoint with resume=True).
        callback(record) runs on rank 0 after every step. Returns the summary (also summary.json)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._setup()
        try:
            return self._fit(resume, callback)
        finally:
            self.close()

    def _fit(self, resume: bool, callback) -> dict:
        import torch.distributed as dist

        s = self.settings
        torch.manual_seed(s.seed + 1000 * self.rank)  # dropout streams differ per rank, reproducibly
        state = self._resume() if resume else None
        start = state["step"] if state else 0
        tokens, flops, elapsed = (state["tokens"], state["flops"], state["elapsed"]) if state else (0, 0.0, 0.0)
        noise = GradientNoiseScale(s.noise_scale_ema)
        if state:
            noise.load_state_dict(state["noise"])
        info = {
            **self.run_info,
            "deepspeed": self.ds_config,
            "train": dict(self.settings.__dict__),
            "world_size": self.world_size,
            "peak_lr": self.peak_lr,
            "peak_flops": self.peak,
            "peak_flops_source": self.peak_description,
            "n_params": self.n_params if self.n_params is not None else self.run_info.get("n_params"),
        }
        self._write_json("config.json", info)
        if self.stage == 3 and s.noise_scale_interval:
            logger.warning("gradient noise scale is not measured under ZeRO stage 3 (parameters are partitioned)")
        metrics = open(self.out_dir / "metrics.jsonl", "a") if self.rank == 0 else None
        last_eval = None
        window_tokens, window_time = 0, 0.0
        try:
            for step in range(start, s.steps):
                t0 = time.perf_counter()
                lr = self.engine.get_lr()[0] if hasattr(self.engine, "get_lr") else None
                measured = None
                if s.noise_scale_interval and step % s.noise_scale_interval == 0 and self.stage < 3:
                    measured = self._measure_noise(step)
                losses, step_tokens, grad_norm = [], 0, None
                for micro in range(self.accumulation):
                    batch = self._micro_batch(step, micro)
                    step_tokens += self.token_count(batch)
                    loss = call_model(self.engine, batch)
                    self.engine.backward(loss)
                    if micro == self.accumulation - 1 and self.stage == 0 and self.dtype == torch.float32:
                        grad_norm = self._grad_norm_stage0()
                    self.engine.step()
                    losses.append(loss.detach().float().item())
                if grad_norm is None:
                    norm = self.engine.get_global_grad_norm()
                    grad_norm = None if norm is None else float(norm)
                loss_value = self._all_mean([sum(losses) / len(losses)])[0]
                step_tokens *= self.world_size
                dt = time.perf_counter() - t0
                tokens += step_tokens
                step_flops = (self.flops_per_token or 0.0) * step_tokens
                flops += step_flops
                elapsed += dt
                window_tokens += step_tokens
                window_time += dt
                noise_value = noise.update(*measured) if measured else None
                done = step + 1
                record = {"step": done, "tokens": tokens, "loss": loss_value, "lr": lr, "grad_norm": grad_norm}
                if self.flops_per_token:
                    record.update(flops=flops, pf_days=pf_days(flops))
                if measured:
                    record.update(noise_scale=noise_value, noise_scale_raw=measured[:2], noise_scale_batches=measured[2:])
                is_eval = self.val_data is not None and s.eval_interval and (done % s.eval_interval == 0 or done == s.steps)
                if is_eval:
                    record["eval_loss"] = last_eval = self.evaluate()
                if done % s.log_interval == 0 or is_eval or measured or done == s.steps:
                    record["tokens_per_s"] = window_tokens / window_time if window_time else None
                    if self.flops_per_token and window_time:
                        record["mfu"] = mfu(self.flops_per_token * window_tokens / window_time, self.peak)
                    record["elapsed_s"] = elapsed
                    window_tokens, window_time = 0, 0.0
                    if metrics:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                if callback and self.rank == 0:
                    callback(record)
                fault = os.environ.get("FASTSCALE_FAULT_AT_STEP")  # test hook: a hard kill at a chosen step
                if fault and int(fault) == done and self.rank == 0:
                    os.kill(os.getpid(), 9)
                if s.checkpoint_interval and (done % s.checkpoint_interval == 0 or done == s.steps):
                    state = {"step": done, "tokens": tokens, "flops": flops, "elapsed": elapsed, "noise": noise.state_dict()}
                    self.save_checkpoint(done, state)
        finally:
            if metrics:
                metrics.close()
        summary = {
            "steps": s.steps,
            "tokens": tokens,
            "flops": flops,
            "pf_days": pf_days(flops),
            "final_loss": loss_value if s.steps > start else None,
            "final_eval_loss": last_eval,
            "elapsed_s": elapsed,
            "tokens_per_s": tokens / elapsed if elapsed else None,
            "noise_scale": noise.b_simple,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_flops_source": self.peak_description,
        }
        self._write_json("summary.json", summary)
        dist.barrier()
        return summary

    def close(self) -> None:
        """Tear down the engine and the process group (avoids aborts at interpreter exit)."""
        import torch.distributed as dist

        if self.engine is not None:
            self.engine.destroy() if hasattr(self.engine, "destroy") else None
            self.engine = None
            gc.collect()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
