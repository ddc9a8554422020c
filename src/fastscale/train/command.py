"""`fastscale plan` and `fastscale train`: the command line (prints)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from fastscale.io import write_json
from fastscale.tables import format_table

from .plan import GiB, MiB, deepspeed_config, no_fit_reason, parse_bytes, plan, vocabulary_bytes


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=float, required=True, help="non-embedding parameters N of the GPT preset (e.g. 1.3e9)")
    parser.add_argument("--memory", default="80GiB", help="memory per GPU, with a unit (ignored with --gpus 0)")
    parser.add_argument("--host-memory", help="host RAM per node (default: this machine's)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per node; 0 for a CPU-only machine (one rank)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes, each with --gpus GPUs and --host-memory RAM")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (activations scale with it)")
    parser.add_argument("--vocab-size", type=int, default=50304, help="vocabulary size (embedding and logits memory)")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per rank per micro-step")
    parser.add_argument("--fp32", action="store_true", help="plan for fp32 instead of bf16 mixed precision")
    parser.add_argument("--nvme-path", help="directory for ZeRO-Infinity offload to disk (enables the nvme choices)")
    parser.add_argument("--out", help="write the DeepSpeed config of the pick here")


def _vocabulary_line(config, micro_batch: int, *, bf16: bool) -> str:
    """What the vocabulary costs each choice below (before ZeRO partitions it), and the logits the fused loss avoids."""
    tokens = micro_batch * config.seq_len
    v = vocabulary_bytes(config.vocab_size, config.d_model, tokens, tie_embeddings=config.tie_embeddings, bf16=bf16)
    states = (v["weights"] + v["gradients"] + v["optimizer_state"]) / GiB
    return (f"vocabulary {config.vocab_size:,} x d_model {config.d_model}: weights, gradients and optimizer state {states:.2f} GiB (in the estimates); "
            f"the fused loss holds {v['fused_loss'] / MiB:,.0f} MiB per micro-batch of {tokens:,} tokens (counted) instead of eager logits' "
            f"{v['eager_loss'] / MiB:,.0f} MiB (not counted: {(v['eager_loss'] - v['fused_loss']) / MiB:,.0f} MiB avoided)")


def run_plan(args: argparse.Namespace) -> int:
    from fastscale.model import preset

    try:
        config = preset(args.params, vocab_size=args.vocab_size, seq_len=args.seq_len)
        memory = parse_bytes(args.memory, "--memory")
        host = parse_bytes(args.host_memory, "--host-memory") if args.host_memory else None
        disk = shutil.disk_usage(args.nvme_path).free if args.nvme_path and os.path.isdir(args.nvme_path) else None
        for name in ("gpus", "nodes", "micro_batch"):
            if getattr(args, name) < (0 if name == "gpus" else 1):
                raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}; expected a positive integer")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = plan(config, memory=memory, host=host, disk=disk, gpus=args.gpus, nodes=args.nodes, micro_batch=args.micro_batch, bf16=not args.fp32, allow_nvme=bool(args.nvme_path))
    print(f"GPT preset for N={args.params:.3g}: n_layer={config.n_layer} d_model={config.d_model} n_head={config.n_head}; "
          f"{config.n_params_total:,} parameters in all ({config.n_params:,} non-embedding)")
    print(_vocabulary_line(config, args.micro_batch, bf16=not args.fp32))
    print(format_table(["choice", "device GiB", "host GiB", "disk GiB", "fits"],
                       [[row["choice"].describe(), *(f"{row[place] / GiB:.1f}" for place in ("device", "host", "nvme")), "yes" if row["fits"] else "no"]
                        for row in rows]))
    pick = next((row for row in rows if row["fits"]), None)
    if pick is None:
        print(f"nothing fits: {no_fit_reason(rows)}" + ("" if args.nvme_path else " (pass --nvme-path DIR to consider it)"))
        return 1
    print(f"pick: {pick['choice'].describe()} (the fastest choice that fits)")
    if args.out:
        ds = deepspeed_config(pick["choice"], micro_batch=args.micro_batch, bf16=not args.fp32, nvme_path=args.nvme_path)
        write_json(args.out, ds, indent=2)
        print(f"wrote {args.out}")
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of train.py (torch-free, so the `fastscale` command line starts fast)."""
    p.add_argument("--config", required=True, help="run config (model, data, seq_len, train)")
    p.add_argument("--out", required=True, help="run directory: config.json, metrics.jsonl, checkpoints/, summary.json")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in OUT/checkpoints")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help="set by the launcher")
    # deepspeed.add_config_arguments' flags, declared here so that parsing needs no DeepSpeed import
    p.add_argument("--deepspeed", action="store_true", help="accepted for DeepSpeed's conventions (the engine is always DeepSpeed)")
    p.add_argument("--deepspeed_config", "--deepspeed-config", help="DeepSpeed config JSON: batch sizes, ZeRO stage, bf16, offload, activation checkpointing")


def run_train(args: argparse.Namespace) -> int:
    from .launch import run

    return run(args)
