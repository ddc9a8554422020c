"""What `deepspeed train.py` runs: a run config and a DeepSpeed config become a GPT, packed data (train
and held-out rows under the run's "packing", fastscale.data.packing) and a Trainer. `build_run` is the
library part (checks everything before any work starts); `main` is the command line (arguments,
progress bar, printing)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import signal
import sys

import torch

from fastscale.data import collate, load
from fastscale.data.packing import has_rows, pack_rows
from fastscale.model import GPT, GPTConfig

from .config import ConfigError, DeepSpeedSettings, RunConfig
from .checkpoint import CheckpointError, complete_tags, tag_for
from .trainer import NonFiniteError, Trainer

logger = logging.getLogger(__name__)


def model_config(run: RunConfig, vocab_size: int) -> GPTConfig:
    """The GPT shape of a run: explicit GPTConfig fields, or {"params": N, ...} through from_params."""
    options = dict(run.model)
    for key in ("vocab_size", "seq_len"):
        if key in options:
            raise ConfigError(f"run config: model.{key} is set by the data and the run's seq_len; remove it")
    try:
        if "params" in options:
            return GPTConfig.from_params(float(options.pop("params")), vocab_size, run.seq_len, **options)
        return GPTConfig(vocab_size=vocab_size, seq_len=run.seq_len, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"run config: model={run.model!r}: {error}") from None


def build_run(run: RunConfig | dict | str, deepspeed_config, out_dir, *, memory_check: bool = True) -> Trainer:
    """Check the configs (the DeepSpeed config once: the Trainer gets its DeepSpeedSettings), load the
    data, build the model and return a ready Trainer."""
    if not isinstance(run, RunConfig):
        run = RunConfig.from_dict(run) if isinstance(run, dict) else RunConfig.load(run)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ds = DeepSpeedSettings.parse(deepspeed_config, world_size)
    train_shard, val_shard = load(run.data)
    config = model_config(run, train_shard.vocab_size)
    try:
        train_rows = pack_rows(train_shard, run.seq_len, run.packing)
        val_rows = pack_rows(val_shard, run.seq_len, run.packing) if has_rows(val_shard, run.seq_len, run.packing) else None
    except ValueError as error:
        raise ConfigError(f"run config: seq_len={run.seq_len}, packing={run.packing!r}: {error}") from None
    if val_rows is None:
        logger.warning("no held-out rows of seq_len=%d: evaluation is off", run.seq_len)
    if memory_check:
        from .plan import check_fits

        check_fits(config, ds)
    torch.manual_seed(run.train.seed)  # identical initial weights on every rank
    if ds.precision == "bf16":
        # built in bf16 directly: DeepSpeed would cast it anyway, and a billion-parameter model never
        # holds an fp32 copy in memory on the way
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = GPT(config)
        finally:
            torch.set_default_dtype(default)
    else:
        model = GPT(config)
    info = {
        "run": run.to_dict(),
        "model": config.to_dict(),
        "n_params": config.n_params,
        "n_params_exact": config.n_params_exact,
        "n_params_total": config.n_params_total,
        "flops_per_token": config.flops_per_token(),
        "data": {"train": {k: v for k, v in train_shard.meta.items()}, "val": {k: v for k, v in val_shard.meta.items()}, "train_rows": len(train_rows)},
    }
    return Trainer(
        model,
        ds,
        train_rows,
        out_dir=out_dir,
        val_data=val_rows,
        collate_fn=collate,
        settings=run.train,
        flops_per_token=config.flops_per_token(),
        n_params=config.n_params,
        checkpoint_modules=list(model.blocks),
        run_info=info,
        monitor=run.monitor,
    )


def set_cpu_threads() -> int | None:
    """On a machine without a GPU and with OMP_NUM_THREADS unset, one intra-op thread per rank; returns
    the count set, or None when left alone. torch's default, one thread per core, lets the threads of
    one rank (or of ranks and other processes) wait on each other: the tiny config trained 60 steps
    in 23 s with one thread and in 77-121 s with torch's default of two on a 2-core machine with other
    work running (fastscale 0.1.0, torch 2.13)."""
    if "OMP_NUM_THREADS" in os.environ or torch.cuda.is_available():
        return None
    torch.set_num_threads(1)
    return 1


def program() -> list[str]:
    """How this process was started, for the resume hint: `python train.py`, or `fastscale train`
    (the same arguments) when started otherwise (the console script, a sweep's trainer process)."""
    return ["python", sys.argv[0]] if sys.argv[0].endswith(".py") else ["fastscale", "train"]


def resume_command(command_line: list[str]) -> str:
    """The command that continues a run: the one that started it, with --resume and without the
    launcher's --local_rank. Under DeepSpeed's launcher the launcher's own options are not known here."""
    words, skip = [], False
    for word in command_line:
        if skip or word.startswith(("--local_rank", "--local-rank")):
            skip = word in ("--local_rank", "--local-rank")  # its value is the next word
            continue
        words.append(word)
    if "--resume" not in words:
        words.append("--resume")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        script = words[1:] if words[0] == "python" else words
        return "deepspeed <launcher options> " + shlex.join(script)
    return shlex.join(words)


def parser() -> argparse.ArgumentParser:
    from fastscale.cli import HelpFormatter

    p = argparse.ArgumentParser(description="Train a GPT of the fastscale family with DeepSpeed: deepspeed train.py --config RUN.json "
                                            "--deepspeed_config DS.json --out DIR", formatter_class=HelpFormatter)
    from .command import add_train_arguments

    add_train_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.command_line = [*program(), *argv]
    return run(args)


class Progress:
    """Rank 0's view of the loop: the progress bar (unless --no-progress), the last step done, and
    the checkpoint a --resume continued from, told once (the first step after it is the checkpoint's
    step + 1)."""

    def __init__(self, total_steps: int, *, bar: bool, resume: bool, checkpoints) -> None:
        self.total_steps, self.show_bar, self.resume, self.checkpoints = total_steps, bar, resume, checkpoints
        self.bar, self.step, self.interrupted = None, None, False

    def interrupt(self, signum, frame) -> None:
        """The SIGINT handler during the run: KeyboardInterrupt, remembered, because Python drops one
        raised while a finalizer runs ("Exception ignored in ..."); the next step raises it again."""
        self.interrupted = True
        raise KeyboardInterrupt

    def __call__(self, record: dict) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        if self.step is None and self.resume and record["step"] > 1:
            self.say(f"resumed from checkpoint {self.checkpoints / tag_for(record['step'] - 1)} (step {record['step'] - 1})")
        if self.step is None and self.show_bar:
            from tqdm import tqdm

            # initial: the resumed step, so that the rate counts this process's steps only
            self.bar = tqdm(total=self.total_steps, initial=record["step"] - 1, unit="step", dynamic_ncols=True)
        self.step = record["step"]
        if self.bar is not None:
            if "loss" in record:  # a log step's record; the others carry step, tokens and lr only
                self.bar.set_postfix(progress_postfix(record), refresh=False)
            self.bar.update(1)

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_postfix(record: dict) -> dict:
    postfix = {"loss": "non-finite" if record["loss"] is None else f"{record['loss']:.4f}"}
    if record.get("tokens_per_s"):
        postfix["tok/s"] = f"{record['tokens_per_s']:.0f}"
    if record.get("eval_loss") is not None:
        postfix["eval"] = f"{record['eval_loss']:.4f}"
    return postfix


def interrupted_message(progress: Progress | None, command: str) -> str:
    """The one line a Ctrl-C leaves: where the run stopped, where --resume will continue from."""
    if progress is None or progress.step is None:
        return f"interrupted before the first step; resume with: {command}"
    newest = complete_tags(progress.checkpoints) if progress.checkpoints.is_dir() else []
    continues = f"newest checkpoint: step {newest[-1][0]}" if newest else "no checkpoint yet, so --resume starts over"
    return f"interrupted at step {progress.step} ({continues}); resume with: {command}"


def run(args: argparse.Namespace) -> int:
    """The command line's training run (fastscale train, train.py): prints, exits 130 on Ctrl-C."""
    logging.basicConfig(level=logging.INFO if os.environ.get("FASTSCALE_VERBOSE") else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.deepspeed_config:
        print("error: --deepspeed_config DS.json is required (see configs/ds/)", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    progress = None
    try:
        try:
            run_config = RunConfig.load(args.config)
            if args.steps is not None:
                run_config.train.steps = args.steps
                run_config.train.__post_init__()
            trainer = build_run(run_config, args.deepspeed_config, args.out)
        except (ConfigError, FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        threads = set_cpu_threads()  # after the checks: a refused config prints its error alone
        if threads and rank == 0:
            print(f"OMP_NUM_THREADS is unset: training with {threads} thread per rank (set OMP_NUM_THREADS to choose)", file=sys.stderr)
        progress = Progress(run_config.train.steps, bar=not args.no_progress, resume=args.resume, checkpoints=trainer.ckpt_dir)
        previous = signal.signal(signal.SIGINT, progress.interrupt)
        try:
            summary = _fit(trainer, progress, args.resume)
        finally:
            signal.signal(signal.SIGINT, previous)
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        if rank == 0:
            command = resume_command(getattr(args, "command_line", None) or [*program(), *sys.argv[1:]])
            print("\n" + interrupted_message(progress, command), file=sys.stderr)
        return 130
    if summary is None:
        return 1
    if args.resume and progress.step is None:  # the checkpoint was at or past the last step: nothing left to train
        step, tag = complete_tags(trainer.ckpt_dir)[-1]
        progress.say(f"resumed from checkpoint {trainer.ckpt_dir / tag} (step {step}): nothing left to train")
    if rank == 0:
        loss = summary["final_loss"]
        print(
            f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, {summary['flops']:.3g} FLOPs "
            f"({summary['pf_days']:.3g} PF-days), loss {loss if loss is None else round(loss, 4)}, eval loss "
            f"{summary['final_eval_loss'] if summary['final_eval_loss'] is None else round(summary['final_eval_loss'], 4)}, "
            f"{summary['tokens_per_s'] or 0:.0f} tokens/s; run directory {args.out}"
        )
    return 0


def _fit(trainer: Trainer, progress: Progress, resume: bool) -> dict | None:
    """The summary, or None after an error line (a diverged run, a bad checkpoint, a full disk)."""
    try:
        return trainer.fit(resume=resume, callback=progress)
    except (NonFiniteError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(f"error: {error}", file=sys.stderr)
        return None
    finally:
        progress.close()
