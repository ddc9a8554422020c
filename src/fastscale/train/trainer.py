"""`Trainer`: drives any torch.nn.Module whose forward returns a loss through a DeepSpeed engine built
from the user's DeepSpeed config, with a deterministic data order, evaluation, metrics.jsonl, atomic
checkpoints with exact resume, FLOP accounting and the gradient noise scale.

ZeRO stage, precision, gradient accumulation, offload and activation checkpointing all come from the
DeepSpeed config; the trainer only supplies the model, the optimizer (torch's fused AdamW unless the config
has an "optimizer" section), the LR schedule (unless it has a "scheduler" section) and the batches.

The loop is four parts: `_step` (one optimizer step; its loss and gradient norm stay on the device),
`_settle` (on log steps only: one read of the device for every step since the last, the outcome of
each step, the records for metrics.jsonl and the monitor), `evaluate` and `save_checkpoint`. Between
log steps nothing waits for the device: no .item(), no collective of the trainer's own, and on a GPU
batches collated ahead by a DataLoader worker. Tests and tools act on the run through `callback`.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from fastscale.io import metrics_line, repair_metrics, write_atomically, write_json
from fastscale.model.flops import mfu, peak_flops
from fastscale.units import flops_to_pf_days

from . import checkpoint as ckpt
from .config import ConfigError, DeepSpeedSettings, TrainSettings
from .confinement import confine_deepspeed_config, direct_monitor_files
from .distributed import init_process_group
from .loader import Layout, StepSampler, batch_loader, to_device, worker_count
from .monitor import Monitor, check_sections, enabled_sections
from .noise_scale import GradientNoiseScale, gradient_dot, two_batch_norms
from .schedule import lr_multiplier

logger = logging.getLogger(__name__)

FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW runs

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



def recompute_in_backward(model: torch.nn.Module, modules: Sequence[torch.nn.Module]) -> int:
    """Wrap each of `modules` (children somewhere in model) in torch's checkpoint_wrapper, in place: its
    forward runs under torch.utils.checkpoint(use_reentrant=False), so its activations are recomputed
    in backward instead of kept, and autograd.grad works through it (the noise scale needs it). The
    wrapper strips its own name from state_dict keys and adds it back on load, so checkpoints and
    state dicts stay those of the unwrapped model. Returns how many modules were wrapped."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, CheckpointWrapper, checkpoint_wrapper

    targets = {id(m) for m in modules}
    wrapped = 0
    for parent in list(model.modules()):
        if isinstance(parent, CheckpointWrapper):
            continue  # already wrapped (a second fit)
        for name, child in list(parent.named_children()):
            if id(child) in targets:
                setattr(parent, name, checkpoint_wrapper(child, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
                wrapped += 1
    return wrapped


@dataclass
class StepResult:
    """One optimizer step as `_step` leaves it: host values, and the loss and gradient norm still on the
    device (read by `_settle` on the next log step)."""

    step: int  # optimizer steps done, this one included
    loss: torch.Tensor  # this rank's mean over its micro-batches, float64, on the device
    grad_norm: torch.Tensor | float | None
    applied: bool
    lr: float | None
    tokens: int  # all ranks, since the start of the run, this step included
    flops: float
    noise: tuple[float, float, float, float] | None  # measured before the step (a log step)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HEAP_TENSOR_BYTES = 32 * 1024 * 1024  # the largest block glibc's own adaptive threshold serves from the heap on 64-bit


def keep_freed_host_memory() -> bool:
    """Make glibc keep the memory a CPU training step frees for the next step: blocks up to 32 MiB come
    from the heap and its freed top is never given back to the OS. By default glibc trims the heap and
    unmaps large blocks as a step's activations and gradients are freed, so the next step faults the
    same pages in again, zero-filled (benchmarks/results/trainer.md). The memory kept was in use at the
    step's peak, so it adds nothing to peak RSS itself; what heap fragmentation may add at billions of
    parameters has not been measured. Returns whether the settings took (glibc only)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_TENSOR_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its program: /proc/self/status VmHWM.
    Not ru_maxrss: Linux carries the high-water mark of the memory a process had before exec into it
    (exec_mmap), so a trainer forked from a large process (a sweep run inside a long pytest session)
    reported that process's size (767 MiB where its own peak was ~420). ru_maxrss where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Totals:
    """The counters a checkpoint carries besides the engine (its client state, with the noise scale)."""

    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    elapsed: float = 0.0
    skipped: int = 0
    skips_in_a_row: int = 0

    @classmethod
    def from_state(cls, state: dict | None) -> "Totals":
        if not state:
            return cls()
        # checkpoints written before skipping existed have no counts: nothing was skipped then
        return cls(state["step"], state["tokens"], state["flops"], state["elapsed"], state.get("skipped_steps", 0), state.get("consecutive_skips", 0))

    def state(self, noise: GradientNoiseScale) -> dict:
        return {"step": self.step, "tokens": self.tokens, "flops": self.flops, "elapsed": self.elapsed, "noise": noise.state_dict(),
                "skipped_steps": self.skipped, "consecutive_skips": self.skips_in_a_row}


class Window:
    """Throughput since the previous log step. A log step waits for the device, so the window's time
    is the device's, though the steps between return before it is done."""

    def __init__(self, tokens: int) -> None:
        self.start_tokens, self.seconds = tokens, 0.0

    def close(self, record: dict, totals: Totals, flops_per_token: float | None, peak: float) -> None:
        """tokens_per_s, mfu and elapsed_s into record; the next window starts."""
        tokens = totals.tokens - self.start_tokens
        record["tokens_per_s"] = tokens / self.seconds if self.seconds else None
        if flops_per_token and self.seconds:
            record["mfu"] = mfu(flops_per_token * tokens / self.seconds, peak)
        record["elapsed_s"] = totals.elapsed
        self.start_tokens, self.seconds = totals.tokens, 0.0


class Trainer:
    """Train `model` (forward(**batch) -> loss) on `train_data` (a map-style dataset: len() and
    [i]; batches are collate_fn(list of items)) with the DeepSpeed config `deepspeed_config` (a dict
    or a path, checked here, or the DeepSpeedSettings of one checked for this world size), writing the
    run directory `out_dir`.

    The batches come in the order fastscale.train.loader describes, a pure function of (seed, step),
    which is what makes resume exact; checkpoints hold the CPU generator and every CUDA device's.

    flops_per_token (e.g. GPTConfig.flops_per_token()) enables compute, PF-days and MFU in the metrics;
    n_params is recorded. checkpoint_modules: the modules whose forward is recomputed in backward when
    the DeepSpeed config has an "activation_checkpointing" section (default: the members of every
    nn.ModuleList in the model, e.g. GPT's blocks; see `recompute_in_backward`). monitor: the run
    config's "monitor" section (fastscale.train.monitor), fed the metrics records.
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
        monitor: dict | None = None,
        **overrides,
    ) -> None:
        settings = settings or TrainSettings()
        if overrides:
            settings = TrainSettings(**{**settings.__dict__, **overrides})
        self.settings = settings
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        ds = self._deepspeed_settings(deepspeed_config)
        self.ds = ds.with_config(confine_deepspeed_config(ds.config, out_dir))
        direct_monitor_files(self.ds.config, out_dir)
        check_sections(monitor or {})
        self.monitor_sections = enabled_sections(monitor)
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

    def _deepspeed_settings(self, deepspeed_config) -> DeepSpeedSettings:
        if not isinstance(deepspeed_config, DeepSpeedSettings):
            return DeepSpeedSettings.parse(deepspeed_config, self.world_size)
        if deepspeed_config.world_size != self.world_size:
            raise ConfigError(f"Trainer: deepspeed_config was checked for world_size={deepspeed_config.world_size}; expected "
                              f"WORLD_SIZE={self.world_size}, this run's")
        return deepspeed_config

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
        from deepspeed.accelerator import get_accelerator

        init_process_group()
        self.rank = dist.get_rank()
        if dist.get_world_size() != self.world_size:
            raise ConfigError(f"Trainer: WORLD_SIZE={self.world_size} but the process group has {dist.get_world_size()} ranks")
        if self.ds.choice.checkpointing:
            modules = self.checkpoint_modules
            if modules is None:
                modules = [m for lst in self.model.modules() if isinstance(lst, torch.nn.ModuleList) for m in lst]
            logger.info("activation checkpointing on %d modules", recompute_in_backward(self.model, modules))
        s = self.settings
        optimizer = None
        self.peak_lr = s.lr if self.ds.optimizer_lr is None else self.ds.optimizer_lr
        if not self.ds.optimizer:
            # fused: one kernel updates every parameter, where the default runs ~10 ops per parameter
            fused = get_accelerator().device_name() in FUSED_ADAMW_DEVICES or None
            optimizer = torch.optim.AdamW(self._param_groups(), lr=s.lr, betas=s.betas, eps=s.eps, fused=fused)
            if s.nonfinite == "skip":
                optimizer.register_step_pre_hook(self._withhold_nonfinite_update)
        scheduler = None
        if not self.ds.scheduler:
            scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, self._schedule)  # noqa: E731
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model,
            optimizer=optimizer,
            model_parameters=self._param_groups() if optimizer is None else None,
            lr_scheduler=scheduler,
            config={**self.ds.config, "gradient_clipping": 0.0} if self._clips_itself() else self.ds.config,
        )
        if self.world_size == 1 and self._steps_plainly():
            # one rank: DeepSpeed's all-reduce would flatten every gradient, reduce it over this rank alone and copy it back
            self.engine.enable_backward_allreduce = False
        device = self.engine.device
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.peak, self.peak_description = peak_flops(self.device)
        if self.device.type == "cpu":
            keep_freed_host_memory()
        if self.device.type != "cpu" and self.peak == self.peak:
            self.peak *= self.world_size  # one device per rank; a CPU estimate is already the machine's
        self.layout = Layout(len(self.train_data), s.seed, self.ds.batch_size, self.ds.micro_batch, self.ds.accumulation, self.world_size, self.rank)
        self.monitor = Monitor(self.monitor_sections, self.out_dir) if self.monitor_sections and self.rank == 0 else None

    def _withhold_nonfinite_update(self, optimizer, args, kwargs) -> None:
        """Step pre-hook of train.nonfinite="skip": when a gradient is not finite on any rank, every
        gradient is dropped (set to None), which torch optimizers treat as "no update, no weight decay".
        Under ZeRO the optimizer holds this rank's partition, so the verdict is agreed over all ranks.
        Deciding needs the verdict on the host: the one wait for the device per step that "skip" costs."""
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
    def _loader(self, start: int):
        """This rank's micro-batches of steps start .. settings.steps - 1, collated ahead."""
        s = self.settings
        return batch_loader(self.train_data, StepSampler(self.layout, start, s.steps), self.collate_fn, workers=worker_count(s.data_workers, self.device),
                            prefetch=s.prefetch_batches, pin_memory=self.device.type == "cuda", seed=s.seed)

    def _batch(self, dataset, indices):
        return to_device(self.collate_fn([dataset[int(i)] for i in indices]), self.device)

    # ------------------------------------------------------------------ measurements
    def _mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self.world_size > 1:
            dist.all_reduce(values)
        return values / self.world_size

    def _gradients(self, batch) -> list[torch.Tensor | None]:
        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        return list(torch.autograd.grad(call_model(self.engine.module, batch), params, allow_unused=True))

    def _measure_noise(self, step: int) -> tuple[float, float, float, float] | None:
        """(|G_small|^2, |G_big|^2, B_small, B_big) in tokens, from per-parameter dot products (no
        concatenated copy of the gradient). Small batches: each rank's first micro-batch (big: their
        mean over ranks, reduced parameter by parameter); on one rank, the two halves of the micro-batch."""
        import torch.distributed as dist

        indices = self.layout.indices(step, 0)
        if self.world_size > 1:
            batch = self._batch(self.train_data, indices)
            tokens = self.token_count(batch)
            grads = self._gradients(batch)
            small = self._mean_over_ranks(gradient_dot(grads, grads))
            for g in grads:
                if g is not None:
                    dist.all_reduce(g)
                    g /= self.world_size
            small_sq, big_sq = torch.stack([small, gradient_dot(grads, grads)]).tolist()
            return small_sq, big_sq, tokens, tokens * self.world_size
        if self.ds.micro_batch < 2:
            return None
        half = self.ds.micro_batch // 2
        a, b = self._batch(self.train_data, indices[:half]), self._batch(self.train_data, indices[half : 2 * half])
        tokens = self.token_count(a)
        small_sq, big_sq = two_batch_norms(self._gradients(a), self._gradients(b)).tolist()
        return small_sq, big_sq, tokens, 2 * tokens

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the first eval_batches x train_batch_size rows of val_data (the same rows every
        time), summed on the device and read once."""
        if self.val_data is None:
            return None
        self.engine.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        n = len(self.val_data)
        for i in range(self.settings.eval_batches):
            first = (i * self.world_size + self.rank) * self.ds.micro_batch
            total += call_model(self.engine, self._batch(self.val_data, [(first + j) % n for j in range(self.ds.micro_batch)])).detach()
        self.engine.train()
        return self._mean_over_ranks(total / self.settings.eval_batches).item()

    def _steps_plainly(self) -> bool:
        """The engine steps a torch optimizer on the module's own gradients (ZeRO stage 0 in fp32), so
        the Trainer can read, and clip, them where DeepSpeed keeps no norm."""
        return self.ds.choice.stage == 0 and not self.ds.sixteen_bit

    def _clips_itself(self) -> bool:
        """Clipping with the one fused norm the Trainer computes anyway, instead of DeepSpeed's second
        norm (one per parameter, then an all-reduce)."""
        return self._steps_plainly() and self.ds.gradient_clipping > 0

    def _fused_grad_norm(self) -> torch.Tensor | None:
        """The gradient norm before clipping, as one fused norm on the device, clipping the gradients
        with it when the Trainer clips; None where the engine keeps its own norm."""
        if not self._steps_plainly():
            return None
        params = [p for p in self.engine.module.parameters() if p.grad is not None]
        if not params:
            return None
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self._clips_itself():
            torch.nn.utils.clip_grads_with_norm_(params, self.ds.gradient_clipping, norm)
        return norm

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, state: dict) -> None:
        """Every rank writes its part of checkpoints/stepNNNNNNNN (DeepSpeed's files, its RNG state) and
        hashes a share of the files; rank 0 writes COMPLETE with each file's SHA-256 and prunes. A failed
        save (a full disk, say) removes the partial directory and raises naming the file and the fault; a
        Ctrl-C waits for the save to end (checkpoint.interrupts_held)."""
        import torch.distributed as dist

        ckpt.install_safe_engine(self.engine)
        tag_dir = self.ckpt_dir / ckpt.tag_for(step)
        if self.rank == 0 and tag_dir.exists():
            shutil.rmtree(tag_dir)  # this step's directory from an earlier attempt: torn, damaged or stale
        dist.barrier()
        with ckpt.interrupts_held():
            try:
                self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag_dir.name, client_state=state, save_latest=False)
                write_atomically(tag_dir / ckpt.rng_name(self.rank), ckpt.rng_bytes())
                dist.barrier()
                files = ckpt.hash_step(tag_dir, collective=True)
                if self.rank == 0:
                    info = {"step": step, "world_size": self.world_size, "train_batch_size": self.ds.batch_size, "files": files}
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
        if info["train_batch_size"] != self.ds.batch_size or info["world_size"] != self.world_size:
            raise ConfigError(
                f"--resume: checkpoint {tag} was written with world_size={info['world_size']}, train_batch_size="
                f"{info['train_batch_size']}; this run has world_size={self.world_size}, train_batch_size={self.ds.batch_size}"
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

    def _step(self, step: int, batches, totals: Totals, noise) -> StepResult:
        """One optimizer step over the accumulation micro-batches. The loss is summed on the device
        (float64, exact for these few terms) and the gradient norm left there: nothing here waits for it."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens, grad_norm = 0, None
        lr = self.engine.get_lr()[0] if hasattr(self.engine, "get_lr") else None
        self._withheld = False
        for micro in range(self.ds.accumulation):
            with ckpt.interrupts_held():  # a Ctrl-C cutting off a worker's hand-over of a batch makes the worker print a traceback
                batch = to_device(next(batches), self.device)
            tokens += self.token_count(batch)
            loss = call_model(self.engine, batch)
            self.engine.backward(loss)
            if micro == self.ds.accumulation - 1:
                grad_norm = self._fused_grad_norm()
            self.engine.step()
            loss_sum += loss.detach()
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
            grad_norm = grad_norm.detach().clone() if torch.is_tensor(grad_norm) else grad_norm
        totals.step = step + 1
        totals.tokens += tokens * self.world_size
        totals.flops += (self.flops_per_token or 0.0) * tokens * self.world_size
        applied = self.engine.was_step_applied() and not self._withheld
        return StepResult(totals.step, loss_sum / self.ds.accumulation, grad_norm, applied, lr, totals.tokens, totals.flops, noise)

    def _is_log_step(self, done: int) -> bool:
        """Steps whose values are read: every log_interval-th, the last, and those that evaluate,
        measure the noise scale (it was measured before the step) or checkpoint."""
        s = self.settings
        return (done % s.log_interval == 0 or done == s.steps or bool(self._eval_due(done)) or self._noise_due(done - 1)
                or bool(s.checkpoint_interval and done % s.checkpoint_interval == 0))

    def _eval_due(self, done: int) -> bool:
        s = self.settings
        return self.val_data is not None and bool(s.eval_interval) and (done % s.eval_interval == 0 or done == s.steps)

    def _noise_due(self, step: int) -> bool:
        s = self.settings
        return bool(s.noise_scale_interval) and step % s.noise_scale_interval == 0 and self.ds.choice.stage < 3

    def _read(self, pending: list[StepResult]) -> list[tuple[float, float | None]]:
        """(loss averaged over ranks, gradient norm) of every pending step: one collective and one read
        of the device for all of them."""
        losses = self._mean_over_ranks(torch.stack([result.loss for result in pending]))
        norms = torch.stack([torch.as_tensor(math.nan if r.grad_norm is None else r.grad_norm, dtype=torch.float64).to(self.device)
                             for r in pending])
        values = torch.cat([losses, norms]).tolist()
        return [(loss, None if r.grad_norm is None else norm) for r, loss, norm in zip(pending, values[: len(pending)], values[len(pending):])]

    def _settle(self, pending: list[StepResult], totals: Totals, noise: GradientNoiseScale) -> tuple[list[dict], dict | None]:
        """The records of the pending steps (each ends with a log step) and, if the run must stop, why.
        Every step's outcome is judged in order (fastscale.train.trainer.step_outcome); a record is made
        for the log step and for every step that was not "ok" (skipped, or the one that stops the run,
        after which nothing is recorded)."""
        s = self.settings
        records = []
        for result, (loss, grad_norm) in zip(pending, self._read(pending)):
            outcome = step_outcome(loss, grad_norm, applied=result.applied, loss_scaling=self.ds.precision == "fp16", mode=s.nonfinite)
            totals.skips_in_a_row = totals.skips_in_a_row + 1 if outcome == "skipped" else 0
            totals.skipped += outcome == "skipped"
            stop = outcome == "stop" or totals.skips_in_a_row >= s.max_consecutive_skips
            if outcome == "ok" and result is not pending[-1]:
                continue
            records.append(self._record(result, loss, grad_norm, totals.skipped, noise))
            if stop:
                reason = stop_message(result.step, loss, grad_norm, applied=result.applied, skips=totals.skips_in_a_row, settings=s)
                return records, {"step": result.step, "reason": reason}
        return records, None

    def _record(self, result: StepResult, loss: float, grad_norm: float | None, skipped: int, noise: GradientNoiseScale) -> dict:
        record = {"step": result.step, "tokens": result.tokens, "loss": loss, "lr": result.lr, "grad_norm": grad_norm, "skipped_steps": skipped}
        if self.flops_per_token:
            record.update(flops=result.flops, pf_days=flops_to_pf_days(result.flops))
        if result.noise:
            # a NaN measurement would poison the moving average for the rest of the run
            usable = all(math.isfinite(v) for v in result.noise[:2])
            record.update(noise_scale=noise.update(*result.noise) if usable else None, noise_scale_raw=result.noise[:2],
                          noise_scale_batches=result.noise[2:])
        return record

    def _publish(self, records: list[dict], metrics) -> None:
        for record in records:
            if metrics:
                metrics.write(metrics_line(record))
            if self.monitor:
                self.monitor.write(record)
        if metrics:
            metrics.flush()

    def fit(self, *, resume: bool = False, callback: Callable[[dict], None] | None = None) -> dict:
        """Train to settings.steps (continuing from the newest complete checkpoint with resume=True).
        callback(record) runs on rank 0 after every step, before that step's checkpoint: on log steps
        with the record written to metrics.jsonl, on the others with what is known without waiting for
        the device (step, tokens, lr). Returns the summary (also summary.json)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._setup()
        try:
            return self._fit(resume, callback)
        finally:
            self.close()

    def _run_info(self) -> dict:
        return {
            **self.run_info,
            "deepspeed": self.ds.config,
            "train": dict(self.settings.__dict__),
            "world_size": self.world_size,
            "peak_lr": self.peak_lr,
            "peak_flops": self.peak,
            "peak_flops_source": self.peak_description,
            "n_params": self.n_params if self.n_params is not None else self.run_info.get("n_params"),
        }

    def _fit(self, resume: bool, callback) -> dict:
        import torch.distributed as dist

        s = self.settings
        torch.manual_seed(s.seed + 1000 * self.rank)  # dropout streams differ per rank, reproducibly
        state = self._resume() if resume else None
        totals = Totals.from_state(state)
        noise = GradientNoiseScale(s.noise_scale_ema)
        if state:
            noise.load_state_dict(state["noise"])
        self._write_json("config.json", self._run_info())
        if self.ds.choice.stage == 3 and s.noise_scale_interval:
            logger.warning("gradient noise scale is not measured under ZeRO stage 3 (parameters are partitioned)")
        metrics = self._open_metrics()
        batches = iter(self._loader(totals.step))
        last_eval, loss_value, stopped, pending = None, None, None, []
        window = Window(totals.tokens)
        try:
            for step in range(totals.step, s.steps):
                t0 = time.perf_counter()
                measured = self._measure_noise(step) if self._noise_due(step) else None
                pending.append(self._step(step, batches, totals, measured))
                done = totals.step
                if self._is_log_step(done):
                    records, stopped = self._settle(pending, totals, noise)
                    pending = []
                    loss_value = records[-1]["loss"]
                    if not stopped and self._eval_due(done):
                        records[-1]["eval_loss"] = last_eval = self.evaluate()
                seconds = time.perf_counter() - t0
                window.seconds += seconds
                totals.elapsed += seconds
                if pending:
                    if callback and self.rank == 0:
                        callback({"step": done, "tokens": totals.tokens, "lr": pending[-1].lr})
                    continue
                window.close(records[-1], totals, self.flops_per_token, self.peak)
                self._publish(records, metrics)
                if callback and self.rank == 0:
                    callback(records[-1])
                if stopped:
                    break  # before any checkpoint: the state after that step is not to be resumed from
                if s.checkpoint_interval and (done % s.checkpoint_interval == 0 or done == s.steps):
                    self.save_checkpoint(done, totals.state(noise))
        finally:
            batches = None  # ends the loader's workers
            if metrics:
                metrics.close()
        summary = {
            "steps": s.steps,
            "tokens": totals.tokens,
            "flops": totals.flops,
            "pf_days": flops_to_pf_days(totals.flops),
            "final_loss": loss_value,
            "final_eval_loss": last_eval,
            "elapsed_s": totals.elapsed,
            "tokens_per_s": totals.tokens / totals.elapsed if totals.elapsed else None,
            "noise_scale": noise.b_simple,
            "peak_rss_bytes": peak_rss_bytes(),
            "peak_flops_source": self.peak_description,
            "skipped_steps": totals.skipped,
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
