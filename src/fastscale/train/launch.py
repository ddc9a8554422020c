"""What `deepspeed train.py` runs: a run config and a DeepSpeed config become a GPT, packed data (train
and held-out rows under the run's "packing", fastscale.data.packing) and a Trainer. `build_run` is the
library part (checks everything before any work starts); `main` is the command line (arguments,
progress bar, printing)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

import torch

from fastscale.data import collate, load
from fastscale.data.packing import has_rows, pack_rows
from fastscale.model import GPT, GPTConfig

from .config import ConfigError, RunConfig, check_deepspeed_config, load_deepspeed_config
from .checkpoint import CheckpointError
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
    """Check the configs, load the data, build the model and return a ready Trainer."""
    if not isinstance(run, RunConfig):
        run = RunConfig.from_dict(run) if isinstance(run, dict) else RunConfig.load(run)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ds = check_deepspeed_config(load_deepspeed_config(deepspeed_config), world_size)
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

        check_fits(config, ds, world_size)
    torch.manual_seed(run.train.seed)  # identical initial weights on every rank
    if (ds.get("bf16") or {}).get("enabled"):
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
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a GPT of the fastscale family with DeepSpeed: deepspeed train.py --config RUN.json --deepspeed_config DS.json --out DIR")
    from .command import add_train_arguments

    add_train_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if os.environ.get("FASTSCALE_VERBOSE") else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.deepspeed_config:
        print("error: --deepspeed_config DS.json is required (see configs/ds/)", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    try:
        run = RunConfig.load(args.config)
        if args.steps is not None:
            run.train.steps = args.steps
            run.train.__post_init__()
        trainer = build_run(run, args.deepspeed_config, args.out)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    bar = None

    def progress(record: dict) -> None:
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=run.train.steps, initial=record["step"] - 1, unit="step", dynamic_ncols=True)
        postfix = {"loss": "non-finite" if record["loss"] is None else f"{record['loss']:.4f}"}
        if record.get("tokens_per_s"):
            postfix["tok/s"] = f"{record['tokens_per_s']:.0f}"
        if record.get("eval_loss") is not None:
            postfix["eval"] = f"{record['eval_loss']:.4f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)

    try:
        summary = trainer.fit(resume=args.resume, callback=progress)
    except (NonFiniteError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    if rank == 0:
        loss = summary["final_loss"]
        print(
            f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, {summary['flops']:.3g} FLOPs "
            f"({summary['pf_days']:.3g} PF-days), loss {loss if loss is None else round(loss, 4)}, eval loss "
            f"{summary['final_eval_loss'] if summary['final_eval_loss'] is None else round(summary['final_eval_loss'], 4)}, "
            f"{summary['tokens_per_s'] or 0:.0f} tokens/s; run directory {args.out}"
        )
    return 0
