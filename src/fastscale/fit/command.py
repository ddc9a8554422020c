"""`fastscale fit DATA --law ...`: read a CSV or run directories, fit a law, print a table or JSON.

Every law builds one JSON-ready report: `params` (name -> value), `ci` (name -> [low, high]), `flags`,
and where asked `holdout` and `forecast`. The table output prints the same report.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from contextlib import contextmanager

import numpy as np

from fastscale import fit as laws  # lazy (fastscale/fit/__init__.py): scipy loads when a law runs, not for --help
from fastscale import units
from fastscale.fit._checks import FitInputError
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING, RESAMPLING
from fastscale.fit.io import Table, column, drop_highest_loss, read_table
from fastscale.io import json_text, write_atomically
from fastscale.tables import format_table

LAWS = ("power", "broken", "chinchilla", "kaplan-nd", "overtrain", "data-constrained", "frontier", "critical-batch", "allocation", "isoflop")
EPILOG = """laws, their columns, and the law fitted:
  power             --x COL --y COL [--pure]
                    L = L_inf + (x0/x)^alpha (--pure: L_inf = 0)
  broken            --x COL --y COL [--breaks K]
                    y = a + b x^-c0 prod_i (1 + (x/d_i)^(1/f_i))^(-c_i f_i), K breaks (default 1)
                    (Caballero et al. 2023, eq. 1); reports each segment's exponent c0, c0 + c1, ...
  chinchilla        --N COL (--D COL | --C COL) --loss COL
                    L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022; D = C/6N when --C is given)
  kaplan-nd         --N COL (--D COL | --C COL) --loss COL
                    L = [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D (Kaplan et al. 2020)
  overtrain         --N COL (--D COL | --C COL) --loss COL
                    L = E + A/N^alpha + B/D^alpha, one exponent (Gadre et al. 2024), also reported as
                    L = E + (a M^eta + b M^-eta) C^-eta with M = D/N
  data-constrained  --N COL (--D COL | --C COL) --unique-D COL --loss COL
                    L = E + A/N'^alpha + B/D'^beta (Muennighoff et al. 2023): D' discounts the D/U_D
                    repeated epochs (decay R_D_star), N' the parameters beyond N_opt(U_D) (R_N_star)
  frontier          [--run COL] --N COL --C COL --loss COL [--drop-warmup F]
                    learning curves -> their lower envelope, L(C) = L_inf + (C0/C)^alpha, N_opt = (C/C0)^a
                    (the sweep report's: --N n_params --C flops --loss eval_loss --drop-warmup 0.1 on SWEEP/runs)
  isoflop           --N COL --C COL --loss COL
                    Chinchilla approach 2: each budget's parabola minimum, then N_opt = (C/C0)^a
  allocation        --x C --y N_OPT [--sigma COL]
                    N_opt = (C/C0)^a, weights 1/sigma^2 of log N_opt
  critical-batch    --x STEPS --y EXAMPLES [--loss TARGET]
                    (S/S_min - 1)(E/E_min - 1) = 1 (McCandlish et al. 2018), one fit per target loss
                    --loss COL --noise-scale COL
                    B_crit(L) = B_star / L^(1/alpha_B)
Columns named N, D, C and loss need no option: power and broken take --x from the one of N, D, C
in DATA and --y loss; the other laws --N N, --D D (else --C C), --loss loss, where DATA has them.
--holdout-largest: every law; critical-batch holds out the K lowest losses (needs --loss).
--forecast-loss: power, frontier (x or C reaching L), chinchilla, overtrain (C on the compute-optimal path).
DATA is a CSV file or a directory of run directories (config.json + metrics.jsonl). Errors name rows
as a text editor numbers them: the CSV line (the header is line 1), or the run's metrics.jsonl step."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("data", metavar="DATA", help="CSV file, run directory or directory of run directories")
    parser.add_argument("--law", required=True, choices=LAWS, help="the law to fit (its columns and formula below)")
    for name, text in (
        ("--x", "column of the variable (N, D, C or steps)"),
        ("--y", "column of the fitted quantity (loss, N_opt, examples)"),
        ("--N", "column of model sizes (parameters)"),
        ("--D", "column of training tokens"),
        ("--C", "column of training compute in FLOPs (D = C / 6N when --D is not given)"),
        ("--loss", "column of losses (nats/token)"),
        ("--unique-D", "column of unique tokens in the data each run cycled through, D/unique-D epochs (data-constrained)"),
        ("--run", "column naming the run of each row (frontier; default: run, as run directories give it)"),
        ("--sigma", "column of the standard deviation of log y per row; weights 1/sigma^2 (allocation)"),
        ("--noise-scale", "column of gradient noise scales (critical-batch)"),
    ):
        parser.add_argument(name, metavar="COL", help=text)
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="EXPR",
        help="keep only rows where EXPR = COL OP VALUE holds, OP one of = != < <= > >= (repeatable: all must hold; "
        "numbers compared as numbers, text as text), e.g. --where 'N<1e9' --where 'config!=old'",
    )
    parser.add_argument("--breaks", type=int, metavar="K", help="broken: the number of breaks (default 1)")
    parser.add_argument("--pure", action="store_true", help="power, frontier: fit the pure power law (L_inf = 0)")
    parser.add_argument("--drop-top-loss", type=int, default=0, metavar="K", help="drop the K highest-loss rows (Epoch's protocol)")
    parser.add_argument(
        "--drop-warmup", type=float, default=0.0, metavar="F",
        help="frontier: leave out each run's rows at compute <= F x its largest compute, its first steps (the sweep report uses 0.1) (default 0)",
    )
    parser.add_argument(
        "--holdout-largest",
        type=int,
        default=0,
        metavar="K",
        help="fit without the K rows of largest N (or x) and report the error of predicting them; isoflop: the K largest "
        "budgets; frontier: the runs of the K largest N, compared where they reach the frontier of all runs; "
        "critical-batch: the K lowest losses",
    )
    parser.add_argument(
        "--forecast-loss", type=float, metavar="L", help="report which x (power), C (frontier) or compute-optimal C (chinchilla, overtrain) reaches loss L"
    )
    parser.add_argument("--forecast-reducible", type=float, metavar="EPS", help="power, frontier: which x brings the reducible loss down to EPS")
    parser.add_argument("--tokens-per-item", type=float, metavar="T", help="power, frontier: also state the law in nats per item (image, document) of T tokens")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_N_BOOTSTRAP, metavar="N", help=f"bootstrap resamples (default {DEFAULT_N_BOOTSTRAP}; 0: no intervals)")
    parser.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="interval level (default 0.95)")
    parser.add_argument(
        "--resampling", choices=RESAMPLING, default=DEFAULT_RESAMPLING,
        help="bootstrap scheme: parametric (new noise from the fitted noise model, its scale drawn too; intervals that cover on "
        "few points) or rows (resample the rows; assumes nothing about the noise; frontier: always its runs) (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON report to FILE (atomically)")
    parser.add_argument(
        "--plot", metavar="FILE", help="draw the fit to FILE (.png or .svg); with --holdout-largest, the fit without the held-out points, which are marked and predicted"
    )


