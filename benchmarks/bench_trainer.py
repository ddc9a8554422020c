"""Tokens/s of fastscale's DeepSpeed Trainer against a plain PyTorch loop on the same GPT, the same
packed batches, the same optimizer (torch AdamW, warmup+cosine, gradient clipping 1.0), one process.

    OMP_NUM_THREADS=2 python benchmarks/bench_trainer.py [--params 1e6] [--steps 30] [--json out.json]

The two loops run interleaved step for step (the machine may be shared), each timed on its own. Goal: Trainer >= 0.9x the plain loop.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import describe_environment, environment, format_table, write_json  # noqa: E402

from fastscale.io import read_metrics  # noqa: E402
from fastscale.data import PackedRows, collate, load, rows_for  # noqa: E402
from fastscale.model import GPT, GPTConfig  # noqa: E402
from fastscale.train import Trainer, TrainSettings, lr_multiplier  # noqa: E402


class PlainLoop:
    """The same training step in plain PyTorch: AdamW, warmup+cosine, clipping at 1.0."""

    def __init__(self, config: GPTConfig, rows: PackedRows, settings: TrainSettings, batch: int) -> None:
        torch.manual_seed(settings.seed)
        self.model, self.rows, self.settings, self.batch, self.step_index = GPT(config), rows, settings, batch, 0
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, eps=settings.eps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, total_steps=settings.steps, warmup_steps=settings.warmup_steps, decay=settings.decay, min_lr_ratio=settings.min_lr_ratio)
        )

    def step(self) -> tuple[float, float]:
        """-> (seconds, loss) of one step."""
        t0 = time.perf_counter()
        indices = rows_for(len(self.rows), self.settings.seed, self.step_index * self.batch, self.batch)
        data = collate([self.rows[int(i)] for i in indices])
        loss = self.model(data["idx"], data["targets"], cu_seqlens=data["cu_seqlens"], max_seqlen=data["max_seqlen"], positions=data["positions"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        value = loss.item()
        self.step_index += 1
        return time.perf_counter() - t0, value


def compare(config: GPTConfig, rows: PackedRows, settings: TrainSettings, batch: int, warmup: int) -> dict:
    """Trainer steps and plain steps interleaved one for one (the plain step runs in the Trainer's
    per-step callback, outside the Trainer's own timing), so both see the same machine load."""
    plain = PlainLoop(config, rows, settings, batch)
    plain_times, plain_losses = [], []

    def after_trainer_step(record: dict) -> None:
        seconds, loss = plain.step()
        plain_times.append(seconds)
        plain_losses.append(loss)

    torch.manual_seed(settings.seed)
    model = GPT(config)
    ds = {"train_batch_size": batch, "train_micro_batch_size_per_gpu": batch, "gradient_clipping": 1.0, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, ds, rows, out_dir=out, collate_fn=collate, settings=settings, flops_per_token=config.flops_per_token())
        trainer.fit(callback=after_trainer_step)
        records = read_metrics(Path(out) / "metrics.jsonl").records
    tokens = batch * config.seq_len
    trainer_times = [tokens / r["tokens_per_s"] for r in records]  # the Trainer's own timing of each step
    steady = slice(warmup, None)
    return {
        "trainer_tokens_per_s": tokens * len(trainer_times[steady]) / sum(trainer_times[steady]),
        "plain_tokens_per_s": tokens * len(plain_times[steady]) / sum(plain_times[steady]),
        "per_step_ratio_median": statistics.median(p / t for p, t in zip(plain_times[steady], trainer_times[steady])),
        "trainer_step_s": trainer_times,
        "plain_step_s": plain_times,
        "max_loss_difference": max(abs(r["loss"] - l) for r, l in zip(records, plain_losses)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1e6, help="non-embedding parameters (GPTConfig.from_params, head_dim 32)")
    parser.add_argument("--seq-len", type=int, default=386)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    env = environment()
    print(describe_environment(env))
    train, _ = load({"dataset": "digits"})
    rows = PackedRows(train, args.seq_len)
    config = GPTConfig.from_params(args.params, train.vocab_size, args.seq_len, head_dim=32)
    settings = TrainSettings(steps=args.steps, warmup_steps=5, lr=3e-3, noise_scale_interval=0, eval_interval=0, checkpoint_interval=0)
    print(f"GPT n_layer={config.n_layer} d_model={config.d_model} n_head={config.n_head} (N={config.n_params:,}), "
          f"batch {args.batch} x {args.seq_len} tokens, {args.steps} steps ({args.warmup} warm-up), torch threads {torch.get_num_threads()}")
    result = compare(config, rows, settings, args.batch, args.warmup)
    ratio = result["trainer_tokens_per_s"] / result["plain_tokens_per_s"]
    table = [
        ["plain PyTorch loop", f"{result['plain_tokens_per_s']:,.0f}", "1.00x"],
        ["fastscale Trainer (DeepSpeed ZeRO-0, 1 rank)", f"{result['trainer_tokens_per_s']:,.0f}", f"{ratio:.2f}x"],
    ]
    print(format_table(["loop", "tokens/s", "vs plain"], table))
    print(f"median per-step ratio {result['per_step_ratio_median']:.2f}x; largest loss difference between the two loops "
          f"{result['max_loss_difference']:.2e} (same model, data, optimizer: the curves should agree)")
    if args.json:
        write_json(args.json, {"environment": env, "config": config.to_dict(), "batch": args.batch, **result, "ratio": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
