"""The `fastscale` command line. Library code returns values and logs; this module and each command's
run function print."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib import metadata

DESCRIPTION = """\
fastscale: train a grid of GPT sizes, fit scaling laws to them and forecast bigger runs.

  fastscale sweep runs/image8                  train the image8 preset (resumable) and write its report
  fastscale report runs/image8                 fit L(N), L(C), the frontier and forecasts again
  fastscale fit runs.csv --law power           fit a law to your own measurements
  fastscale train --config RUN.json --deepspeed_config DS.json --out runs/x    one training run
  fastscale plan --params 1.3e9 --memory 24GiB --gpus 1    which ZeRO/offload setting fits

Run `fastscale COMMAND --help` for a command's options and their defaults."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (they hold example commands), and every option's default after its
    help, unless the help already says it or there is none to show (None, a flag's False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if not action.option_strings or action.default in (None, False, (), [], argparse.SUPPRESS) or "default" in help:
            return help
        return f"{help} (default: %(default)s)" if help else "default: %(default)s"


def version() -> str:
    try:
        return metadata.version("fastscale")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"

BENCHMARKS = {
    "attention": "fastscale.benchmarks.bench_attention",
    "cross-entropy": "fastscale.benchmarks.bench_cross_entropy",
    "fit": "fastscale.fit.benchmark",
    "hf": "fastscale.benchmarks.bench_hf",
}


def run_bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.name])
    return module.main(args.bench_args)


def run_fit(args: argparse.Namespace) -> int:
    from fastscale.fit.command import run

    return run(args)


def run_data(args: argparse.Namespace) -> int:
    from fastscale.data.command import run

    return run(args)


def run_plan(args: argparse.Namespace) -> int:
    from fastscale.train.command import run_plan as run

    return run(args)


def run_train(args: argparse.Namespace) -> int:
    from fastscale.train.command import run_train as run

    return run(args)


def run_sweep(args: argparse.Namespace) -> int:
    from fastscale.sweep.command import run_sweep_command

    return run_sweep_command(args)


def run_report(args: argparse.Namespace) -> int:
    from fastscale.sweep.command import run_report_command

    return run_report_command(args)


def run_sample(args: argparse.Namespace) -> int:
    from fastscale.sample import run

    return run(args)


def run_doctor(args: argparse.Namespace) -> int:
    from fastscale import doctor

    report = doctor.run(args.out, quick=args.quick)
    print(doctor.render(report))
    print(f"wrote {args.out}/doctor.json")
    return 1 if report["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastscale", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=lambda **kw: argparse.ArgumentParser(formatter_class=HelpFormatter, **kw))

    bench = commands.add_parser(
        "bench", help="run a kernel benchmark", description="Run a kernel benchmark; arguments after the name go to it (try NAME --help)."
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="...", help="the benchmark's own options (see NAME --help)")
    bench.set_defaults(handler=run_bench)

    from fastscale.fit.command import add_arguments as add_fit_arguments  # numpy/scipy only, no torch

    fit = commands.add_parser("fit", help="fit a scaling law to measured runs", description="Fit a scaling law to a CSV or run directories.")
    add_fit_arguments(fit)
    fit.set_defaults(handler=run_fit)

    from fastscale.data.command import add_arguments as add_data_arguments
    from fastscale.train.command import add_plan_arguments, add_train_arguments

    data = commands.add_parser("data", help="write token shards for a domain", description="Tokenize a domain (bundled or your files) into train/val token shards.")
    add_data_arguments(data)
    data.set_defaults(handler=run_data)
    plan = commands.add_parser("plan", help="plan ZeRO/offload/checkpointing for a model size and memory", description="Predict bytes per rank of each ZeRO stage / offload / activation-checkpointing choice, pick the fastest that fits, write its DeepSpeed config.")
    add_plan_arguments(plan)
    plan.set_defaults(handler=run_plan)
    train = commands.add_parser("train", help="train a GPT (same as python train.py)", description="Same arguments as train.py; for several ranks use `deepspeed train.py`.")
    add_train_arguments(train)
    train.set_defaults(handler=run_train)

    from fastscale.sweep.command import add_report_arguments, add_sweep_arguments

    sweep = commands.add_parser("sweep", help="train a grid of model sizes (resumable) and write its report", description="Train a sweep (a preset or a JSON file) into OUT_DIR, one trainer process per run; rerun the same command to resume.")
    add_sweep_arguments(sweep)
    sweep.set_defaults(handler=run_sweep)
    report = commands.add_parser("report", help="write the scaling-law report of a sweep", description="Fit L(N), L(C), the frontier, N_opt(C), forecasts and the extrapolation check; write report.md, report.json and plots.")
    add_report_arguments(report)
    report.set_defaults(handler=run_report)

    from fastscale.sample import add_arguments as add_sample_arguments  # numpy only until it runs

    sample = commands.add_parser("sample", help="draw samples from a trained run, decoded with its tokenizer",
                                 description="Sample from a run's newest checkpoint: images as a PNG grid, text as text.")
    add_sample_arguments(sample)
    sample.set_defaults(handler=run_sample)

    doctor = commands.add_parser(
        "doctor", help="check versions, devices, and each backend's numerics and speed here",
        description="Report versions, devices, CUDA driver/runtime and which backends run here; check every backend "
                    "against a float64 reference (the tests' criteria) and time it against the baselines. "
                    "Writes DIR/doctor.json; exits with 1 if a check fails.",
    )
    doctor.add_argument("--out", default="doctor-report", metavar="DIR", help="directory for doctor.json")
    doctor.add_argument("--quick", action="store_true", help="one shape per check, 3 timed runs instead of 10, no torch.compile baseline")
    doctor.set_defaults(handler=run_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fastscale.io import StateFileError

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = ["fastscale", *argv]  # for the commands that print how to resume
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except StateFileError as error:  # a damaged file of a run or sweep: its message says which and how to recover
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # train and sweep say where they stopped and how to resume; the rest just stop
        print(f"\ninterrupted: fastscale {args.command}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
