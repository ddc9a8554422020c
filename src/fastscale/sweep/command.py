"""`fastscale sweep` and `fastscale report`: the command line (prints, draws the progress bar)."""

from __future__ import annotations

import argparse
import itertools
import sys
import time

from .devices import DEFAULT_JOBS
from .spec import PRESETS


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="sweep directory (results.json, runs/, data/, report); rerun to resume")
    p.add_argument("--preset", default="image8", help=f"a preset ({', '.join(sorted(PRESETS))}) or a sweep JSON file (default image8)")
    p.add_argument("--jobs", type=int, help=f"runs at a time (default: on CPU {DEFAULT_JOBS}, one per core, one thread each; on GPUs as many "
                   "as fit, packed several per GPU where small; printed at the start)")
    p.add_argument("--launcher", choices=("auto", "process", "deepspeed"), default="auto",
                   help="how each run starts: its own trainer process, or under DeepSpeed's launcher (auto: deepspeed on GPUs, process on CPU)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--restore-state", action="store_true",
                   help="put back the previous good version of a damaged results.json or sweep.json (FILE.prev) and stop")
    p.add_argument("--retrain", nargs="+", default=(), metavar="RUN",
                   help="train these runs again from their newest checkpoint (their config.json, summary.json or study.json is damaged)")
    _add_report_options(p)


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a directory written by `fastscale sweep`")
    _add_report_options(p)


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws of the report's fits (default 1000)")
    p.add_argument("--forecast-reducible", type=float, nargs="+", metavar="EPS",
                   help="reducible losses (nats/token) to forecast N and C for (default: 1/2, 1/4 and 1/10 of the largest model's)")


def run_sweep_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fastscale.fit import FitInputError

    from .report import check_forecast_reducible
    from .runner import run_sweep
    from .spec import SweepError, SweepSpec

    if args.restore_state:
        return _restore_state(args.out_dir)
    try:
        spec = SweepSpec.load(args.preset)
        runs = spec.runs()
        check_forecast_reducible(args.forecast_reducible)  # before the runs, not after them
    except (SweepError, FitInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start = time.time()
    bars = {}  # None: the sweep's, from the placement on (a damaged state file stops the sweep before); below it one per running run

    def layout(reason: str) -> None:
        tqdm.write(f"placement: {reason}")
        bars[None] = tqdm(total=len(runs), unit="run", desc=f"sweep {spec.name}", dynamic_ncols=True, position=0)

    def update(name: str, state: str) -> None:
        if state in ("running", "evaluating"):  # a process starts
            taken = {b.pos for b in bars.values()}
            free = next(position for position in itertools.count(1) if position not in taken)
            unit, desc = ("step", name) if state == "running" else ("run", f"{name} (study)")
            bars[name] = tqdm(unit=unit, desc=desc, dynamic_ncols=True, position=free, leave=False)
        else:
            bars.pop(name).close()
            if state in ("done", "failed"):
                bars[None].update(1)
        bars[None].set_postfix_str(f"{name}: {state}")

    def step(name: str, step: int, steps: int) -> None:
        run_bar = bars[name]
        run_bar.total = steps
        run_bar.update(step - run_bar.n)

    try:
        index = run_sweep(spec, args.out_dir, jobs=args.jobs, launcher=args.launcher, retrain=tuple(args.retrain), on_layout=layout,
                          on_update=update, on_step=step)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun `fastscale sweep {args.out_dir} --preset {args.preset}` to resume", file=sys.stderr)
        return 130
    finally:
        for bar in bars.values():
            bar.close()
    done, failed = index.count("done"), index.count("failed")
    print(f"sweep {spec.name}: {done}/{len(runs)} runs done, {failed} failed, {time.time() - start:.0f} s; results index {args.out_dir}/results.json")
    if failed:
        print(f"rerun `fastscale sweep {args.out_dir} --preset {args.preset}` to retry the failed runs (see their train.log)", file=sys.stderr)
        return 1
    return 0 if args.no_report else _report(args.out_dir, args)


def _restore_state(out_dir: str) -> int:
    from .runner import restore_state
    from .spec import SweepError

    try:
        restored = restore_state(out_dir)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in restored:
        print(f"restored {path} from its previous good version {path}.prev")
    if not restored:
        print(f"{out_dir}: no damaged state file (results.json and sweep.json are readable); nothing restored")
    print(f"continue with `fastscale sweep {out_dir} --preset {out_dir}/sweep.json`")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    return _report(args.sweep_dir, args)


def _print_loss_of_n(report: dict) -> None:
    law = report["L_of_N"]
    low, high = law["ci"].get("alpha", (float("nan"), float("nan")))
    print(f"L(N) = L_inf + (N0/N)^alpha: alpha = {law['params']['alpha']:.4f} [{low:.4f}, {high:.4f}], L_inf = {law['params']['L_inf']:.4f} nats/token")
    ext = report["extrapolation"]
    if "error" not in ext:
        print(f"extrapolation to the largest model: relative error {ext['relative_error'][0]:+.2%}")


def _print_isoflop(section: dict) -> None:
    """Approach 2's exponent in place of L(N): on an IsoFLOP grid each size's loss is at a fixed compute,
    not at convergence, so a power law in N fitted to it means nothing."""
    a = section["N_opt"]
    low, high = a["ci"].get("a", (float("nan"), float("nan")))
    skipped = f", {len(section['skipped'])} skipped (no interior minimum)" if section["skipped"] else ""
    print(f"IsoFLOP profiles (approach 2; {len(section['budgets'])} budgets{skipped}): N_opt ~ C^a, a = {a['params']['a']:.3f} "
          f"[{low:.3f}, {high:.3f}]; L(N) not summarised (each size's loss is at a fixed compute; see report.md)")


def _report(sweep_dir: str, args: argparse.Namespace) -> int:
    from fastscale.fit import FitInputError

    from .report import write_report

    try:
        report = write_report(sweep_dir, n_bootstrap=args.bootstrap, forecast_reducible=args.forecast_reducible)
    except (FileNotFoundError, FitInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    isoflop = report.get("isoflop") or {}
    if "N_opt" in isoflop:
        _print_isoflop(isoflop)
    else:
        _print_loss_of_n(report)
    frontier = report["frontier"]
    if "error" not in frontier:
        a = frontier["N_opt"]
        print(f"frontier: {len(frontier['frontier_runs'])} runs; N_opt ~ C^{a['params']['a']:.3f} [{a['ci']['a'][0]:.3f}, {a['ci']['a'][1]:.3f}]")
    for name, lines in report["skipped_lines"].items():
        print(f"note: run {name}: skipped {len(lines)} unreadable line(s) of its metrics.jsonl (torn by a kill?); listed in report.md", file=sys.stderr)
    print(f"wrote {sweep_dir}/report.md, report.json and {len(report['plots'])} plots")
    return 0