# Each law's fit-function arguments, as the options whose columns fill them (first one given), so an
# error about an argument ("x has 1 distinct value") also names the column it came from.
ARGUMENT_OPTIONS = {
    "power": {"x": ("x",), "y": ("y",)},
    "allocation": {"compute": ("x",), "n_opt": ("y",), "weights": ("sigma",)},
    "chinchilla": {"n_params": ("N",), "n_tokens": ("D", "C"), "loss": ("loss",)},
    "kaplan-nd": {"n_params": ("N",), "n_tokens": ("D", "C"), "loss": ("loss",)},
    "overtrain": {"n": ("N",), "d": ("D", "C"), "loss": ("loss",)},
    "data-constrained": {"n": ("N",), "d": ("D", "C"), "unique_d": ("unique_D",), "epochs": ("unique_D",), "loss": ("loss",)},
    "broken": {"x": ("x",), "y": ("y",)},
    "isoflop": {"n_params": ("N",), "compute": ("C",), "loss": ("loss",)},
    "frontier": {"run": ("run",), "n_params": ("N",), "compute": ("C",), "loss": ("loss",)},
    "critical-batch": {"steps": ("x",), "examples": ("y",), "loss": ("loss",), "critical_batch": ("noise_scale",)},
}


def run(args: argparse.Namespace) -> int:
    try:
        if args.breaks is not None and args.law != "broken":
            raise FitInputError(f"--breaks does not apply to --law {args.law}")
        if args.drop_warmup and args.law != "frontier":
            raise FitInputError(f"--drop-warmup does not apply to --law {args.law} (only to frontier)")
        data = read_table(args.data)
        rows = select_rows(data, args.where)
        defaulted = default_columns(args, rows)
        report = LAW_RUNNERS[args.law](args, rows)
    except FitInputError as error:
        print(f"fastscale fit: error: {_in_columns(error, args)}", file=sys.stderr)
        return 2
    report = {"data": str(args.data), "resampling": _resampling(args), **({"default_columns": defaulted} if defaulted else {}), **report}
    if data.skipped:
        report["skipped_lines"] = list(data.skipped)
    text = json_text(_plain(report), indent=2)
    if args.out:
        write_atomically(args.out, text + "\n")
    print(text if args.json else format_report(report))
    holdout_flags = [f"holdout fit: {f}" for f in report.get("holdout", {}).get("flags", [])]
    for warning in report.get("skipped_lines", []) + report.get("flags", []) + holdout_flags:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


