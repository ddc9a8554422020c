"""Tokens/s of fastscale's DeepSpeed Trainer against a plain PyTorch loop on the same GPT, the same
packed batches, the same optimizer (torch AdamW, warmup+cosine, gradient clipping 1.0), one process.

    OMP_NUM_THREADS=2 python benchmarks/bench_trainer.py [--params 1e6] [--steps 40] [--json out.json]

The two loops run interleaved step for step (the machine may be shared): each plain step runs in the
Trainer's per-step callback, outside the Trainer's own timing. The Trainer is timed by its own records
(tokens and elapsed seconds at each log step), the plain loop per step over the same steps. Goal:
Trainer >= 1.0x the plain loop. With --data-workers 1 (the Trainer's default) a DataLoader worker
collates the Trainer's next batches while the step runs (it may also run during the interleaved plain
step); --data-workers 0 collates in the training process, as the plain loop does.
"""

from __future__ import annotations

import argparse
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
    """Trainer steps and plain steps interleaved one for one; throughput over the steps after warmup
    (a multiple of settings.log_interval, so that the Trainer's records bracket them)."""
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
        records = {r["step"]: r for r in read_metrics(Path(out) / "metrics.jsonl").records}
    tokens = batch * config.seq_len
    first, last = records[warmup], records[settings.steps]
    trainer_tokens_per_s = (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])
    plain_tokens_per_s = tokens * (settings.steps - warmup) / sum(plain_times[warmup:])
    return {
        "trainer_tokens_per_s": trainer_tokens_per_s,
        "plain_tokens_per_s": plain_tokens_per_s,
        "trainer_window_tokens_per_s": [records[s]["tokens_per_s"] for s in sorted(records) if s > warmup],
        "plain_step_s": plain_times,
        "max_loss_difference": max(abs(r["loss"] - plain_losses[s - 1]) for s, r in records.items()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1e6, help="non-embedding parameters (GPTConfig.from_params, head_dim 32)")
    parser.add_argument("--seq-len", type=int, default=386)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the throughput (a multiple of --log-interval)")
    parser.add_argument("--log-interval", type=int, default=10, help="the Trainer's train.log_interval")
    parser.add_argument("--data-workers", type=int, default=1, help="the Trainer's train.data_workers")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    env = environment()
    print(describe_environment(env))
    train, _ = load({"dataset": "digits"})
    rows = PackedRows(train, args.seq_len)
    config = GPTConfig.from_params(args.params, train.vocab_size, args.seq_len, head_dim=32)
    if args.warmup % args.log_interval or args.steps <= args.warmup:
        parser.error(f"--warmup={args.warmup}: expected a multiple of --log-interval={args.log_interval} below --steps={args.steps}")
    settings = TrainSettings(steps=args.steps, warmup_steps=5, lr=3e-3, noise_scale_interval=0, eval_interval=0, checkpoint_interval=0,
                             log_interval=args.log_interval, data_workers=args.data_workers)
    print(f"GPT n_layer={config.n_layer} d_model={config.d_model} n_head={config.n_head} (N={config.n_params:,}), "
          f"batch {args.batch} x {args.seq_len} tokens, {args.steps} steps ({args.warmup} warm-up), log interval {args.log_interval}, "
          f"data workers {args.data_workers}, torch threads {torch.get_num_threads()}")
    result = compare(config, rows, settings, args.batch, args.warmup)
    ratio = result["trainer_tokens_per_s"] / result["plain_tokens_per_s"]
    table = [
        ["plain PyTorch loop", f"{result['plain_tokens_per_s']:,.0f}", "1.00x"],
        [f"fastscale Trainer (DeepSpeed ZeRO-0, 1 rank, {args.data_workers} data worker(s))", f"{result['trainer_tokens_per_s']:,.0f}", f"{ratio:.2f}x"],
    ]
    print(format_table(["loop", "tokens/s", "vs plain"], table))
    windows = ", ".join(f"{rate:,.0f}" for rate in result["trainer_window_tokens_per_s"])
    print(f"Trainer tokens/s per log window: {windows}; largest loss difference between the two loops at the logged steps "
          f"{result['max_loss_difference']:.2e} (same model, data, optimizer: the curves should agree)")
    if args.json:
        write_json(args.json, {"environment": env, "config": config.to_dict(), "batch": args.batch, "log_interval": args.log_interval,
                               "data_workers": args.data_workers, **result, "ratio": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
