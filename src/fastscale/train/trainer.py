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
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fastscale.io import metrics_line, repair_metrics, write_atomically, write_json
from fastscale.model.flops import mfu, peak_flops, pf_days

from . import checkpoint as ckpt
from .config import ConfigError, TrainSettings, check_deepspeed_config
from .confinement import confine_deepspeed_config, direct_monitor_files
from .distributed import init_process_group
from .noise_scale import GradientNoiseScale
from .schedule import lr_multiplier

logger = logging.getLogger(__name__)

LIKELY_CAUSES = (
    "likely causes: a learning rate too high for this model and batch (lower train.lr, lengthen train.warmup_steps "
    "or set gradient_clipping in the DeepSpeed config), or bad data (NaN/inf inputs, token ids outside the vocabulary)"
)


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient norm and stopped (train.nonfinite, max_consecutive_skips)
    after writing that step's metrics and summary.json."""


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def step_outcome(loss: float, grad_norm: float | None, *, applied: bool, loss_scaling: bool, mode: str) -> str:
    """What the loop makes of a finished step: "ok", "skipped" (its update was withheld and the run goes
    on) or "stop". A non-finite loss or gradient norm stops the run in mode "stop"; in mode "skip" it is
    a skipped step if the update was withheld, and stops the run if it was applied (the weights are then
    no longer finite). A step DeepSpeed's fp16 loss scaler withheld with a finite loss is its normal
    search for a scale: skipped, in either mode."""
    finite = _finite(loss) and _finite(grad_norm)
    if applied:
        return "ok" if finite else "stop"
    if finite or mode == "skip" or (loss_scaling and math.isfinite(loss)):
        return "skipped"
    return "stop"