# The conventional column names each law's options take when not given (power and broken: x is the one
# of N, D, C the table has). Only for options the law reads, so a column named "loss" never turns
# critical-batch's (steps, examples) fit into a per-target one.
DEFAULT_COLUMNS = {
    "power": {"y": "loss"}, "broken": {"y": "loss"},
    "chinchilla": {"N": "N", "D": "D", "loss": "loss"}, "kaplan-nd": {"N": "N", "D": "D", "loss": "loss"},
    "overtrain": {"N": "N", "D": "D", "loss": "loss"}, "data-constrained": {"N": "N", "D": "D", "loss": "loss"},
    "isoflop": {"N": "N", "C": "C", "loss": "loss"}, "frontier": {"N": "N", "C": "C", "loss": "loss"},
}
TWO_VARIABLE = ("chinchilla", "kaplan-nd", "overtrain", "data-constrained")


def default_columns(args, table) -> dict:
    """Fill the options of args.law left unset from columns with the conventional names (N, D, C, loss)
    the table has; returns {option: column} of what was filled, which the report states."""
    filled = {}
    defaults = dict(DEFAULT_COLUMNS.get(args.law, {}))
    if args.law in ("power", "broken"):
        present = [name for name in ("N", "D", "C") if name in table]
        if len(present) == 1:
            defaults["x"] = present[0]
    if args.law in TWO_VARIABLE and args.D is None and args.C is None and "D" not in table and "C" in table:
        defaults["C"] = "C"  # D = C / 6N, as with --C
    for option, name in defaults.items():
        if getattr(args, option) is None and name in table and not (option == "D" and args.C is not None):
            setattr(args, option, name)
            filled[option] = name
    return filled


@contextmanager
def rows_named(table, keep=None):
    """A fit error naming an element of the arrays fitted ("... at index 3") names that row of DATA
    instead ("... at runs.csv line 5", the header being line 1): the fit saw the rows of the mask `keep`
    (None: all), so its index counts only those."""
    try:
        yield
    except FitInputError as error:
        rows = np.arange(len(table.origin)) if keep is None else np.flatnonzero(keep)
        match = re.search(r" at index (\d+)", str(error))
        if not match or int(match.group(1)) >= len(rows):
            raise
        message = str(error)
        raise FitInputError(message[: match.start()] + f" at {table.origin[rows[int(match.group(1))]]}" + message[match.end() :], error.argument) from None


def _resampling(args) -> str:
    """The bootstrap scheme as the report states it: the frontier's L(C) always resamples its runs,
    whose frontier points are cut from one learning curve each and are not independent."""
    if args.bootstrap == 0:
        return "none"
    return f"runs for L(C), {args.resampling} for N_opt(C)" if args.law == "frontier" else args.resampling


def _in_columns(error: FitInputError, args) -> str:
    """The error, prefixed with the option and column that filled the argument it names."""
    options = ARGUMENT_OPTIONS[args.law].get(error.argument, ())
    given = [option for option in options if getattr(args, option) is not None]
    if not given:
        return str(error)
    option = given[0]
    derived = " (D = C/6N)" if option == "C" and "D" in options else " (epochs = D/unique-D)" if error.argument == "epochs" else ""
    return f"--{option.replace('_', '-')} {getattr(args, option)!r}{derived}: {error}"


WHERE_OPERATORS = {"!=": np.not_equal, "<=": np.less_equal, ">=": np.greater_equal, "=": np.equal, "<": np.less, ">": np.greater}
# Two-character operators first, so "N<=1e9" is not read as column "N" < "=1e9".
WHERE_PATTERN = re.compile(r"^(?P<name>[^!<>=]+?)\s*(?P<op>!=|<=|>=|=|<|>)\s*(?P<value>.*)$", re.DOTALL)


def select_rows(table: Table, conditions: list) -> Table:
    """Rows where every COL OP VALUE holds (OP one of = != < <= > >=). A column of numbers is compared
    with VALUE as a number, a column of text with VALUE as text (lexicographically for < and >)."""
    keep = np.ones(len(next(iter(table.values()))), dtype=bool)
    for condition in conditions:
        keep &= _where_mask(table, condition)
    if conditions and not keep.any():
        raise FitInputError(f"--where {' '.join(conditions)}: no row matches")
    return table.rows(keep)


