"""What a batch costs the training process with the Trainer's DataLoader (fastscale.train.loader):
collated in the process (0 workers) or collated ahead by a worker and handed over (1 worker).

    OMP_NUM_THREADS=2 python benchmarks/bench_loader.py [--shapes 8x386,64x1544] [--batches 100] [--json out.json]

For each micro-batch shape (rows x tokens of the bundled digits, packed by PackedRows) the process
takes --batches batches in turn with 0 and 1 workers, twice, and times each `next()`: the time the
training process is held up by its data. Between two batches it either computes (a float32 matmul of
about a small training step's length on its own threads: a CPU run, where the worker's process shares
the cores) or sleeps as long (a run on a GPU, where the process waits on the device and the cores are
free). Reported: the median `next()` of each, and the worker's ratio to collating in the process
(below 1: the worker saves the training process time). This is what `worker_count`'s default rests on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import describe_environment, environment, format_table, write_json  # noqa: E402

from fastscale.data import PackedRows, collate, load  # noqa: E402
from fastscale.train.loader import Layout, StepSampler, batch_loader  # noqa: E402

WORKERS = (0, 1)


def between_batches(mode: str, seconds: float):
    """The work between two batches: a matmul loop of about `seconds`, or a sleep as long."""
    if mode == "sleep":
        return lambda: time.sleep(seconds)
    a = torch.randn(256, 256)
    t0 = time.perf_counter()
    a @ a
    repeats = max(1, round(seconds / (time.perf_counter() - t0)))

    def compute():
        for _ in range(repeats):
            a @ a

    return compute


def next_seconds(rows: PackedRows, micro: int, workers: int, batches: int, work) -> list[float]:
    """Seconds of each next() over `batches` micro-batches (the first, which starts the workers, left out)."""
    layout = Layout(len(rows), 0, micro, micro, 1, 1, 0)
    loader = iter(batch_loader(rows, StepSampler(layout, 0, batches + 1), collate, workers=workers, prefetch=2, pin_memory=False, seed=0))
    next(loader)
    seconds = []
    for _ in range(batches):
        work()
        t0 = time.perf_counter()
        next(loader)
        seconds.append(time.perf_counter() - t0)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8x386,64x386,64x1544,256x1544", help="micro-batches as ROWSxTOKENS, comma-separated")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--between-ms", type=float, default=30.0, help="the work (or sleep) between two batches")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    env = environment()
    print(describe_environment(env))
    print(f"torch threads {torch.get_num_threads()}, {args.batches} batches per measurement, {args.between_ms:g} ms between batches")
    train, _ = load({"dataset": "digits"})
    table, results = [], []
    for shape in args.shapes.split(","):
        micro, tokens = (int(v) for v in shape.split("x"))
        rows = PackedRows(train, tokens)
        for mode in ("compute", "sleep"):
            work = between_batches(mode, args.between_ms / 1e3)
            seconds = {w: [] for w in WORKERS}
            for _ in range(2):  # in turn, so that a shared machine's changing load falls on both
                for w in WORKERS:
                    seconds[w] += next_seconds(rows, micro, w, args.batches, work)
            median = {w: statistics.median(s) * 1e3 for w, s in seconds.items()}
            table.append([shape, mode, f"{median[0]:.2f}", f"{median[1]:.2f}", f"{median[1] / median[0]:.2f}x"])
            results.append({"rows": micro, "tokens": tokens, "between": mode, "median_ms": median, "seconds": seconds})
    print(format_table(["micro-batch", "between batches", "0 workers: next() ms", "1 worker: next() ms", "worker / in process"], table))
    if args.json:
        write_json(args.json, {"environment": env, "batches": args.batches, "between_ms": args.between_ms, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
