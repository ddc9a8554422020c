"""Tokens/s of fastscale's DeepSpeed Trainer against a plain PyTorch loop on the same GPT, the same
packed batches, torch AdamW, warmup+cosine and gradient clipping 1.0, in one process.

    OMP_NUM_THREADS=2 python benchmarks/bench_trainer.py [--params 1e6] [--steps 40] [--json out.json]

Three loops: the Trainer (which steps torch's fused AdamW), the plain loop with torch's default AdamW
(as nanoGPT builds it on a CPU) and the plain loop with the fused AdamW, which shows how much of the
difference is the optimizer. They take turns in blocks of --log-interval steps (the plain blocks run
in the Trainer's callback at its log steps, in alternating order): each loop runs back to back as it
would alone, while a shared machine's changing load falls on all three. Every step is timed: a
Trainer step is the time between two calls of its callback (data, step and bookkeeping included).
Tokens/s is reported from the total time of the steps after --warmup and from the median step (robust
to the stalls of a shared machine). On a CPU the Trainer makes glibc keep the memory a step frees
(fastscale.train.trainer.keep_freed_host_memory); the setting is process-wide, so the plain loops here
run with it too and the ratio measures the Trainer's own overhead. Goal: Trainer >= 1.0x the plain
loop with the default AdamW. The Trainer collates its batches in the training process on a CPU, as
the plain loops do (its default there); with --data-workers 1 a DataLoader worker collates them ahead
and hands them over, which costs these small batches more time than it saves (bench_loader.py).
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
from harness import describe_environment, environment, format_table, has_gpu, write_json  # noqa: E402

from fastscale.io import read_metrics  # noqa: E402
from fastscale.data import PackedRows, collate, load, rows_for  # noqa: E402
from fastscale.model import GPT, GPTConfig  # noqa: E402
from fastscale.train import Trainer, TrainSettings, lr_multiplier  # noqa: E402
from fastscale.train.loader import worker_count  # noqa: E402


class PlainLoop:
    """The same training step in plain PyTorch: AdamW (torch's default implementation, or fused), warmup+cosine,
    clipping at 1.0."""

    def __init__(self, config: GPTConfig, rows: PackedRows, settings: TrainSettings, batch: int, *, fused: bool) -> None:
        torch.manual_seed(settings.seed)
        self.model, self.rows, self.settings, self.batch, self.step_index, self.losses = GPT(config), rows, settings, batch, 0, []
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, eps=settings.eps, fused=fused or None)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, total_steps=settings.steps, warmup_steps=settings.warmup_steps, decay=settings.decay, min_lr_ratio=settings.min_lr_ratio)
        )

    def step(self) -> float:
        """One step; -> its seconds (its loss goes to self.losses)."""
        t0 = time.perf_counter()
        indices = rows_for(len(self.rows), self.settings.seed, self.step_index * self.batch, self.batch)
        data = collate([self.rows[int(i)] for i in indices])
        loss = self.model(data["idx"], data["targets"], cu_seqlens=data["cu_seqlens"], max_seqlen=data["max_seqlen"], positions=data["positions"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.losses.append(loss.item())
        self.step_index += 1
        return time.perf_counter() - t0


PLAIN_LOOPS = {"plain": False, "plain_fused": True}  # name -> AdamW fused


def compare(config: GPTConfig, rows: PackedRows, settings: TrainSettings, batch: int) -> tuple[dict[str, list[float]], dict[str, float], dict]:
    """-> (seconds of every step of each loop, each plain loop's largest loss difference from the Trainer at
    its logged steps, the Trainer's own records by step). The plain loops run a block of log_interval
    steps at each of the Trainer's log steps, taking turns at going first."""
    loops = {name: PlainLoop(config, rows, settings, batch, fused=fused) for name, fused in PLAIN_LOOPS.items()}
    times = {"trainer": [], **{name: [] for name in loops}}
    since = [None]  # when the Trainer's current step began: the end of the previous callback

    def after_trainer_step(record: dict) -> None:
        if since[0] is not None:
            times["trainer"].append(time.perf_counter() - since[0])
        if record["step"] % settings.log_interval == 0:
            order = list(loops) if record["step"] // settings.log_interval % 2 else list(reversed(loops))
            for name in order:
                times[name] += [loops[name].step() for _ in range(settings.log_interval)]
        since[0] = time.perf_counter()

    torch.manual_seed(settings.seed)
    model = GPT(config)
    ds = {"train_batch_size": batch, "train_micro_batch_size_per_gpu": batch, "gradient_clipping": 1.0, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, ds, rows, out_dir=out, collate_fn=collate, settings=settings, flops_per_token=config.flops_per_token())
        trainer.fit(callback=after_trainer_step)
        records = {r["step"]: r for r in read_metrics(Path(out) / "metrics.jsonl").records}
    differences = {name: max(abs(r["loss"] - loop.losses[step - 1]) for step, r in records.items()) for name, loop in loops.items()}
    return times, differences, records


def throughput(step_seconds: list[float], tokens_per_step: int) -> dict:
    """tokens/s from the total time and from the median step."""
    return {"tokens_per_s": tokens_per_step * len(step_seconds) / sum(step_seconds), "median_tokens_per_s": tokens_per_step / statistics.median(step_seconds)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1e6, help="non-embedding parameters (GPTConfig.from_params, head_dim 32)")
    parser.add_argument("--seq-len", type=int, default=386)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the throughput (a multiple of --log-interval)")
    parser.add_argument("--log-interval", type=int, default=10, help="the Trainer's train.log_interval")
    parser.add_argument("--data-workers", type=int, help="the Trainer's train.data_workers (default: the Trainer's, none on a CPU)")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    env = environment()
    print(describe_environment(env))
    train, _ = load({"dataset": "digits"})
    rows = PackedRows(train, args.seq_len)
    config = GPTConfig.from_params(args.params, train.vocab_size, args.seq_len, head_dim=32)
    if args.warmup % args.log_interval or args.steps <= args.warmup:
        parser.error(f"--warmup={args.warmup}: expected a multiple of --log-interval={args.log_interval} below --steps={args.steps}")
    workers = worker_count(args.data_workers, torch.device("cuda" if has_gpu() else "cpu"))
    settings = TrainSettings(steps=args.steps, warmup_steps=5, lr=3e-3, noise_scale_interval=0, eval_interval=0, checkpoint_interval=0,
                             log_interval=args.log_interval, data_workers=args.data_workers)
    print(f"GPT n_layer={config.n_layer} d_model={config.d_model} n_head={config.n_head} (N={config.n_params:,}), "
          f"batch {args.batch} x {args.seq_len} tokens, {args.steps} steps ({args.warmup} warm-up), log interval {args.log_interval}, "
          f"data workers {workers}, torch threads {torch.get_num_threads()}")
    times, differences, records = compare(config, rows, settings, args.batch)
    tokens = args.batch * args.seq_len
    # the Trainer's first timed step is its second (its first began inside fit, with the set-up)
    measured = {**{name: throughput(times[name][args.warmup:], tokens) for name in PLAIN_LOOPS},
                "trainer": throughput(times["trainer"][args.warmup - 1:], tokens)}
    plain = measured["plain"]
    names = {"plain": "plain PyTorch loop (torch AdamW, default implementation)", "plain_fused": "plain PyTorch loop (torch AdamW, fused)",
             "trainer": f"fastscale Trainer (DeepSpeed ZeRO-0, 1 rank, fused AdamW, {workers} data worker(s))"}
    table = [[names[name], f"{m['tokens_per_s']:,.0f}", f"{m['tokens_per_s'] / plain['tokens_per_s']:.3f}x",
              f"{m['median_tokens_per_s']:,.0f}", f"{m['median_tokens_per_s'] / plain['median_tokens_per_s']:.3f}x"] for name, m in measured.items()]
    print(format_table(["loop", "tokens/s (total time)", "vs plain", "tokens/s (median step)", "vs plain"], table))
    first, last = records[args.warmup], records[args.steps]
    own = (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])
    print(f"The Trainer's own records say {own:,.0f} tokens/s over the same steps. Largest loss difference at the logged steps: "
          f"{differences['plain_fused']:.2e} from the plain loop with the fused AdamW (the same operations: expected 0), "
          f"{differences['plain']:.2e} from the default AdamW (rounding apart)")
    if args.json:
        write_json(args.json, {"environment": env, "config": config.to_dict(), "batch": args.batch, "log_interval": args.log_interval,
                               "data_workers": workers, "warmup": args.warmup, "step_seconds": times, "loss_differences": differences,
                               "throughput": measured, "trainer_records_tokens_per_s": own})
    return 0


if __name__ == "__main__":
    sys.exit(main())