def _where_mask(table: Table, condition: str) -> np.ndarray:
    match = WHERE_PATTERN.match(condition.strip())
    if not match:
        raise FitInputError(f"--where {condition!r}: expected COL OP VALUE with OP one of = != < <= > >=")
    name, op, value = match.group("name").strip(), match.group("op"), match.group("value").strip()
    if name not in table:
        raise FitInputError(f"--where {condition!r}: no column {name!r} in DATA; columns are {sorted(table)}")
    values = table[name]
    if values.dtype.kind != "f":
        return WHERE_OPERATORS[op](values, value)
    try:
        number = float(value)
    except ValueError:
        raise FitInputError(f"--where {condition!r}: column {name!r} holds numbers, got {value!r}") from None
    with np.errstate(invalid="ignore"):
        return WHERE_OPERATORS[op](values, number)


def _options(args):
    return {"n_bootstrap": args.bootstrap, "level": args.level, "seed": args.seed, "resampling": args.resampling}


def _need(args, *names):
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise FitInputError(f"--law {args.law}: expected {' and '.join(missing)} (see fastscale fit --help)")


def _refuse(args, *options):
    """Options another law uses are an error here, not silently ignored."""
    for option in options:
        if getattr(args, option.lstrip("-").replace("-", "_")) not in (None, 0, False):
            raise FitInputError(f"{option} does not apply to --law {args.law}")


def _rows(args, loss):
    """Row mask after --drop-top-loss."""
    return drop_highest_loss(loss, args.drop_top_loss)


def _tokens(args, table):
    n = column(table, args.N, option="--N")
    if args.D is not None:
        return n, column(table, args.D, option="--D")
    if args.C is not None:
        return n, units.tokens_from_flops(column(table, args.C, option="--C"), n)
    raise FitInputError(f"--law {args.law}: expected --D or --C (D = C / 6N)")


def run_power(args, table):
    _need(args, "x", "y")
    x, y = column(table, args.x, option="--x"), column(table, args.y, option="--y")
    keep = _rows(args, y)
    with rows_named(table, keep):
        fit = laws.fit_power_law(x[keep], y[keep], irreducible=not args.pure, **_options(args))
    report, check = _fit_report(fit), None
    if args.holdout_largest:
        check = laws.holdout_largest(laws.fit_power_law, (x[keep],), y[keep], args.holdout_largest, irreducible=not args.pure, **_options(args))
        report["holdout"] = _holdout_report(check, (args.x,), table.origin[keep], f"--x {args.x!r}")
    report.update(_power_readings(args, fit, args.x))
    _maybe_plot(args, lambda plots: plots.plot_law(fit, x[keep], y[keep], args.plot, xlabel=args.x, ylabel=args.y, holdout=check))
    return report


def _power_readings(args, fit, x_name) -> dict:
    """Forecasts and the per-item reading of a power law + constant: L_inf is the irreducible loss
    (the data's entropy), (x0/x)^alpha the reducible loss (KL divergence), in nats per token."""
    readings = {}
    if args.forecast_loss is not None:
        readings["forecast"] = {"loss": args.forecast_loss, x_name: _estimate(fit.x_for_loss(args.forecast_loss))}
    if args.forecast_reducible is not None:
        readings["forecast_reducible"] = {"reducible": args.forecast_reducible, x_name: _estimate(fit.x_for_reducible(args.forecast_reducible))}
    if args.tokens_per_item is not None:
        readings["per_item"] = {"tokens_per_item": args.tokens_per_item, **units.per_item(fit.params, args.tokens_per_item)}
    return readings


def run_broken(args, table):
    _need(args, "x", "y")
    _refuse(args, "--forecast-loss", "--forecast-reducible", "--tokens-per-item", "--pure")
    x, y = column(table, args.x, option="--x"), column(table, args.y, option="--y")
    keep = _rows(args, y)
    options = {**_options(args), "breaks": 1 if args.breaks is None else args.breaks}
    with rows_named(table, keep):
        fit = laws.fit_broken_power_law(x[keep], y[keep], **options)
    report = _fit_report(fit)
    report["segment_exponents"] = [_estimate(segment) for segment in fit.segment_exponents()]
    check = None
    if args.holdout_largest:
        check = laws.holdout_largest(laws.fit_broken_power_law, (x[keep],), y[keep], args.holdout_largest, **options)
        report["holdout"] = _holdout_report(check, (args.x,), table.origin[keep], f"--x {args.x!r}")
    _maybe_plot(args, lambda plots: plots.plot_law(fit, x[keep], y[keep], args.plot, xlabel=args.x, ylabel=args.y, holdout=check))
    return report