def stop_message(step: int, loss: float, grad_norm: float | None, *, applied: bool, skips: int, settings: TrainSettings) -> str:
    """Why the run stops at step: what was not finite, what happened to the update, the likely causes."""
    values = f"loss={loss}, gradient norm={grad_norm}"
    if skips >= settings.max_consecutive_skips:
        what = f"{skips} consecutive steps were skipped (train.max_consecutive_skips={settings.max_consecutive_skips}); the last had {values}"
    elif settings.nonfinite == "skip" and applied:
        what = (f"{values}: not finite, and the update was applied anyway (DeepSpeed's own optimizer under fp32 does not "
                "withhold it; train.nonfinite='skip' needs the trainer's AdamW, or bf16/fp16)")
    else:
        what = f"{values}: not finite (train.nonfinite='stop'; 'skip' withholds such updates instead)"
    return (f"step {step}: {what}; training stopped, {LIKELY_CAUSES}. metrics.jsonl holds step {step} (non-finite values "
            "as null); no checkpoint was written after it")


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
        direct_monitor_files(self.ds_config, out_dir)
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
            if s.nonfinite == "skip":
                optimizer.register_step_pre_hook(self._withhold_nonfinite_update)
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

    def _withhold_nonfinite_update(self, optimizer, args, kwargs) -> None:
        """Step pre-hook of train.nonfinite="skip": when a gradient is not finite on any rank, every
        gradient is dropped (set to None), which torch optimizers treat as "no update, no weight decay".
        Under ZeRO the optimizer holds this rank's partition, so the verdict is agreed over all ranks."""
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = torch.stack([g.isfinite().all() for g in grads]).all() if grads else torch.tensor(True)
        # the engine's device (DeepSpeed also steps the optimizer once while it builds the engine)
        verdict = finite.to(device=get_accelerator().current_device_name(), dtype=torch.int32)
        if self.world_size > 1:
            dist.all_reduce(verdict, op=dist.ReduceOp.MIN)
        self._withheld = not bool(verdict)
        # DeepSpeed's engine reads `overflow` off the optimizer it steps directly (ZeRO stage 0, fp32): a
        # withheld step is then counted by it and does not advance the LR schedule, as for the steps
        # its own fp16/bf16 optimizers withhold
        optimizer.overflow = self._withheld
        if self._withheld:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

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
        """Every rank writes its part of checkpoints/stepNNNNNNNN (DeepSpeed's files, its RNG state) and
        hashes a share of the files; rank 0 writes COMPLETE with each file's SHA-256 and prunes. A failed
        save (a full disk, say) removes the partial directory and raises naming the file and the fault."""
        import torch.distributed as dist

        ckpt.install_safe_engine(self.engine)
        tag_dir = self.ckpt_dir / ckpt.tag_for(step)
        if self.rank == 0 and tag_dir.exists():
            shutil.rmtree(tag_dir)  # this step's directory from an earlier attempt: torn, damaged or stale
        dist.barrier()
        try:
            self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag_dir.name, client_state=state, save_latest=False)
            write_atomically(tag_dir / ckpt.rng_name(self.rank), ckpt.rng_bytes())
            dist.barrier()
            files = ckpt.hash_step(tag_dir, collective=True)
            if self.rank == 0:
                info = {"step": step, "world_size": self.world_size, "train_batch_size": self.batch_size, "files": files}
                ckpt.mark_complete(self.ckpt_dir, tag_dir.name, info, self.settings.keep_checkpoints)
        except Exception as error:
            shutil.rmtree(tag_dir, ignore_errors=True)
            raise ckpt.save_failed(error, tag_dir) from error
        dist.barrier()

    def _resume(self) -> dict | None:
        """The client state of the newest intact checkpoint (every file matches the SHA-256 its marker
        records; a damaged newer one is named in a warning), loaded as data only, never as code."""
        ckpt.install_safe_engine(self.engine)
        found = ckpt.newest_intact(self.ckpt_dir, collective=True)
        if found is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch", self.ckpt_dir)
            return None
        step, tag, info = found
        if info["train_batch_size"] != self.batch_size or info["world_size"] != self.world_size:
            raise ConfigError(
                f"--resume: checkpoint {tag} was written with world_size={info['world_size']}, train_batch_size="
                f"{info['train_batch_size']}; this run has world_size={self.world_size}, train_batch_size={self.batch_size}"
            )
        _, state = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        if state is None:
            raise RuntimeError(f"--resume: DeepSpeed could not load checkpoint {self.ckpt_dir / tag}")
        ckpt.load_rng(self.ckpt_dir / tag / ckpt.rng_name(self.rank))
        logger.info("resumed from %s (step %d)", tag, step)
        return state

    # ------------------------------------------------------------------ the loop
    def _write_json(self, name: str, data: dict) -> None:
        if self.rank == 0:
            write_json(self.out_dir / name, data, indent=2, default=str)

    def _open_metrics(self):
        """Rank 0's append handle on metrics.jsonl. A line torn by a kill is cut first: appending to it
        would glue the next record onto it and make both unreadable."""
        if self.rank != 0:
            return None
        path = self.out_dir / "metrics.jsonl"
        repair_metrics(path)
        return open(path, "a")

    def _train_step(self, step: int) -> tuple[float, float | None, int, bool]:
        """One optimizer step over the accumulation micro-batches: (loss averaged over micro-batches and
        ranks, gradient norm, this rank's tokens, whether the update was applied). The loss is summed on
        the device (float64, exact for these few terms) and read once per step."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens, grad_norm = 0, None
        self._withheld = False
        for micro in range(self.accumulation):
            batch = self._micro_batch(step, micro)
            tokens += self.token_count(batch)
            loss = call_model(self.engine, batch)
            self.engine.backward(loss)
            if micro == self.accumulation - 1 and self.stage == 0 and self.dtype == torch.float32:
                grad_norm = self._grad_norm_stage0()
            self.engine.step()
            loss_sum += loss.detach()
        if grad_norm is None:
            norm = self.engine.get_global_grad_norm()
            grad_norm = None if norm is None else float(norm)
        applied = self.engine.was_step_applied() and not self._withheld
        return self._all_mean([loss_sum.item() / self.accumulation])[0], grad_norm, tokens, applied

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
        # checkpoints written before skipping existed have no counts: nothing was skipped then
        skipped, skips_in_a_row = (state.get("skipped_steps", 0), state.get("consecutive_skips", 0)) if state else (0, 0)
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
        metrics = self._open_metrics()
        last_eval, loss_value, stopped = None, None, None
        window_tokens, window_time = 0, 0.0
        try:
            for step in range(start, s.steps):
                t0 = time.perf_counter()
                lr = self.engine.get_lr()[0] if hasattr(self.engine, "get_lr") else None
                measured = None
                if s.noise_scale_interval and step % s.noise_scale_interval == 0 and self.stage < 3:
                    measured = self._measure_noise(step)
                loss_value, grad_norm, step_tokens, applied = self._train_step(step)
                step_tokens *= self.world_size
                dt = time.perf_counter() - t0
                tokens += step_tokens
                step_flops = (self.flops_per_token or 0.0) * step_tokens
                flops += step_flops
                elapsed += dt
                window_tokens += step_tokens
                window_time += dt
                done = step + 1
                outcome = step_outcome(loss_value, grad_norm, applied=applied, loss_scaling=self.dtype == torch.float16, mode=s.nonfinite)
                skips_in_a_row = skips_in_a_row + 1 if outcome == "skipped" else 0
                skipped += outcome == "skipped"
                if outcome == "stop" or skips_in_a_row >= s.max_consecutive_skips:
                    stopped = {"step": done, "reason": stop_message(done, loss_value, grad_norm, applied=applied, skips=skips_in_a_row, settings=s)}
                # a NaN measurement would poison the moving average for the rest of the run
                usable = measured and all(math.isfinite(v) for v in measured[:2])
                noise_value = noise.update(*measured) if usable else None
                record = {"step": done, "tokens": tokens, "loss": loss_value, "lr": lr, "grad_norm": grad_norm, "skipped_steps": skipped}
                if self.flops_per_token:
                    record.update(flops=flops, pf_days=pf_days(flops))
                if measured:
                    record.update(noise_scale=noise_value, noise_scale_raw=measured[:2], noise_scale_batches=measured[2:])
                is_eval = not stopped and self.val_data is not None and s.eval_interval and (done % s.eval_interval == 0 or done == s.steps)
                if is_eval:
                    record["eval_loss"] = last_eval = self.evaluate()
                if done % s.log_interval == 0 or is_eval or measured or done == s.steps or outcome != "ok":
                    record["tokens_per_s"] = window_tokens / window_time if window_time else None
                    if self.flops_per_token and window_time:
                        record["mfu"] = mfu(self.flops_per_token * window_tokens / window_time, self.peak)
                    record["elapsed_s"] = elapsed
                    window_tokens, window_time = 0, 0.0
                    if metrics:
                        metrics.write(metrics_line(record))
                        metrics.flush()
                if callback and self.rank == 0:
                    callback(record)
                if stopped:
                    break  # before any checkpoint: the state after this step is not to be resumed from
                fault = os.environ.get("FASTSCALE_FAULT_AT_STEP")  # test hook: a hard kill at a chosen step
                if fault and int(fault) == done and self.rank == 0:
                    os.kill(os.getpid(), 9)
                if s.checkpoint_interval and (done % s.checkpoint_interval == 0 or done == s.steps):
                    state = {
                        "step": done, "tokens": tokens, "flops": flops, "elapsed": elapsed, "noise": noise.state_dict(),
                        "skipped_steps": skipped, "consecutive_skips": skips_in_a_row,
                    }
                    self.save_checkpoint(done, state)
        finally:
            if metrics:
                metrics.close()
        summary = {
            "steps": s.steps,
            "tokens": tokens,
            "flops": flops,
            "pf_days": pf_days(flops),
            "final_loss": loss_value,
            "final_eval_loss": last_eval,
            "elapsed_s": elapsed,
            "tokens_per_s": tokens / elapsed if elapsed else None,
            "noise_scale": noise.b_simple,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_flops_source": self.peak_description,
            "skipped_steps": skipped,
            "stopped": stopped,
        }
        self._write_json("summary.json", summary)
        dist.barrier()
        if stopped:
            raise NonFiniteError(stopped["reason"])
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
