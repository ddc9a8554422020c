"""Benchmark: the 4,500-start Chinchilla fit on Epoch AI's data, batched against a plain scipy loop.

    python -m fastscale.fit.benchmark [--data CSV] [--baseline-starts K] [--repeats R] [--json]

The baseline is what the published notebooks do: scipy L-BFGS-B from each grid start in a Python
loop (here with the same analytic gradient, which is faster than the notebooks' autograd), keeping the
best. Both must reach the same optimum; the ratio is the time of the loop over the batched fit.
Torch-free like the rest of fastscale.fit (so it does not use the kernel harness, which imports torch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.optimize import minimize

from fastscale.fit.chinchilla import HUBER_DELTA, chinchilla_grid, fit_chinchilla, huber_objective
from fastscale.fit.io import column, drop_highest_loss, read_table

DEFAULT_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "scaling" / "chinchilla-epoch" / "svg_extracted_data.csv"


def environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def _cpuinfo():
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def load_epoch(path) -> tuple:
    table = read_table(path)
    n = column(table, "Model Size", option="--data")
    c = column(table, "Training FLOP", option="--data")
    loss = column(table, "loss", option="--data")
    keep = drop_highest_loss(loss, 5)
    return n[keep], c[keep] / (6 * n[keep]), loss[keep]


def scipy_loop(n, d, loss, starts) -> tuple:
    """The notebooks' procedure: one L-BFGS-B per start (scipy defaults), best objective wins."""
    batched = huber_objective(np.log(n), np.log(d), np.log(loss), delta=HUBER_DELTA)
    one_row = np.zeros(1, dtype=int)

    def objective(theta):
        value, gradient = batched(theta[None], one_row)
        return value[0], gradient[0]

    best = None
    with np.errstate(over="ignore", invalid="ignore"):
        for start in starts:
            result = minimize(objective, start, jac=True, method="L-BFGS-B")
            if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
                best = result
    a, b, e, alpha, beta = best.x
    return float(best.fun), {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}


def run(data, baseline_starts: int | None, repeats: int) -> dict:
    n, d, loss = load_epoch(data)
    grid = chinchilla_grid()
    batched_times, batched_cpu = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fit = fit_chinchilla(n, d, loss, n_bootstrap=0)
        batched_times.append(time.perf_counter() - wall)
        batched_cpu.append(time.process_time() - cpu)
    starts = grid if baseline_starts is None else grid[np.linspace(0, len(grid) - 1, baseline_starts).astype(int)]
    wall, cpu = time.perf_counter(), time.process_time()
    loop_objective, loop_params = scipy_loop(n, d, loss, starts)
    loop_time, loop_cpu = time.perf_counter() - wall, time.process_time() - cpu
    scale = len(grid) / len(starts)  # extrapolates when only a subset of starts was run
    batched = min(batched_times)
    names = ("E", "A", "B", "alpha", "beta")
    return {
        "environment": environment(),
        "problem": {"points": len(loss), "starts": len(grid), "params": 5, "huber_delta": HUBER_DELTA},
        "batched": {
            "seconds": batched,
            "cpu_seconds": min(batched_cpu),
            "all_seconds": batched_times,
            "objective": fit.objective,
            "params": {k: float(fit.params[k]) for k in names},
        },
        "scipy_loop": {
            "seconds_measured": loop_time,
            "starts_run": len(starts),
            "seconds_for_4500_starts": loop_time * scale,
            "cpu_seconds_for_4500_starts": loop_cpu * scale,
            "extrapolated": len(starts) < len(grid),
            "objective": loop_objective,
            "params": {k: float(v) for k, v in loop_params.items()},
        },
        # On a shared machine wall time moves with the neighbours' load; CPU time much less.
        "speedup": loop_time * scale / batched,
        "speedup_cpu": loop_cpu * scale / min(batched_cpu),
        "objective_rel_difference": (loop_objective - fit.objective) / fit.objective,
    }


def format_report(report: dict) -> str:
    env, problem, batched, loop = report["environment"], report["problem"], report["batched"], report["scipy_loop"]
    lines = [
        f"fastscale bench fit: {env['cpu']} ({env['cores']} cores), python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}",
        f"problem: Chinchilla approach 3 on Epoch's data, {problem['points']} points x {problem['starts']} starts x {problem['params']} params",
        f"{'':<30}{'wall s':>9}{'CPU s':>9}{'objective':>16}" + "".join(f"{k:>10}" for k in batched["params"]),
        f"{'batched L-BFGS + scipy polish':<30}{batched['seconds']:>9.2f}{batched['cpu_seconds']:>9.2f}{batched['objective']:>16.10g}"
        + "".join(f"{v:>10.4g}" for v in batched["params"].values()),
        f"{'scipy loop (L-BFGS-B per start)':<30}{loop['seconds_for_4500_starts']:>9.2f}{loop['cpu_seconds_for_4500_starts']:>9.2f}{loop['objective']:>16.10g}"
        + "".join(f"{v:>10.4g}" for v in loop["params"].values()),
    ]
    if loop["extrapolated"]:
        lines.append(f"(the loop ran {loop['starts_run']} evenly spaced starts in {loop['seconds_measured']:.2f} s; time scaled to 4,500)")
    lines.append(
        f"speed-up: {report['speedup']:.1f}x wall, {report['speedup_cpu']:.1f}x CPU;"
        f" objective of the loop minus batched, relative: {report['objective_rel_difference']:+.2e}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastscale bench fit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Epoch's svg_extracted_data.csv")
    parser.add_argument("--baseline-starts", type=int, default=None, metavar="K", help="run the loop on K evenly spaced starts and scale its time (default: all 4,500)")
    parser.add_argument("--repeats", type=int, default=3, help="batched fits to time (the fastest counts)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"fastscale bench fit: error: --data {args.data!r}: no such file (Epoch's data lives in ../shared/data/scaling)", file=sys.stderr)
        return 2
    report = run(args.data, args.baseline_starts, args.repeats)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