def run_allocation(args, table):
    _need(args, "x", "y")
    _refuse(args, "--drop-top-loss", "--forecast-loss", "--forecast-reducible", "--tokens-per-item", "--pure")
    c, n = column(table, args.x, option="--x"), column(table, args.y, option="--y")
    # An empty N_opt means the budget had no interior minimum (Porian's optimal_pairs.csv): skip, and say so.
    keep = ~np.isnan(n)
    weights = None if args.sigma is None else 1.0 / column(table, args.sigma, option="--sigma")[keep] ** 2
    with rows_named(table, keep):
        fit = laws.fit_allocation(c[keep], n[keep], weights=weights, **_options(args))
    report = _fit_report(fit)
    if not keep.all():
        report["skipped_rows"] = {"count": int((~keep).sum()), "reason": f"empty --y {args.y!r}"}
    check = None
    if args.holdout_largest:
        check = laws.holdout_largest(laws.fit_allocation, (c[keep],), n[keep], args.holdout_largest, per_row={"weights": weights}, **_options(args))
        report["holdout"] = _holdout_report(check, (args.x,), table.origin[keep], f"--x {args.x!r}")
    labels = {"xlabel": f"C (column {args.x!r})", "ylabel": f"N_opt (parameters, column {args.y!r})"}
    _maybe_plot(args, lambda plots: plots.plot_law(fit, c[keep], n[keep], args.plot, holdout=check, **labels))
    return report


def run_two_variable(law: str):
    """The runner of the law fastscale.fit.`law` (a name: the law and scipy load when it runs)."""

    def runner(args, table):
        fit_function = getattr(laws, law)
        _need(args, "N", "loss")
        _refuse(args, "--forecast-reducible", "--tokens-per-item", "--pure")
        n, d = _tokens(args, table)
        loss = column(table, args.loss, option="--loss")
        keep = _rows(args, loss)
        with rows_named(table, keep):
            fit = fit_function(n[keep], d[keep], loss[keep], **_options(args))
        report, check = _fit_report(fit), None
        if args.holdout_largest:
            check = laws.holdout_largest(fit_function, (n[keep], d[keep]), loss[keep], args.holdout_largest, **_options(args))
            report["holdout"] = _holdout_report(check, ("N", "D"), table.origin[keep], "N")
        if args.forecast_loss is not None:
            if not hasattr(fit, "compute_for_loss"):
                raise FitInputError(f"--forecast-loss: --law {args.law} has no compute-optimal path to forecast along")
            report["forecast"] = {"loss": args.forecast_loss, "C": _estimate(fit.compute_for_loss(args.forecast_loss))}
        _maybe_plot(args, lambda plots: plots.plot_two_variable(fit, n[keep], d[keep], loss[keep], args.plot, holdout=check))
        return report

    return runner


def run_data_constrained(args, table):
    _need(args, "N", "unique_D", "loss")
    _refuse(args, "--forecast-loss", "--forecast-reducible", "--tokens-per-item", "--pure")
    n, d = _tokens(args, table)
    unique_d = column(table, args.unique_D, option="--unique-D")
    loss = column(table, args.loss, option="--loss")
    keep = _rows(args, loss)
    with rows_named(table, keep):
        fit = laws.fit_data_constrained(n[keep], d[keep], unique_d[keep], loss[keep], **_options(args))
    report, check = _fit_report(fit), None
    if args.holdout_largest:
        check = laws.holdout_largest(laws.fit_data_constrained, (n[keep], d[keep], unique_d[keep]), loss[keep], args.holdout_largest, **_options(args))
        report["holdout"] = _holdout_report(check, ("N", "D", "unique_D"), table.origin[keep], "N")
    _maybe_plot(args, lambda plots: plots.plot_data_constrained(fit, n[keep], d[keep], unique_d[keep], loss[keep], args.plot, holdout=check))
    return report


def run_isoflop(args, table):
    _need(args, "N", "C", "loss")
    _refuse(args, "--forecast-loss", "--forecast-reducible", "--tokens-per-item", "--pure")
    n, c = column(table, args.N, option="--N"), column(table, args.C, option="--C")
    loss = column(table, args.loss, option="--loss")
    keep = _rows(args, loss)
    n, c, loss = n[keep], c[keep], loss[keep]
    with rows_named(table, keep):
        minima = laws.fit_isoflop(n, c, loss, **_options(args))
    report = _fit_report(minima.allocation)
    report["minima"] = [_parabola_report(p) for p in minima.parabolas]
    report["flags"] = report["flags"] + [f"C {p.compute:.4g}: {flag}" for p in minima.parabolas for flag in p.flags]
    report["skipped_budgets"] = {str(k): v for k, v in minima.skipped.items()}
    check = None
    if args.holdout_largest:
        # Each budget's minimum comes from its own rows alone, so refitting the runs of the other budgets
        # gives their vertices unchanged and the line (with fit_isoflop's intervals) without the largest.
        def fit_without(compute_kept, _n_opt, **options):
            rows = np.isin(c, compute_kept)
            return laws.fit_isoflop(n[rows], c[rows], loss[rows], **options).allocation

        check = laws.holdout_largest(fit_without, (minima.compute,), minima.n_opt, args.holdout_largest, **_options(args))
        report["holdout"] = _holdout_report(check, ("C",), None, "C (budgets with an interior minimum)")
    labels = {"xlabel": f"C (budget, column {args.C!r})", "ylabel": "N_opt (parameters at the budget's minimum loss)"}
    _maybe_plot(args, lambda plots: plots.plot_law(minima.allocation, minima.compute, minima.n_opt, args.plot, holdout=check, **labels))
    return report


