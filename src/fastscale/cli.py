"""The `fastscale` command line. Library code returns values and logs; this module and each command's
run function print."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from fastscale import __version__, extras

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


@dataclass(frozen=True)
class Command:
    """A subcommand: the functions that add its arguments and run it, as "module:function" (the module
    is imported only when this command is the one parsed, so `fastscale --help` imports none and
    `fastscale train --help` only the light fastscale.train.command), its help, and the extras it
    needs whatever its options (checked before it runs, without importing them)."""

    arguments: str
    run: str
    help: str
    description: str
    requires: tuple[str, ...] = ()


COMMANDS = {
    "bench": Command("fastscale.cli:add_bench_arguments", "fastscale.cli:run_bench", "run a kernel benchmark",
                     "Run a kernel benchmark; arguments after the name go to it (try NAME --help)."),
    "fit": Command("fastscale.fit.command:add_arguments", "fastscale.fit.command:run", "fit a scaling law to measured runs",
                   "Fit a scaling law to a CSV or run directories."),
    "data": Command("fastscale.data.command:add_arguments", "fastscale.data.command:run", "write token shards for a domain",
                    "Tokenize a domain (bundled or your files) into train/val token shards."),
    "plan": Command("fastscale.train.command:add_plan_arguments", "fastscale.train.command:run_plan",
                    "plan ZeRO/offload/checkpointing for a model size and memory",
                    "Predict bytes per rank of each ZeRO stage / offload / activation-checkpointing choice, pick the fastest that fits, "
                    "write its DeepSpeed config."),
    "train": Command("fastscale.train.command:add_train_arguments", "fastscale.train.command:run_train", "train a GPT (same as python train.py)",
                     "Same arguments as train.py; for several ranks use `deepspeed train.py`.", requires=("train",)),
    "sweep": Command("fastscale.sweep.command:add_sweep_arguments", "fastscale.sweep.command:run_sweep_command",
                     "train a grid of model sizes (resumable) and write its report",
                     "Train a sweep (a preset or a JSON file) into OUT_DIR, one trainer process per run; rerun the same command to resume.",
                     requires=("train",)),
    "report": Command("fastscale.sweep.command:add_report_arguments", "fastscale.sweep.command:run_report_command",
                      "write the scaling-law report of a sweep",
                      "Fit L(N), L(C), the frontier, N_opt(C), forecasts and the extrapolation check; write report.md, report.json and plots.",
                      requires=("report",)),
    "resolutions": Command("fastscale.sweep.domains:add_resolutions_arguments", "fastscale.sweep.domains:run_resolutions",
                           "train one grid per image resolution and compare L(N) in nats per image",
                           "Train the resolutions preset (or a sweep file with a resolutions study) once per resolution into OUT_DIR/r{R} "
                           "(resumable), then compare L(N), L_inf and alpha per resolution and forecast the N each needs; writes OUT_DIR/report.md.",
                           requires=("train", "report")),
    "frontier": Command("fastscale.sweep.domains:add_frontier_arguments", "fastscale.sweep.domains:run_frontier",
                        "tabulate the N_opt(C) exponent of every sweep report under a folder",
                        "Collect the N_opt(C) exponent (frontier and IsoFLOP) of every report.json under DIR into DIR/frontier_table.md "
                        "and .json, beside Henighan et al.'s ~0.7."),
    "sample": Command("fastscale.sample:add_arguments", "fastscale.sample:run", "draw samples from a trained run, decoded with its tokenizer",
                      "Sample from a run's newest checkpoint: images as a PNG grid, text as text."),
    "doctor": Command("fastscale.cli:add_doctor_arguments", "fastscale.cli:run_doctor",
                      "check versions, devices, and each backend's numerics and speed here",
                      "Report versions, devices, CUDA driver/runtime and which backends run here; check every backend against a float64 "
                      "reference (the tests' criteria) and time it against the baselines. Writes DIR/doctor.json; exits with 1 if a check fails."),
}

BENCHMARKS = {
    "attention": "fastscale.benchmarks.bench_attention",
    "cross-entropy": "fastscale.benchmarks.bench_cross_entropy",
    "fit": "fastscale.fit.benchmark",
    "hf": "fastscale.benchmarks.bench_hf",
}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="...", help="the benchmark's own options (see NAME --help)")


def run_bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.name])
    return module.main(args.bench_args)


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="doctor-report", metavar="DIR", help="directory for doctor.json")
    parser.add_argument("--quick", action="store_true", help="one shape per check, 3 timed runs instead of 10, no torch.compile baseline")


def run_doctor(args: argparse.Namespace) -> int:
    from fastscale import doctor

    report = doctor.run(args.out, quick=args.quick)
    print(doctor.render(report))
    print(f"wrote {args.out}/doctor.json")
    return 1 if report["failed"] else 0


def _function(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def build_parser(commands: Iterable[str | None] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The `fastscale` parser. Every command is listed, but only those in `commands` get their
    arguments (and import their module): `main` passes the one on its command line, if any."""
    parser = argparse.ArgumentParser(prog="fastscale", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=lambda **kw: argparse.ArgumentParser(formatter_class=HelpFormatter, **kw))
    with_arguments = set(commands)
    for name, command in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=command.help, description=command.description)
        if name in with_arguments:
            _function(command.arguments)(subparser)
    return parser


def command_in(argv: list[str]) -> str | None:
    """The command named on a command line: the first word that is not an option (fastscale's own
    options take no value), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    from fastscale.io import StateFileError

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser([command_in(argv)]).parse_args(argv)
    args.command_line = ["fastscale", *argv]  # for the commands that print how to resume
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = COMMANDS[args.command]
    try:
        for extra in command.requires:
            extras.require(extra, f"fastscale {args.command}")
        return _function(command.run)(args)
    except StateFileError as error:  # a damaged file of a run or sweep: its message says which and how to recover
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # an optional dependency: say which extra installs it
        message = extras.missing_extra_message(error, f"fastscale {args.command}")
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # train and sweep say where they stopped and how to resume; the rest just stop
        print(f"\ninterrupted: fastscale {args.command}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
