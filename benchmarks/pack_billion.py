"""Pack billion-parameter GPTs onto this machine's memory with the planner's DeepSpeed config.

    python benchmarks/pack_billion.py                       # phase A: >= 1.0e9 non-embedding parameters
    python benchmarks/pack_billion.py --phase infinity --nvme-path /var/tmp/fs_nvme   # phase B: 3e9 via ZeRO-Infinity to disk

For each phase: the GPT preset for --params, the memory planner's pick for this machine (no GPU, its
RAM), the DeepSpeed config the planner writes, then `deepspeed --num_gpus 1 train.py` for --steps
optimizer steps on the bundled digits (seq_len 64, micro-batch 1), with the peak resident memory of the
rank measured (its ru_maxrss) and printed beside the planner's prediction (goal: within 20%), and the loss
of each step. Not a test: phase A needs ~16 GB of RAM and minutes; phase B ~50 GB of disk and longer.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import describe_environment, environment, format_table, write_json  # noqa: E402

from fastscale.io import read_json, read_metrics, write_atomically  # noqa: E402
from fastscale.model import preset  # noqa: E402
from fastscale.train.distributed import free_port  # noqa: E402
from fastscale.train.plan import GiB, deepspeed_config, host_memory, plan  # noqa: E402


def mem_available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("billion", "infinity"), default="billion")
    parser.add_argument("--params", type=float, help="non-embedding parameters (default 1e9 for billion, 3e9 for infinity)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--fp32", action="store_true", help="plan and train in fp32 (default for the billion phase)")
    parser.add_argument("--nvme-path", help="directory on a disk for ZeRO-Infinity (infinity phase)")
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    params = args.params or (1e9 if args.phase == "billion" else 3e9)
    fp32 = args.fp32 or args.phase == "billion"
    if args.phase == "infinity" and not args.nvme_path:
        parser.error("--phase infinity needs --nvme-path DIR")
    env = environment()
    print(describe_environment(env))
    config = preset(params, vocab_size=257, seq_len=args.seq_len)
    print(f"GPT preset N={params:.3g}: n_layer={config.n_layer} d_model={config.d_model} n_head={config.n_head}, "
          f"{config.n_params:,} non-embedding / {config.n_params_total:,} parameters in all")
    rows = plan(config, memory=0, gpus=0, micro_batch=1, bf16=not fp32, allow_nvme=bool(args.nvme_path))
    pick = next((row for row in rows if row["fits"]), None)
    print(format_table(["choice", "host GiB", "disk GiB", "fits"], [[r["choice"].describe(), f"{r['host'] / GiB:.1f}", f"{r['nvme'] / GiB:.1f}", "yes" if r["fits"] else "no"] for r in rows]))
    if pick is None:
        print("the planner finds nothing that fits this machine")
        return 1
    print(f"planner's pick: {pick['choice'].describe()}; predicted peak {pick['host'] / GiB:.2f} GiB of RAM, {pick['nvme'] / GiB:.1f} GiB on disk")
    work = Path(args.out or tempfile.mkdtemp(prefix="pack_billion_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.nvme_path:
        shutil.rmtree(args.nvme_path, ignore_errors=True)
        Path(args.nvme_path).mkdir(parents=True)
    ds = deepspeed_config(pick["choice"], micro_batch=1, bf16=not fp32, nvme_path=args.nvme_path, lr=1e-4)
    write_json(work / "ds.json", ds)
    run = {
        "model": {"n_layer": config.n_layer, "d_model": config.d_model, "n_head": config.n_head},
        "data": {"dataset": "digits"},
        "seq_len": args.seq_len,
        "train": {"steps": args.steps, "lr": 1e-4, "warmup_steps": 1, "eval_interval": 0, "checkpoint_interval": 0, "noise_scale_interval": 0},
    }
    write_json(work / "run.json", run)
    print(f"RAM available now: {mem_available() / GiB:.1f} GiB of {host_memory() / GiB:.1f} GiB")
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(free_port()),
               str(ROOT / "train.py"), "--config", str(work / "run.json"), "--deepspeed_config", str(work / "ds.json"),
               "--out", str(work / "run"), "--no-progress"]
    child_env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    child_env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "fastscale_torch_extensions"))
    print("$ " + " ".join(command))
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=child_env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # largest descendant's peak RSS
    write_atomically(work / "stdout.txt", result.stdout)
    write_atomically(work / "stderr.txt", result.stderr)
    if result.returncode != 0:
        print(f"the run failed ({result.returncode}) after {wall:.0f} s; last lines of its output:")
        print("\n".join((result.stdout + result.stderr).splitlines()[-25:]))
        return 1
    records = read_metrics(work / "run" / "metrics.jsonl").records
    summary = read_json(work / "run" / "summary.json", what="the trainer's summary")
    measured = max(peak_children, summary["peak_rss_bytes"])
    error = measured / pick["host"] - 1
    print(format_table(["step", "loss", "seconds"], [[str(r["step"]), f"{r['loss']:.4f}", f"{(r['tokens'] / r['step']) / r['tokens_per_s']:.1f}" if r.get("tokens_per_s") else "-"] for r in records]))
    print(f"peak RSS of the rank: measured {measured / GiB:.2f} GiB, planner predicted {pick['host'] / GiB:.2f} GiB ({error:+.0%}); "
          f"goal within 20%: {'met' if abs(error) <= 0.2 else 'missed'}; wall time {wall:.0f} s (DeepSpeed start-up included)")
    if args.json:
        write_json(args.json, {"environment": env, "params": params, "model": config.to_dict(), "choice": pick["choice"].describe(),
                               "predicted_bytes": pick["host"], "measured_peak_rss_bytes": measured, "losses": [r["loss"] for r in records], "wall_s": wall,
                               "deepspeed_config": ds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