def _parabola_report(parabola) -> dict:
    """One IsoFLOP budget: its vertex (N_opt, loss there) and curvature k with their intervals (null without)."""
    ci = {name: list(parabola.intervals.get(name, (float("nan"), float("nan")))) for name in parabola.params}
    return {
        "C": parabola.compute, "N_opt": parabola.params["N_opt"], "N_opt_ci": ci["N_opt"], "loss": parabola.params["L_opt"],
        "loss_ci": ci["L_opt"], "k": parabola.params["k"], "k_ci": ci["k"], "sizes": parabola.window.tolist(), "flags": list(parabola.flags),
    }


def run_frontier(args, table):
    from fastscale.fit.frontier import early_rows

    _need(args, "N", "C", "loss")
    runs = table.get(args.run or "run")
    if runs is None:
        raise FitInputError(f"--run {args.run or 'run'!r}: no such column in DATA; columns are {sorted(table)}")
    n, c = column(table, args.N, option="--N"), column(table, args.C, option="--C")
    loss = column(table, args.loss, option="--loss")
    # Learning curves log eval losses on some steps only, and step 0 at zero compute: use the rest.
    keep = np.isfinite(loss) & np.isfinite(c) & (c > 0)
    keep[keep] = ~early_rows(runs[keep], c[keep], args.drop_warmup)
    keep[keep] = _rows(args, loss[keep])
    with rows_named(table, keep):
        fit = laws.fit_frontier(runs[keep], n[keep], c[keep], loss[keep], irreducible=not args.pure, **_options(args))
    loss_report, allocation_report = _fit_report(fit.loss_fit), _fit_report(fit.allocation)
    report = {
        "law": "frontier",
        "params": {**loss_report["params"], **allocation_report["params"]},
        "ci": {**loss_report["ci"], **allocation_report["ci"]},
        "level": args.level,
        "flags": list(fit.flags),
        "frontier_runs": [{"run": str(r), "C": cc, "N": nn} for r, cc, nn in zip(np.unique(fit.frontier.run), fit.optimal_compute, fit.optimal_n_params)],
        "max_log_above_frontier": fit.max_above_frontier,
    }
    check = None
    if args.holdout_largest:
        options = {**_options(args), "irreducible": not args.pure}
        check = laws.holdout_largest_runs(runs[keep], n[keep], c[keep], loss[keep], args.holdout_largest, **options)
        report["holdout"] = _frontier_holdout_report(check, args.holdout_largest)
    report.update(_power_readings(args, fit.loss_fit, "C"))
    drawing = {"n_params": n[keep], "clabel": f"compute (column {args.C!r})", "holdout": check}
    _maybe_plot(args, lambda plots: plots.plot_frontier(fit, runs[keep], c[keep], loss[keep], args.plot, **drawing))
    return report


def run_critical_batch(args, table):
    _refuse(args, "--forecast-loss", "--forecast-reducible", "--tokens-per-item", "--drop-top-loss", "--pure")
    if args.noise_scale is not None:
        _need(args, "loss")
        loss, noise = column(table, args.loss, option="--loss"), column(table, args.noise_scale, option="--noise-scale")
        finite = np.isfinite(loss) & np.isfinite(noise)  # noise scales are logged on some steps only
        with rows_named(table, finite):
            fit = laws.fit_critical_batch_vs_loss(loss[finite], noise[finite], **_options(args))
        report, check = _with_lowest_loss_holdout(_fit_report(fit), args, loss[finite], noise[finite], table.origin[finite])
        _maybe_plot(args, lambda plots: plots.plot_law(fit, loss[finite], noise[finite], args.plot, holdout=check, **CRITICAL_BATCH_LABELS))
        return report
    _need(args, "x", "y")
    steps, examples = column(table, args.x, option="--x"), column(table, args.y, option="--y")
    if args.loss is None:
        if args.holdout_largest:
            raise FitInputError(
                "--holdout-largest: --law critical-batch without --loss fits one (steps, examples) curve; give --loss targets to hold out the lowest"
            )
        fit = laws.fit_critical_batch(steps, examples, **_options(args))
        labels = {"xlabel": "batch size (examples per step)", "ylabel": "steps to the target loss"}
        _maybe_plot(args, lambda plots: plots.plot_law(fit, examples / steps, steps, args.plot, **labels))
        return _fit_report(fit)
    targets = column(table, args.loss, option="--loss")
    per_target = {float(t): _fit_target(t, steps[targets == t], examples[targets == t], args) for t in np.unique(targets)}
    by_loss = laws.fit_critical_batch_vs_loss(list(per_target), [f.params["B_crit"] for f in per_target.values()], **_options(args))
    report = _fit_report(by_loss)
    report["per_target"] = [{"loss": t, **_fit_report(f)} for t, f in per_target.items()]
    report["flags"] = report["flags"] + [f"loss {t}: {flag}" for t, f in per_target.items() for flag in f.flags]
    losses, batches = np.array(list(per_target)), np.array([f.params["B_crit"] for f in per_target.values()])
    report, check = _with_lowest_loss_holdout(report, args, losses, batches, None)
    _maybe_plot(args, lambda plots: plots.plot_law(by_loss, losses, batches, args.plot, holdout=check, **CRITICAL_BATCH_LABELS))
    return report


