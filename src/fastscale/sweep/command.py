"""`fastscale sweep` and `fastscale report`: the command line (prints, draws the progress bar)."""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from pathlib import Path

from .devices import DEFAULT_JOBS
from .index import TRAINED
from .spec import PRESETS


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="sweep directory (results.json, runs/, data/, report); rerun to resume")
    p.add_argument("--preset", default="image8", help=f"a preset ({', '.join(sorted(PRESETS))}) or a sweep JSON file (default image8)")
    p.add_argument("--jobs", type=int, help=f"runs at a time (default: on CPU {DEFAULT_JOBS}, one per core, one thread each; on GPUs as many "
                   "as fit, packed several per GPU where small; printed at the start)")
    p.add_argument("--launcher", choices=("auto", "process", "deepspeed", "ray"), default="auto",
                   help="how each run starts: its own trainer process, under DeepSpeed's launcher, or as a task on a Ray cluster "
                        "(ray: pip install 'fastscale[cluster]', OUT_DIR on storage every node sees) (auto: deepspeed on GPUs, process on CPU)")
    p.add_argument("--address", help="with --launcher ray, the Ray cluster: auto (the one `ray start` started here, or RAY_ADDRESS), "
                                     "HOST:PORT, or ray://HOST:PORT (Ray Client); default auto")
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


class SweepProgress:
    """The progress bars of `fastscale sweep`, fed by run_sweep's callbacks. Line 0 is the sweep:
    tokens trained of all its runs' budgets, so its ETA is the tokens left at this invocation's rate
    (runs differ in size by orders of magnitude: a count of runs says little about the time left), and
    the runs done in its postfix. Below it one line per running run, a finished run's line reused by
    the next. What earlier invocations trained (runs done, the steps a resumed run starts from) is
    counted at the start, as tqdm's `initial`, so rates count only this invocation's work. Every step
    poll redraws the bars at most once a REFRESH_S, so the elapsed times run on between events."""

    REFRESH_S = 1.0

    def __init__(self, runs, name: str, *, bar=None, clock=time.monotonic) -> None:
        from tqdm import tqdm

        self.bar, self.clock, self.name = bar or tqdm, clock, name
        self.budget = {run.name: float(run.tokens) for run in runs}
        self.trained = dict.fromkeys(self.budget, 0.0)  # tokens per run, as far as seen
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.lines: dict[str, int] = {}  # running run -> its line
        self.bars: dict[str, object] = {}  # running run -> its bar, from its first step (or its evaluation) on
        self.sweep = None
        self.drawn = -float("inf")

    def start(self, reason: str, states: dict[str, str]) -> None:
        """on_layout: the placement line, then the sweep's bar; states: each known run's state (results.json)."""
        self.bar.write(f"placement: {reason}")
        for name, state in states.items():
            if name in self.budget and state in TRAINED:
                self.trained[name] = self.budget[name]
                if state == "done":
                    self.done.add(name)
        self.sweep = self.bar(total=sum(self.budget.values()), initial=sum(self.trained.values()), unit="tok", unit_scale=True, smoothing=0,
                              desc=f"sweep {self.name}", position=0, dynamic_ncols=True)
        self._postfix()

    def update(self, name: str, state: str) -> None:
        """on_update: a run's process started (running, evaluating) or ended (trained, done, failed)."""
        if state in ("running", "evaluating"):
            self.lines[name] = next(line for line in itertools.count(1) if line not in self.lines.values())
            self.failed.discard(name)
            if state == "running" and self.trained[name]:  # trained before, now again (--retrain): its steps are counted as it goes
                self._count_trained(name, 0.0, as_initial=True)
                self.done.discard(name)
            if state == "evaluating":
                self.bars[name] = self.bar(desc=f"{name}: evaluating its study", bar_format="{desc} [{elapsed}]", position=self.lines[name], leave=False)
        else:
            self.lines.pop(name, None)
            bar = self.bars.pop(name, None)
            if bar is not None:
                bar.close()
            if state in TRAINED:
                self._count_trained(name, self.budget[name])
            {"done": self.done, "failed": self.failed}.get(state, set()).add(name)
        self._postfix()
        self._redraw(force=True)

    def step(self, name: str, step: int, steps: int) -> None:
        """on_step: a training run's newest logged step."""
        bar = self.bars.get(name)
        tokens = self.budget[name] * step / steps
        if bar is None:  # its first poll: steps trained before (a resumed run) count as done, not as this invocation's rate
            self.bars[name] = self.bar(total=steps, initial=step, unit="step", desc=name, position=self.lines[name], leave=False, dynamic_ncols=True)
            self._count_trained(name, tokens, as_initial=True)
        elif step != bar.n:  # tqdm redraws on any update, even of 0 steps: the timer below does that
            bar.update(step - bar.n)
            self._count_trained(name, tokens)
        self._redraw()

    def close(self) -> None:
        for bar in [*self.bars.values(), *([self.sweep] if self.sweep is not None else [])]:
            bar.close()
        self.bars.clear()

    def summary(self) -> str:
        return f"{len(self.done)}/{len(self.budget)} runs done"

    def _count_trained(self, name: str, tokens: float, *, as_initial: bool = False) -> None:
        change, self.trained[name] = tokens - self.trained[name], tokens
        if as_initial:
            self.sweep.initial += change
        self.sweep.n += change

    def _postfix(self) -> None:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        self.sweep.set_postfix_str(f"{self.summary()}{failed}, {len(self.lines)} running", refresh=False)

    def _redraw(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self.drawn >= self.REFRESH_S:
            self.drawn = now
            for bar in [self.sweep, *self.bars.values()]:
                bar.refresh()


def _states(out_dir: str) -> dict[str, str]:
    """Each run's state in the sweep's results index, as run_sweep has just checked it (empty for a new sweep)."""
    from .index import ResultsIndex

    return {name: entry["state"] for name, entry in ResultsIndex(Path(out_dir) / "results.json").runs.items()}


def run_sweep_command(args: argparse.Namespace) -> int:
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
    progress = SweepProgress(runs, spec.name)
    command = shlex.join(getattr(args, "command_line", None) or ["fastscale", "sweep", args.out_dir, "--preset", args.preset])
    try:
        index = run_sweep(spec, args.out_dir, jobs=args.jobs, launcher=args.launcher, address=args.address, retrain=tuple(args.retrain),
                          on_layout=lambda reason: progress.start(reason, _states(args.out_dir)), on_update=progress.update, on_step=progress.step)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print(f"\ninterrupted with {progress.summary()}; resume with: {command}", file=sys.stderr)
        return 130
    finally:
        progress.close()
    done, failed = index.count("done"), index.count("failed")
    print(f"sweep {spec.name}: {done}/{len(runs)} runs done, {failed} failed, {time.time() - start:.0f} s; results index {args.out_dir}/results.json")
    if failed:
        print(f"rerun `{command}` to retry the failed runs (see their train.log)", file=sys.stderr)
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