CRITICAL_BATCH_LABELS = {"xlabel": "loss (nats/token)", "ylabel": "B_crit (examples per step)"}


def _with_lowest_loss_holdout(report, args, loss, critical_batch, origin):
    """--holdout-largest for B_crit(L): the K lowest losses held out, the direction a forecast for a larger
    model goes (its loss is lower). origin: where each point fitted came from in DATA, None when the points are
    per-target fits.
    Returns the report and the check (None without --holdout-largest), which the plot draws."""
    if not args.holdout_largest:
        return report, None
    check = laws.holdout_largest(laws.fit_critical_batch_vs_loss, (loss,), critical_batch, args.holdout_largest, lowest=True, **_options(args))
    report["holdout"] = _holdout_report(check, ("loss",), origin, "loss", lowest=True)
    return report, check


def _fit_target(target, steps, examples, args):
    try:
        return laws.fit_critical_batch(steps, examples, **_options(args))
    except FitInputError as error:
        raise FitInputError(f"--loss {args.loss!r} = {target:g}: {error}", error.argument) from None


LAW_RUNNERS = {
    "power": run_power,
    "broken": run_broken,
    "allocation": run_allocation,
    "chinchilla": run_two_variable("fit_chinchilla"),
    "kaplan-nd": run_two_variable("fit_kaplan_nd"),
    "overtrain": run_two_variable("fit_overtrain"),
    "data-constrained": run_data_constrained,
    "isoflop": run_isoflop,
    "frontier": run_frontier,
    "critical-batch": run_critical_batch,
}


def _maybe_plot(args, draw):
    if args.plot:
        from fastscale.fit import plots

        draw(plots)


def _fit_report(fit) -> dict:
    summary = fit.summary()
    return {
        "law": summary["law"],
        "params": summary["params"],
        "ci": summary["ci"],
        "level": summary["level"],
        "n_points": summary["n_points"],
        "n_bootstrap": summary["n_bootstrap"],
        "rms_log_residual": summary["rms_log_residual"],
        "converged": summary["converged"],
        "flags": summary["flags"],
    }


def _holdout_report(check, names, origin, largest: str, *, lowest: bool = False) -> dict:
    """origin: where each fitted point came from in DATA ("runs.csv line 5", "run3/metrics.jsonl step
    40"), so held-out rows are named as an editor shows them; None when the fitted points are not DATA
    rows (IsoFLOP minima, per-target critical batches)."""
    rows = []
    for i in range(len(check.held_out)):
        number = {} if origin is None else {"row": str(origin[check.held_out[i]])}
        inputs = {name: float(values[i]) for name, values in zip(names, check.inputs)}
        rows.append({**number, **inputs, **_prediction(check, i)})
    return {
        "held_out": f"the {len(rows)} point{'s' * (len(rows) != 1)} of {'lowest' if lowest else 'largest'} {largest}",
        "mean_abs_rel_error": check.mean_abs_rel_error,
        "fit_params": {k: float(v) for k, v in check.fit.params.items()},
        "flags": list(check.fit.flags),
        "rows": rows,
    }


def _frontier_holdout_report(check, k: int) -> dict:
    fit = check.fit
    runs = ", ".join(map(str, check.held_out_runs))
    return {
        "held_out": f"the runs of the {k} largest N ({runs}): the {len(check.compute)} points where they attain the frontier of all runs",
        "mean_abs_rel_error": check.mean_abs_rel_error,
        "fit_params": {name: float(value) for name, value in {**fit.loss_fit.params, **fit.allocation.params}.items()},
        "flags": list(fit.flags),
        "rows": [{"run": str(check.run[i]), "C": float(check.compute[i]), **_prediction(check, i)} for i in range(len(check.compute))],
    }


def _prediction(check, i: int) -> dict:
    return {
        "observed": check.observed[i], "predicted": check.predicted[i], "low": check.low[i], "high": check.high[i], "rel_error": check.relative_error[i]
    }


def _estimate(estimate) -> dict:
    """value, low, high, and how the interval was made: widened to contain the value, draws left out."""
    return dataclasses.asdict(estimate)


def _plain(value):
    """numpy scalars as Python numbers (json_text then writes nan as null)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


MAX_TABLE_ROWS = 12


def _interval_notes(estimate: dict) -> str:
    notes = ["widened to contain the estimate"] * bool(estimate.get("widened"))
    if estimate.get("draws_not_finite"):
        notes.append(f"{estimate['draws_not_finite']} bootstrap draws not finite, left out")
    return f" ({'; '.join(notes)})" if notes else ""


def _row_label(row: dict) -> str:
    """A held-out point as the table names it: its DATA row, or its run and compute, or its inputs."""
    if "row" in row:
        return row["row"]
    if "run" in row:
        return f"{row['run']} at C={row['C']:.4g}"
    inputs = list(row)[: list(row).index("observed")]
    return ", ".join(f"{name}={row[name]:.4g}" for name in inputs)


def _ci_text(interval) -> str:
    low, high = interval
    return f"[{low:.4g}, {high:.4g}]" if np.isfinite(low) and np.isfinite(high) else "(no interval)"


def format_report(report: dict) -> str:
    lines = [f"law: {report['law']}    data: {report['data']}"]
    if "n_points" in report:
        lines.append(f"points: {report['n_points']}    bootstrap resamples: {report['n_bootstrap']} ({report['resampling']})    rms log residual: {report['rms_log_residual']:.4g}")
    no_interval = (float("nan"), float("nan"))
    rows = [[name, f"{value:.6g}", "[{:.6g}, {:.6g}]".format(*report["ci"].get(name, no_interval))] for name, value in report["params"].items()]
    rows += [[f"segment {i} exponent", f"{segment['value']:.6g}", f"[{segment['low']:.6g}, {segment['high']:.6g}]{_interval_notes(segment)}"]
             for i, segment in enumerate(report.get("segment_exponents", []))]
    lines.append(format_table(["param", "value", f"{report['level']:.0%} CI"], rows))
    for row in report.get("minima", [])[:MAX_TABLE_ROWS]:
        lines.append(f"budget C={row['C']:.4g}: N_opt {row['N_opt']:.4g} {_ci_text(row['N_opt_ci'])}  loss there {row['loss']:.4g} "
                     f"{_ci_text(row['loss_ci'])}  ({len(row['sizes'])} runs in its parabola)")
    if len(report.get("minima", [])) > MAX_TABLE_ROWS:
        lines.append(f"  ... {len(report['minima']) - MAX_TABLE_ROWS} more budgets in --json")
    for budget, reason in report.get("skipped_budgets", {}).items():
        lines.append(f"skipped budget C={float(budget):.4g}: {reason}")
    if "skipped_rows" in report:
        lines.append(f"skipped {report['skipped_rows']['count']} rows: {report['skipped_rows']['reason']}")
    if "holdout" in report:
        holdout = report["holdout"]
        lines.append(f"holdout: mean |relative error| on {holdout['held_out']} = {holdout['mean_abs_rel_error']:.4%}")
        for row in holdout["rows"][:MAX_TABLE_ROWS]:
            lines.append(f"  {_row_label(row)}: observed {row['observed']:.6g}  predicted {row['predicted']:.6g}  ({row['rel_error']:+.3%})")
        if len(holdout["rows"]) > MAX_TABLE_ROWS:
            lines.append(f"  ... {len(holdout['rows']) - MAX_TABLE_ROWS} more in --json")
    for key, what in (("forecast", "loss"), ("forecast_reducible", "reducible")):
        if key in report:
            forecast = dict(report[key])
            target = forecast.pop(what)
            for name, estimate in forecast.items():
                interval = f"{estimate['value']:.4g} [{estimate['low']:.4g}, {estimate['high']:.4g}]{_interval_notes(estimate)}"
                lines.append(f"forecast: {name} reaching {what} loss {target}: {interval}")
    if "per_item" in report:
        item = report["per_item"]
        lines.append(
            f"per item of {item['tokens_per_item']:g} tokens: irreducible {item['L_inf']:.6g} nats, reducible ({item['x0']:.4g}/x)^{item['alpha']:.4g}"
        )
    return "\n".join(lines)
