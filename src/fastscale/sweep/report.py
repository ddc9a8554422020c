"""The report of a sweep: REPORT/report.json, report.md and plots (PNG and SVG), from the done runs.

Every number comes from fastscale.fit on arrays read here from the run directories:
- L(N): the final loss of each run of the largest token (or compute) budget of its size against its
  non-embedding N, L = L_inf + (N0/N)^alpha, with bootstrap intervals. A run's final loss is its held-out
  loss at its last step (the trainer evaluates there, on eval_batches of held-out rows: the whole held-out
  split in the presets), else its training loss averaged over the last SMOOTH_FRACTION of its logged
  steps (one step's batch of 8 rows is noise: 3.19 nats where the mean of the last 13 steps was 2.51);
  the report says which. L_inf is the limit N -> infinity at these runs' budget and data: runs stopped
  at a token budget (not converged or early-stopped, as Kaplan et al.'s L(N)), so it includes the
  data-limited term of that budget; (N0/N)^alpha is the fitted reducible loss, shown beside the observed
  one, L - L_inf. Sizes trained with several seeds enter with every seed, and the bootstrap resamples
  sizes with all their seeds ("rows" resampling in groups: a size's seeds share its departure from the
  law); with one seed per size the bootstrap is the default parametric one.
- The extrapolation check: L(N) fitted without the largest size, its prediction of the total loss and
  of the reducible loss (observed - L_inf of that fit, against (N0/N)^alpha), what the law is about: a
  total loss within 0.3% can hide a reducible loss 30% off.
- L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, fastscale.fit.fit_chinchilla) on every
  run's final loss when each size has at least two token budgets, with its compute-optimal exponents
  a = beta/(alpha+beta) (N_opt ~ C^a) and b = alpha/(alpha+beta) (D_opt ~ C^b).
- L(C), the frontier and N_opt(C): the learning curves against the trainer's FLOP count, without each
  run's first EARLY_FRACTION of steps (fastscale.fit.frontier.early_rows: warmup and the first drop are
  not part of a power law), through fit_frontier, the function `fastscale fit --law frontier
  --drop-warmup` calls: on the held-out curves that command gives the report's numbers (the report
  prints it). The curves are the held-out loss at each evaluation where every run evaluated at least
  MIN_EVALS times; else the training loss smoothed by a trailing mean over SMOOTH_FRACTION of each
  run's logged steps (a batch of 8 rows mixes digits and photographs, whose losses differ by nats: a
  lower envelope of raw batch losses would follow the noise down, and even smoothed it sits below the
  held-out losses).
- IsoFLOP profiles (a sweep of compute budgets; fastscale.fit.fit_isoflop, fastscale.sweep.isoflop): per budget a parabola of the
  final losses in ln N and its minimum N_opt(C), then N_opt(C) = (C/C0)^a and D_opt, beside the
  frontier's a (Chinchilla's approaches 2 and 1).
- Repeated data: each run's epochs over the unique tokens of its train split; when runs repeat their
  data, the report says L(N) and L_inf then include a data-limited term and fits Muennighoff et al.'s
  data-constrained law (or says what the runs lack for it).
- The forecast: the N and compute-optimal C of chosen reducible losses, each row with its caveats: an
  interval spanning more than a decade, an N beyond the sizes trained, tokens beyond the training set.
- The gradient noise scale (tokens) logged by the trainer, per run, and B_crit(L) fitted to it.
- The sweep's study (fastscale.sweep.studies), from each run's study.json: its own section and plots.
- Compute: C is the trainer's count (FLOP_CONVENTION); each run's row shows 6ND beside it and, in a
  sweep of compute budgets, its budget (fastscale.sweep.spec: the counted C lands within 1% of it).

Every file is read through the sweep's checked readers (fastscale.sweep.index.read_state, and
fastscale.io.read_metrics for the learning curves): a damaged state file stops the report with one
message naming it, and the torn lines of a learning curve are skipped and listed in the report
("skipped_lines"), never dropped silently.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fastscale.fit import (
    FitInputError,
    fit_chinchilla,
    fit_critical_batch_vs_loss,
    fit_frontier,
    fit_isoflop,
    fit_power_law,
    holdout_largest,
)
from fastscale.fit.frontier import early_rows
from fastscale.io import read_metrics, write_atomically, write_json
from fastscale.units import per_item

from .index import read_state
from .isoflop import epochs, flops_per_parameter, plot_profiles, profiles_section, repeated_data_section
from .spec import COMPUTE_TOLERANCE, SweepSpec, study_options
from .studies import study

logger = logging.getLogger(__name__)

MIN_EVALS = 4  # held-out evaluations per run that make its held-out learning curve
SMOOTH_FRACTION = 0.1
EARLY_FRACTION = 0.1
SEED = 0
MIN_RUNS = 4
FORECAST_FRACTIONS = (0.5, 0.25, 0.1)  # default reducible losses to forecast: fractions of the largest model's
WIDE_INTERVAL = 10.0  # a forecast interval wider than this ratio (a decade) gets a caveat
FLOP_CONVENTION = (
    "C is the trainer's count of training FLOPs: flops_per_token x tokens, flops_per_token = 6N + 6 n_layer n_ctx d_attn "
    "(Kaplan et al. 2020, section 2.1: a forward pass of 2N + 2 n_layer n_ctx d_attn, the backward twice that), "
    "N the non-embedding parameters of the shape each run built; 6ND leaves the attention term out"
)


def load_runs(sweep_dir) -> list[dict]:
    """The done runs of a sweep, each with its config, summary, learning curve and the line numbers of
    its curve's unreadable lines ("skipped"), smallest N first."""
    sweep_dir = Path(sweep_dir)
    index_path = sweep_dir / "results.json"
    if not index_path.exists():
        raise FileNotFoundError(f"SWEEP_DIR={str(sweep_dir)!r}: no results.json; run `fastscale sweep {sweep_dir}` first")
    runs = []
    for name, entry in read_state(index_path)["runs"].items():
        if entry["state"] != "done":
            continue
        run_dir = sweep_dir / entry["run_dir"]
        metrics = read_metrics(run_dir / "metrics.jsonl")
        run = {"name": name, "config": read_state(run_dir / "config.json"), "summary": entry["summary"], "metrics": metrics.records,
               "skipped": metrics.skipped}
        if (run_dir / "study.json").exists():
            run["study"] = read_state(run_dir / "study.json")
        runs.append(run)
    return sorted(runs, key=lambda r: (r["config"]["n_params"], r["name"]))


def longest_runs(runs: list[dict]) -> list[dict]:
    """Per model size, the runs of its largest token budget (every seed): the ones L(N) is about."""
    most = {}
    for r in runs:
        most[r["config"]["n_params"]] = max(most.get(r["config"]["n_params"], 0), r["summary"]["tokens"])
    return [r for r in runs if r["summary"]["tokens"] == most[r["config"]["n_params"]]]


def final_losses(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(N, final loss) per run: the held-out loss at its last step, else its smoothed final training loss."""
    n = np.array([r["config"]["n_params"] for r in runs], dtype=np.float64)
    loss = np.array([r["summary"]["final_eval_loss"] if r["summary"]["final_eval_loss"] is not None else smoothed_final_loss(r["metrics"])
                     for r in runs], dtype=np.float64)
    return n, loss


def final_loss_kind(runs: list[dict]) -> str:
    """What final_losses holds for these runs, as the report says it."""
    evaluated = sum(r["summary"]["final_eval_loss"] is not None for r in runs)
    held_out = "held-out loss at the last step"
    smoothed = f"training loss averaged over the last {SMOOTH_FRACTION:.0%} of logged steps"
    if evaluated == len(runs):
        return held_out
    return smoothed if evaluated == 0 else f"{held_out} ({evaluated} runs), else {smoothed} ({len(runs) - evaluated} runs without an evaluation)"


def smoothed_final_loss(metrics: list[dict]) -> float:
    """The mean training loss of the last SMOOTH_FRACTION of a run's logged steps (at least one)."""
    losses = [m["loss"] for m in metrics if m.get("loss") is not None]
    return float(np.mean(losses[-max(1, round(SMOOTH_FRACTION * len(losses))) :])) if losses else float("nan")


def learning_curves(runs: list[dict]) -> tuple[dict, str]:
    """Rows (run, n_params, flops, loss) of every run's learning curve after its early steps, and which
    loss they hold: the held-out loss at each evaluation when every run evaluated at least MIN_EVALS
    times (each point covers the same held-out rows: nothing to smooth, no noise for the lower envelope
    to follow down), else the training loss smoothed over SMOOTH_FRACTION of each run's steps."""
    held_out = all(sum(m.get("eval_loss") is not None for m in r["metrics"]) >= MIN_EVALS for r in runs)
    rows = {"run": [], "n_params": [], "flops": [], "loss": []}
    for r in runs:
        _, flops, loss = _held_out_curve(r["metrics"]) if held_out else _smoothed_train_curve(r["metrics"])
        keep = ~early_rows(np.full(len(flops), r["name"]), flops, EARLY_FRACTION)
        rows["run"] += [r["name"]] * int(keep.sum())
        rows["n_params"] += [r["config"]["n_params"]] * int(keep.sum())
        rows["flops"] += list(flops[keep])
        rows["loss"] += list(loss[keep])
    return {k: np.asarray(v) for k, v in rows.items()}, "held-out" if held_out else "smoothed train"


def _held_out_curve(metrics: list[dict]):
    points = [(m["step"], m["flops"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    return tuple(np.array(column, dtype=np.float64) for column in zip(*points))


def _smoothed_train_curve(metrics: list[dict]):
    metrics = [m for m in metrics if m.get("loss") is not None]  # a step skipped as non-finite has no loss
    steps, flops, loss = (np.array([m[key] for m in metrics], dtype=np.float64) for key in ("step", "flops", "loss"))
    window = max(1, round(SMOOTH_FRACTION * len(loss)))
    return steps, flops, np.array([loss[max(0, i - window + 1) : i + 1].mean() for i in range(len(loss))])


def noise_scales(runs: list[dict]) -> dict:
    """Per run: (step, smoothed train loss, gradient noise scale) where the trainer measured it. The loss
    is the training curve's trailing mean (as for the frontier, over SMOOTH_FRACTION of the steps): the
    noise scale is an EMA over many steps, and one step's batch loss beside it scattered B_crit(L)'s
    points by nats along L."""
    out = {}
    for r in runs:
        steps, _, smoothed = _smoothed_train_curve(r["metrics"])
        at = {step: loss for step, loss in zip(steps, smoothed)}
        points = [(m["step"], at[m["step"]], m["noise_scale"]) for m in r["metrics"] if m.get("noise_scale") is not None and m["step"] in at]
        if points:
            out[r["name"]] = np.array(points, dtype=np.float64)
    return out


def _estimate(e) -> dict:
    return {"value": e.value, "low": e.low, "high": e.high}


def check_forecast_reducible(values) -> None:
    """None (the default targets) or a non-empty list of positive reducible losses in nats per token."""
    if values is not None and not (
        isinstance(values, (list, tuple)) and values and all(isinstance(eps, (int, float)) and np.isfinite(eps) and eps > 0 for eps in values)
    ):
        raise FitInputError(f"forecast_reducible={values!r}; expected a non-empty list of positive reducible losses (nats/token)")


def build_report(sweep_dir, *, n_bootstrap: int = 1000, forecast_reducible=None) -> tuple[dict, dict]:
    """All the report's numbers as a JSON-ready dict, and the fit objects the plots draw (no files written)."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    check_forecast_reducible(forecast_reducible)

    # Thousands of tiny L-BFGS-B refits: with OpenBLAS's threads on a machine busy with training runs
    # they spin-wait, and the report takes many times longer (benchmarks/results/notes.md).
    with threadpool_limits(limits=1, user_api="blas"):
        return _build_report(Path(sweep_dir), n_bootstrap, forecast_reducible)


def item_name(spec: dict) -> str:
    """What tokens_per_item tokens make in this sweep's data: a 4-frame video clip, else an image."""
    return "clip" if (spec.get("data") or {}).get("dataset") == "video" else "image"


def _build_report(sweep_dir: Path, n_bootstrap: int, forecast_reducible) -> tuple[dict, dict]:
    spec = read_state(sweep_dir / "sweep.json")
    tokens_per_item = spec.get("tokens_per_item")
    runs = load_runs(sweep_dir)
    if len(runs) < MIN_RUNS:
        raise FitInputError(f"SWEEP_DIR={str(sweep_dir)!r}: {len(runs)} done runs; a report needs at least {MIN_RUNS} (L(N) has 3 parameters)")
    longest = longest_runs(runs)
    n, loss = final_losses(longest)
    rows = run_rows(spec, runs)
    report = {"sweep": spec.get("name"), "tokens_per_item": tokens_per_item, "item": item_name(spec), "n_bootstrap": n_bootstrap, "runs": rows, "compute": compute_section(rows),
              "skipped_lines": {r["name"]: r["skipped"] for r in runs if r["skipped"]}}
    report["one_token_budget"] = len(spec.get("tokens", [])) == 1
    law = fit_power_law(n, loss, n_bootstrap=n_bootstrap, seed=SEED, **seed_groups(n))
    report["L_of_N"] = _law_section(law, longest, n, loss)
    if tokens_per_item:
        report["L_of_N"]["per_item"] = per_item(law.params, tokens_per_item)
    report["extrapolation"], holdout = _extrapolation(n, loss, n_bootstrap)
    report["L_of_N_D"] = _chinchilla(runs, n_bootstrap)
    curves, curve_loss = learning_curves(runs)
    frontier, report["frontier"] = _frontier(curves, n_bootstrap)
    report["frontier"]["curves"] = curve_loss
    report["frontier"]["drop_warmup"] = EARLY_FRACTION
    report["isoflop"], isoflop = _isoflop(spec, runs, report["frontier"], n_bootstrap)
    report["repeated_data"] = repeated_data_section(runs, n_bootstrap, SEED)
    unique = max(report["repeated_data"]["unique_tokens"], default=None)
    report["forecast"] = _forecast(law, frontier, n, tokens_per_item, forecast_reducible, unique)
    report["noise_scale"], noise_fit = _noise(runs, n_bootstrap)
    if spec.get("study"):
        report["study"] = study_section(spec["study"], runs, n_bootstrap)
    fits = {"L_of_N": law, "N": n, "loss": loss, "holdout": holdout, "shorter": _shorter_runs(runs, longest), "frontier": frontier, "curves": curves,
            "noise": noise_scales(runs), "noise_fit": noise_fit, "n_params": {r["name"]: r["config"]["n_params"] for r in runs},
            "tokens": {r["name"]: r["summary"]["tokens"] for r in runs}, "isoflop": isoflop}
    return report, fits


def seed_groups(n: np.ndarray) -> dict:
    """fit_power_law's bootstrap options for runs at these sizes: with several seeds at a size, resample
    sizes with all their seeds (they share the size's departure from the law, so they are not the
    independent points the parametric draws assume); with one run per size, the default."""
    return {"groups": n, "resampling": "rows"} if len(np.unique(n)) < len(n) else {}


def _law_section(law, longest: list[dict], n: np.ndarray, loss: np.ndarray) -> dict:
    """L(N)'s summary with each run's observed reducible loss beside the fitted one, what its losses are,
    what L_inf includes (the runs' tokens and epochs), and the seed-to-seed spread where sizes have seeds."""
    spread = []
    for size in np.unique(n):
        same = loss[n == size]
        if len(same) > 1:
            spread.append({"N": float(size), "runs": len(same), "mean": float(same.mean()), "std": float(same.std(ddof=1))})
    return {**law.summary(), "runs": [r["name"] for r in longest], "N": n.tolist(), "loss": loss.tolist(), "loss_kind": final_loss_kind(longest),
            "reducible": law.reducible(n).tolist(), "reducible_observed": (loss - law.params["L_inf"]).tolist(),
            "tokens": [r["summary"]["tokens"] for r in longest], "epochs": [epochs(r) for r in longest], "seed_spread": spread,
            "bootstrap": "sizes resampled with all their seeds" if seed_groups(n) else "parametric"}


def _shorter_runs(runs: list[dict], longest: list[dict]) -> dict:
    """Token budget -> (N, final loss) of the runs L(N) leaves out (shorter budgets), for its plot."""
    names = {r["name"] for r in longest}
    shorter = {}
    for r in runs:
        if r["name"] not in names:
            shorter.setdefault(r["summary"]["tokens"], []).append(r)
    return {tokens: final_losses(group) for tokens, group in sorted(shorter.items())}


def _chinchilla(runs: list[dict], n_bootstrap: int) -> dict | None:
    """L(N, D) on every run's final loss when each of at least 3 sizes has at least 2 token counts
    (None otherwise: one budget per size cannot separate N from D)."""
    budgets = {}
    for r in runs:
        budgets.setdefault(r["config"]["n_params"], set()).add(r["summary"]["tokens"])
    if len(budgets) < 3 or min(map(len, budgets.values())) < 2:
        return None
    n, loss = final_losses(runs)
    tokens = np.array([r["summary"]["tokens"] for r in runs], dtype=np.float64)
    try:
        fit = fit_chinchilla(n, tokens, loss, n_bootstrap=n_bootstrap, seed=SEED)
    except FitInputError as error:
        logger.warning("no L(N, D) fit: %s", error)
        return {"error": str(error)}
    return {**fit.summary(), "runs": len(runs), "loss_kind": final_loss_kind(runs)}


def compute_budgets(spec: dict) -> dict:
    """Run name -> its compute budget in FLOPs, from the sweep file (empty under token budgets)."""
    return {run.name: run.compute for run in SweepSpec.from_dict(spec).runs()} if "compute" in spec else {}


def run_rows(spec: dict, runs: list[dict]) -> list[dict]:
    """The runs table: each run's shape, counts and losses, its counted C beside 6ND, and its budget."""
    budgets = compute_budgets(spec)
    return [_run_row(r, budgets.get(r["name"])) for r in runs]


def _run_row(r: dict, budget: float | None) -> dict:
    model, summary = r["config"]["model"], r["summary"]
    mfus = [m["mfu"] for m in r["metrics"] if m.get("mfu") is not None]
    six_nd = 6.0 * r["config"]["n_params"] * summary["tokens"]
    return {
        "name": r["name"], "n_params": r["config"]["n_params"], "n_layer": model["n_layer"], "d_model": model["d_model"],
        "n_head": model["n_head"], "tokens": summary["tokens"], "flops": summary["flops"], "six_nd": six_nd,
        "flops_over_six_nd": summary["flops"] / six_nd if six_nd else None, "compute_budget": budget,
        "flops_over_budget": summary["flops"] / budget if budget else None, "train_loss": smoothed_final_loss(r["metrics"]),
        "final_eval_loss": summary["final_eval_loss"], "tokens_per_s": summary["tokens_per_s"],
        "mfu": float(np.median(mfus)) if mfus else None, "noise_scale": summary.get("noise_scale"), "epochs": epochs(r),
    }


def compute_section(rows: list[dict]) -> dict:
    """The FLOP convention, the range of C / 6ND over the runs and, under compute budgets, the largest
    relative distance of a run's counted C from its budget."""
    ratios = [r["flops_over_six_nd"] for r in rows if r["flops_over_six_nd"] is not None]
    to_budget = [abs(r["flops_over_budget"] - 1) for r in rows if r["flops_over_budget"] is not None]
    return {"convention": FLOP_CONVENTION, "flops_over_six_nd": [min(ratios), max(ratios)] if ratios else None,
            "max_budget_error": max(to_budget) if to_budget else None, "budget_tolerance": COMPUTE_TOLERANCE}


def _extrapolation(n, loss, n_bootstrap):
    """L(N) without the runs of the largest size (all its seeds) and its predictions of their total and
    reducible loss (the reducible observed as loss - that fit's L_inf), and the check (None when too few
    sizes) for the plot."""
    sizes = len(np.unique(n))
    if sizes <= MIN_RUNS:
        return {"error": f"{sizes} sizes: the check needs {MIN_RUNS + 1}, to fit L(N) to {MIN_RUNS} without the largest"}, None
    largest = int(np.sum(n == n.max()))
    seeds = {"per_row": {"groups": n}, "resampling": "rows"} if seed_groups(n[n < n.max()]) else {}
    check = holdout_largest(fit_power_law, (n,), loss, largest, n_bootstrap=n_bootstrap, seed=SEED, **seeds)
    l_inf = check.fit.params["L_inf"]
    predicted, observed = check.fit.reducible(check.inputs[0]), check.observed - l_inf
    return {
        "held_out_N": check.inputs[0].tolist(), "observed": check.observed.tolist(), "predicted": check.predicted.tolist(),
        "low": check.low.tolist(), "high": check.high.tolist(), "relative_error": check.relative_error.tolist(),
        "mean_abs_rel_error": check.mean_abs_rel_error, "fit": check.fit.summary(),
        "reducible_observed": observed.tolist(), "reducible_predicted": predicted.tolist(),
        "reducible_relative_error": ((predicted - observed) / observed).tolist(),
    }, check


def _frontier(curves, n_bootstrap):
    try:
        fit = fit_frontier(curves["run"], curves["n_params"], curves["flops"], curves["loss"], n_bootstrap=n_bootstrap, seed=SEED)
    except FitInputError as error:
        logger.warning("no frontier fit: %s", error)
        return None, {"error": str(error)}
    return fit, {
        "L_of_C": fit.loss_fit.summary(),
        "N_opt": fit.allocation.summary(),
        "frontier_runs": sorted(set(fit.frontier.run.tolist())),
        "optimal_compute": fit.optimal_compute.tolist(),
        "optimal_n_params": fit.optimal_n_params.tolist(),
        "max_above_frontier": fit.max_above_frontier,
    }


def _isoflop(spec: dict, runs: list[dict], frontier: dict, n_bootstrap: int):
    """The IsoFLOP section (fastscale.sweep.isoflop) of a sweep of compute budgets, and what its plot
    draws: (None, None) under token budgets; an "error" when fewer than MIN_BUDGETS budgets have
    MIN_POINTS_PER_BUDGET sizes or a minimum inside them."""
    budgets = compute_budgets(spec)
    if not budgets:
        return None, None
    runs = [r for r in runs if r["name"] in budgets]
    n, loss = final_losses(runs)
    compute = np.array([budgets[r["name"]] for r in runs])
    try:
        profiles = fit_isoflop(n, compute, loss, n_bootstrap=n_bootstrap, seed=SEED)
    except FitInputError as error:
        logger.warning("no IsoFLOP profiles: %s", error)
        return {"error": str(error)}, None
    per_token = np.array([r["summary"]["flops"] / r["summary"]["tokens"] for r in runs])
    section = profiles_section(profiles, flops_per_parameter(n, per_token), frontier.get("N_opt"))
    return section, {"profiles": profiles, "N": n, "compute": compute, "loss": loss}


def _forecast(law, frontier, n, tokens_per_item, reducible=None, unique_tokens=None) -> list[dict]:
    """For each reducible loss (nats/token; default: fractions of the largest model's), the N that L(N)
    says reaches it and the compute at which that N is compute-optimal by the frontier's N_opt(C)
    (C = C0 N^(1/a)), with the tokens D = C / 6N. Not L(C) solved for the loss: L(C) is fitted to the
    envelope of learning curves (training losses where evaluations are few), L(N) to final held-out
    losses, and their asymptotes can differ by more than these targets (1.89 against 1.995 nats/token
    on image8's smoothed training curves)."""
    if reducible is None:
        largest = float(law.reducible(n.max()))
        if not largest > 0:  # L(N) that does not fall with N (an IsoFLOP profile's largest budget can rise): nothing to halve
            return []
        reducible = [largest * fraction for fraction in FORECAST_FRACTIONS]
    with np.errstate(over="ignore"):  # bootstrap draws with tiny alpha forecast N = inf: it only widens the interval
        rows = [_forecast_row(law, frontier, float(eps), tokens_per_item) for eps in reducible]
    for row in rows:
        row["caveats"] = forecast_caveats(row, float(n.max()), unique_tokens)
    return rows


def _forecast_row(law, frontier, eps, tokens_per_item) -> dict:
    size = law.x_for_reducible(eps)
    compute = frontier.allocation.compute_for(size.value) if frontier is not None and np.isfinite(size.value) else None
    return {
        "reducible": eps, "reducible_per_item": eps * tokens_per_item if tokens_per_item else None, "loss": law.params["L_inf"] + eps,
        "N": _estimate(size), "C": _estimate(compute) if compute else None,
        "D": compute.value / (6.0 * size.value) if compute else None,
    }


def forecast_caveats(row: dict, largest_n: float, unique_tokens: float | None) -> list[str]:
    """What a forecast row extrapolates beyond: intervals over more than a decade, an N past the sizes
    trained, and tokens past the training set (the law was measured on fresh or barely repeated data;
    repeating it, the loss falls more slowly: Muennighoff et al. 2023)."""
    caveats = []
    for name in ("N", "C"):
        e = row[name]
        if e is not None and not (0 < e["low"] and np.isfinite(e["high"]) and e["high"] / e["low"] <= WIDE_INTERVAL):
            span = f"{np.log10(e['high'] / e['low']):.1f} decades" if 0 < e["low"] and np.isfinite(e["high"]) else "an unbounded range"
            caveats.append(f"the {name} interval spans {span}")
    if row["N"]["value"] > largest_n:
        caveats.append(f"N is {row['N']['value'] / largest_n:.3g}x the largest size trained")
    if row["D"] is not None and unique_tokens and row["D"] > unique_tokens:
        caveats.append(f"D = {row['D']:.3g} tokens is {row['D'] / unique_tokens:.2g} epochs of the {unique_tokens:,.0f} training tokens: "
                       "the forecast assumes fresh data, and repeated data is worth less")
    return caveats


def _noise(runs, n_bootstrap):
    """The noise-scale section, and B_crit(L)'s fit (None where not fitted) for the plot."""
    series = noise_scales(runs)
    out, fit = {"per_run": {name: {"step": s[:, 0].tolist(), "loss": s[:, 1].tolist(), "noise_scale": s[:, 2].tolist()} for name, s in series.items()}}, None
    if series:
        # the EMA's first values are dominated by its start: use each run's second half
        points = np.concatenate([s[len(s) // 2 :] for s in series.values()])
        points = points[np.isfinite(points).all(axis=1) & (points[:, 2] > 0)]
        try:
            fit = fit_critical_batch_vs_loss(points[:, 1], points[:, 2], n_bootstrap=n_bootstrap, seed=SEED)
            out["B_crit_of_L"] = fit.summary()
        except FitInputError as error:
            out["B_crit_of_L"] = {"error": str(error)}
    return out, fit


def _plots(fits: dict, out: Path) -> list[str]:
    from fastscale.fit.plots import plot_frontier, plot_noise_scale, plot_scaling

    shorter = {f"budget {tokens:.3g} tokens (not fitted)": points for tokens, points in fits["shorter"].items()}
    names = []
    for suffix in (".png", ".svg"):
        plot_scaling(fits["L_of_N"], fits["N"], fits["loss"], out / f"L_of_N{suffix}", xlabel="N (non-embedding parameters)",
                     ylabel="final loss (nats/token)", holdout=fits["holdout"], others=shorter, names={"x0": "N0"})
        names.append(f"L_of_N{suffix}")
        if fits["frontier"] is not None:
            curves = fits["curves"]
            plot_frontier(fits["frontier"], curves["run"], curves["flops"], curves["loss"], out / f"frontier{suffix}", n_params=curves["n_params"])
            names.append(f"frontier{suffix}")
        if fits["noise"]:
            plot_noise_scale(fits["noise"], fits["n_params"], fits["tokens"], out / f"noise_scale{suffix}", fits["noise_fit"])
            names.append(f"noise_scale{suffix}")
        if fits["isoflop"]:
            iso = fits["isoflop"]
            frontier = fits["frontier"].allocation if fits["frontier"] is not None else None
            plot_profiles(iso["profiles"], iso["N"], iso["compute"], iso["loss"], frontier, out / f"isoflop{suffix}")
            names.append(f"isoflop{suffix}")
    return names


def study_section(study_spec: dict, runs: list[dict], n_bootstrap: int, seed: int = SEED) -> dict:
    """The study's section: its own report on the runs it evaluated (those with a study.json), the others
    named in "missing"; with none evaluated, an "error" instead."""
    kind = study_spec["kind"]
    evaluated = [r for r in runs if r.get("study")]
    missing = [r["name"] for r in runs if not r.get("study")]
    if missing:
        logger.warning("%s study: %d runs have no study.json (not evaluated): %s", kind, len(missing), ", ".join(missing))
    if not evaluated:
        return {"kind": kind, "error": f"no run has a {kind} study evaluation (runs: {missing})", "missing": missing}
    return {"kind": kind, **study(kind).report(evaluated, study_options(study_spec), n_bootstrap, seed), "missing": missing}


def study_markdown(section: dict) -> list[str]:
    """The study's report.md lines, with the runs it left out."""
    if "error" in section:
        return [f"## The {section['kind']} study", "", f"No {section['kind']} study results: {section['error']}.", ""]
    lines = study(section["kind"]).markdown(section)
    if section["missing"]:
        lines += ["", f"Runs without a study evaluation (left out): {', '.join(section['missing'])}.", ""]
    return lines


def _study_plots(report: dict, out: Path) -> list[str]:
    section = report.get("study")
    return study(section["kind"]).plots(section, out) if section and "error" not in section else []


def _interval(summary: dict, name: str) -> str:
    value = summary["params"][name]
    if name in summary["ci"]:
        low, high = summary["ci"][name]
        return f"{value:.4g} [{low:.4g}, {high:.4g}]"
    return f"{value:.4g}"


def _skipped_markdown(skipped: dict) -> list[str]:
    """The learning-curve lines the report could not read (torn by a kill, damaged), run by run."""
    if not skipped:
        return []
    runs = "; ".join(f"{name}: {len(lines)} (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines[:10]))}{', ...' if len(lines) > 10 else ''})"
                     for name, lines in skipped.items())
    return [f"Skipped unreadable lines of metrics.jsonl (torn by a kill or damaged; the other records of those runs are used): {runs}.", ""]


def _compute_markdown(compute: dict) -> list[str]:
    text = f"Compute: {compute['convention']}."
    if compute["flops_over_six_nd"]:
        low, high = compute["flops_over_six_nd"]
        text += f" Here C / 6ND = {low:.3f} to {high:.3f} (the runs table has both)."
    if compute["max_budget_error"] is not None:
        text += (f" Compute budgets: each run trained budget / flops_per_token tokens in whole optimizer steps; every run's C is within "
                 f"{compute['max_budget_error']:.2%} of its budget (the sweep refuses more than {compute['budget_tolerance']:.0%}).")
    return [text, ""]


def _estimate_text(e: dict) -> str:
    return f"{e['value']:.3g} [{e['low']:.3g}, {e['high']:.3g}]"


def _largest_budget_text(report: dict) -> str:
    """Which runs L(N) uses, and what that means when they repeat their data or share a compute budget."""
    text = "Each size's runs of its largest " + ("compute budget: the loss at a fixed C, not at convergence (an IsoFLOP profile, below)."
                                                 if report["isoflop"] is not None else "token budget.")
    repeating = [e for e in report["L_of_N"]["epochs"] if e is not None and e > 1]
    if repeating:
        text += f" {len(repeating)} of them repeat their data (up to {max(repeating):.1f} epochs): see Repeated data."
    return text


def _isoflop_markdown(section: dict | None, compute: dict) -> list[str]:
    """The IsoFLOP section: the plot, a row per budget, the line through the minima, approach 1 beside it."""
    if section is None:
        return []
    lines = ["", "## IsoFLOP profiles (Chinchilla's approach 2)", ""]
    if "error" in section:
        return lines + [f"Not fitted: {section['error']}"]
    within = f"every run within {compute['max_budget_error']:.2%} of its budget" if compute["max_budget_error"] is not None else ""
    lines += ["![IsoFLOP profiles](isoflop.png)", "",
              f"Per compute budget C (the trainer's count, 6N + attention of each built shape; {within}), the final eval loss against N "
              f"with a parabola in ln N through the lowest loss and up to 2 sizes on each side; its minimum is N_opt(C). D_opt = C / "
              "flops_per_token(N_opt) (flops_per_token / N interpolated between the trained shapes); C / 6N_opt is Chinchilla's convention, "
              "which leaves the attention term out. Intervals: a parametric bootstrap of the parabolas and the line together "
              "(fastscale.fit.fit_isoflop).", "",
              "| C (FLOPs) | sizes in the parabola | N_opt [95%] | L_opt [95%] | D_opt [95%] | C / 6N_opt | flags (in report.json) |",
              "|---|---|---|---|---|---|---|"]
    for b in section["budgets"]:
        lines.append(f"| {b['C']:.3g} | {len(b['N'])} ({min(b['N']):.3g} to {max(b['N']):.3g}) | {_estimate_text(b['N_opt'])} | "
                     f"{_estimate_text(b['L_opt'])} | {_estimate_text(b['D_opt'])} | {b['D_opt_6N']:.3g} | {_flag_kinds(b['fit']['flags'])} |")
    fit, d = section["N_opt"], section["D_opt_exponent_6N"]
    lines += ["", f"- N_opt(C) = (C/C0)^a: a = {_interval(fit, 'a')}, C0 = {_interval(fit, 'C0')}; flags: {'; '.join(fit['flags']) or 'none'}",
              f"- D_opt ~ C^b with b = 1 - a = {d['value']:.3g} [{d['low']:.3g}, {d['high']:.3g}] (under C = 6ND)",
              f"- {section['comparison']}"]
    if section["skipped"]:
        lines.append("- budgets without a minimum inside their sizes (not used): "
                     + "; ".join(f"C = {c}: {reason}" for c, reason in section["skipped"].items()))
    return lines


def _flag_kinds(flags: list) -> str:
    """The kinds of a fit's flags ("KIND: detail"), for a table cell; the details are in report.json."""
    return ", ".join(dict.fromkeys(flag.split(":")[0] for flag in flags)) or "none"


def _repeated_markdown(section: dict) -> list[str]:
    """Whether runs repeat their data, what that does to L(N), and the data-constrained law for them."""
    lines = ["", "## Repeated data", ""]
    unique = ", ".join(f"{u:,.0f}" for u in section["unique_tokens"]) or "unknown"
    if section["unknown_runs"]:
        lines.append(f"Epochs unknown for {len(section['unknown_runs'])} run(s) (no final eval loss, or their config.json does not "
                     "record the train split).")
    if not section["repeating_runs"]:
        most = f" (at most {section['max_epochs']:.2f} epochs)" if section["max_epochs"] is not None else ""
        return lines + [f"No run repeats its training data ({unique} unique tokens){most}."]
    lines += [f"{len(section['repeating_runs'])} run(s) repeat their training data, up to {section['max_epochs']:.1f} epochs of its {unique} "
              "unique tokens (the epochs column of the runs table). Their losses include a data-limited term: L(N), L(C) and their L_inf "
              "describe these runs on this data set, not model size alone, and L_inf is not the task's irreducible loss. The law for "
              "repeated data is Muennighoff et al. 2023's data-constrained law (`fastscale fit --law data-constrained --unique-D`), "
              "which discounts repeated tokens (R_D*) and parameters beyond what the unique data can use (R_N*).", ""]
    fit = section["data_constrained"]
    if "error" in fit:
        return lines + [f"Not fitted on these runs: {fit['error']}"]
    lines.append("Fitted to every run's final eval loss (N, D = tokens seen, U_D = the unique tokens among them): "
                 + ", ".join(f"{name} = {_interval(fit, name)}" for name in ("R_D_star", "R_N_star", "E", "alpha", "beta"))
                 + f"; flags: {'; '.join(fit['flags']) or 'none'}.")
    repeats = section["max_epochs"] - 1
    if fit["params"]["R_D_star"] > repeats:
        lines += ["", f"R_D* = {fit['params']['R_D_star']:.3g} is beyond the most repetitions any run made ({repeats:.1f}): these runs do "
                  "not reach the point where a repeated token has lost most of its value, so they do not measure R_D*."]
    if fit["flags"]:
        lines += ["", "With these flags the fit is not a measurement of the decay constants: more runs at several repetition levels "
                  "and sizes (and a single-epoch base) are what the law needs."]
    return lines


def _seeds_text(law: dict) -> str:
    spread = law["seed_spread"]
    if not spread:
        return "one seed per size: the intervals are a parametric bootstrap (noise drawn around the fitted law)"
    sizes = "; ".join(f"N = {s['N']:.3g}: {s['runs']} seeds, mean {s['mean']:.4f}, std {s['std']:.4f}" for s in spread)
    return f"seeds: {sizes}; the bootstrap resamples sizes, each with all its seeds"


def _l_inf_text(report: dict) -> str:
    """What L_inf includes: the limit in N at these runs' tokens and data, not the data's entropy."""
    law, unique = report["L_of_N"], report["repeated_data"]["unique_tokens"]
    known = [e for e in law["epochs"] if e is not None]
    epochs = f", {_range(known, '.2f')} epochs of the {max(unique):,.0f} unique training tokens" if known and unique else ""
    text = (f"What L_inf includes: it is the limit N -> infinity at these runs' training, D = {_range(law['tokens'], ',.0f')} "
            f"tokens{epochs}, stopped at a token budget rather than converged or early-stopped (as Kaplan et al.'s L(N)). So it holds the "
            "data-limited loss of D tokens (Chinchilla's B/D^beta) besides the data's entropy, and a longer budget lowers it.")
    nd = report["L_of_N_D"]
    if nd and "params" in nd:
        p, d = nd["params"], max(law["tokens"])
        text += (f" L(N, D) below puts the limit of both at E = {p['E']:.4g} nats/token, and B/D^beta = {p['B'] / d ** p['beta']:.4g} at "
                 f"D = {d:,.0f}.")
    return text


def _range(values, spec: str) -> str:
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low} to {high}"


def _extrapolation_markdown(ext: dict) -> list[str]:
    """The check on the total loss and, what the law is about, on the reducible loss."""
    lines = ["", "## Extrapolation check", ""]
    if "error" in ext:
        return lines + [f"Not done: {ext['error']}"]
    held = f"N = {ext['held_out_N'][0]:.3g}" + (f", {len(ext['held_out_N'])} seeds" if len(ext["held_out_N"]) > 1 else "")
    lines += [f"L(N) fitted without the largest size ({held}; alpha without it: {_interval(ext['fit'], 'alpha')}, "
              f"L_inf {_interval(ext['fit'], 'L_inf')}):", "",
              "| | predicted [95%] | observed | relative error |", "|---|---|---|---|"]
    for i in range(len(ext["held_out_N"])):
        lines += [f"| total loss | {ext['predicted'][i]:.4f} [{ext['low'][i]:.4f}, {ext['high'][i]:.4f}] | {ext['observed'][i]:.4f} | "
                  f"{ext['relative_error'][i]:+.2%} |",
                  f"| reducible loss (observed: loss - L_inf of this fit) | {ext['reducible_predicted'][i]:.4f} | {ext['reducible_observed'][i]:.4f} | "
                  f"{ext['reducible_relative_error'][i]:+.1%} |"]
    return lines + ["", "The reducible loss is what the law predicts; a small error on the total loss, most of which is L_inf, can hide a "
                    "large one on it."]


def _chinchilla_markdown(section: dict | None) -> list[str]:
    """L(N, D) and its compute-optimal exponents, when the grid has two budgets per size."""
    if section is None:
        return []
    lines = ["", "## L(N, D): Chinchilla's law on every run", ""]
    if "error" in section:
        return lines + [f"Not fitted: {section['error']}"]
    return lines + [
        f"L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3: Huber loss on log L) on the final loss of all "
        f"{section['runs']} runs (the {section['loss_kind']}), D the tokens each trained on:", "",
        "- " + ", ".join(f"{name} = {_interval(section, name)}" for name in ("E", "A", "B", "alpha", "beta")),
        f"- compute-optimal under C = 6ND: N_opt ~ C^a with a = beta/(alpha+beta) = {_interval(section, 'a')}, "
        f"D_opt ~ C^b with b = alpha/(alpha+beta) = {_interval(section, 'b')} (Chinchilla: about 0.5 and 0.5)",
        f"- flags: {'; '.join(section['flags']) or 'none'}"]


def _forecast_markdown(rows: list[dict], item: str) -> list[str]:
    """The forecast table, or why there is none."""
    if not rows:
        return ["", "## Forecast", "", "None: L(N) has no reducible loss at the largest model (its loss does not fall with N), so no size to forecast."]
    lines = ["", "## Forecast", "", "The model size L(N) needs for a reducible loss, and the compute at which that size is compute-optimal "
              "(N_opt(C) inverted; its interval is over the N_opt(C) fit at the point N). D is C / 6N: it leaves out the attention term "
              "C counts, so it overstates the tokens by C / 6ND (the runs table gives that ratio at the sizes trained).", "",
              f"| reducible (nats/token) | reducible (nats/{item}) | loss | N [95%] | C FLOPs [95%] | D = C / 6N tokens |", "|---|---|---|---|---|---|"]
    for row in rows:
        c = row["C"]
        c_text = f"{c['value']:.3g} [{c['low']:.3g}, {c['high']:.3g}]" if c else "-"
        d_text = f"{row['D']:.3g}" if row["D"] else "-"
        per_image = f"{row['reducible_per_item']:.2f}" if row["reducible_per_item"] is not None else "-"
        lines.append(f"| {row['reducible']:.4f} | {per_image} | {row['loss']:.4f} | {row['N']['value']:.3g} [{row['N']['low']:.3g}, {row['N']['high']:.3g}] "
                     f"| {c_text} | {d_text} |")
    caveats = [f"- reducible {row['reducible']:.4f}: " + "; ".join(row["caveats"]) for row in rows if row["caveats"]]
    return lines + (["", "Caveats (extrapolations beyond what was measured):", *caveats] if caveats else [])


def _markdown(report: dict) -> str:
    law, tpi, item = report["L_of_N"], report["tokens_per_item"], report.get("item", "image")
    lines = [f"# Scaling report: sweep `{report['sweep']}`", "",
             f"{len(report['runs'])} finished runs; intervals are 95% bootstrap ({report['n_bootstrap']} draws). Losses in nats per token"
             + (f"; per {item} = per token x {tpi}." if tpi else "."), "",
             *_compute_markdown(report["compute"]),
             *_skipped_markdown(report["skipped_lines"]),
             "## L(N): final loss against non-embedding parameters", "",
             _largest_budget_text(report) + f" Final loss: the {law['loss_kind']}.", "", "![L(N)](L_of_N.png)", "",
             "L(N) = L_inf + (N0/N)^alpha. Left: the loss; right: the reducible loss L - L_inf on log-log axes, where the law is a straight "
             "line. The held-out point of the extrapolation check is marked; shorter token budgets are drawn hollow (not fitted).", "",
             f"- alpha = {_interval(law, 'alpha')}", f"- L_inf = {_interval(law, 'L_inf')} nats/token"
             + (f" = {law['per_item']['L_inf']:.4g} nats/{item}" if tpi else ""),
             f"- N0 = {_interval(law, 'x0')}", f"- converged: {law['converged']}; flags: {law['flags'] or 'none'}",
             f"- {_seeds_text(law)}", "", _l_inf_text(report), "",
             f"| run | N | final loss | observed reducible L - L_inf | fitted reducible (N0/N)^alpha | fitted reducible (nats/{item}) |",
             "|---|---|---|---|---|---|"]
    for name, n, loss, observed, red in zip(law["runs"], law["N"], law["loss"], law["reducible_observed"], law["reducible"]):
        lines.append(f"| {name} | {n:.3g} | {loss:.4f} | {observed:.4f} | {red:.4f} | {f'{red * tpi:.2f}' if tpi else '-'} |")
    lines += _extrapolation_markdown(report["extrapolation"])
    lines += _chinchilla_markdown(report["L_of_N_D"])
    lines += ["", "## L(C), the compute-efficient frontier and N_opt(C)", ""]
    frontier = report["frontier"]
    if "error" in frontier:
        lines.append(f"No frontier fit: {frontier['error']}")
    else:
        lines += ["![frontier](frontier.png)", "",
                  f"The frontier at C is the lowest loss any run reached with at most C (so it never rises), over the learning curves "
                  f"({frontier['curves']} loss) without each run's first {frontier['drop_warmup']:.0%} of steps. A lower envelope of noisy curves "
                  "sits below the noise-free one (it follows each curve's downward fluctuations): held-out curves keep that small."
                  + (f" The same fit from the command line: `fastscale fit SWEEP_DIR/runs --law frontier --N n_params --C flops --loss eval_loss "
                     f"--drop-warmup {frontier['drop_warmup']:g} --bootstrap {report['n_bootstrap']}`." if frontier["curves"] == "held-out" else ""), "",
                  "L(C) = L_inf + (C0/C)^alpha, C in FLOPs, on or below the frontier:", "",
                  f"- alpha_C = {_interval(frontier['L_of_C'], 'alpha')}, L_inf = {_interval(frontier['L_of_C'], 'L_inf')}, C0 = {_interval(frontier['L_of_C'], 'x0')}",
                  f"- N_opt(C) = (C/C0)^a: a = {_interval(frontier['N_opt'], 'a')}, C0 = {_interval(frontier['N_opt'], 'C0')}",
                  f"- runs on the frontier ({len(frontier['frontier_runs'])}): {', '.join(frontier['frontier_runs'])}",
                  f"- flags: {(frontier['L_of_C']['flags'] + frontier['N_opt']['flags']) or 'none'}"]
        if report["one_token_budget"]:
            lines += ["", "Caveat: every run saw the same number of tokens, so each learning curve spans a compute range proportional "
                      "to its N and the frontier orders the runs by size almost by construction: an exponent a near 1 says little. "
                      "Several token budgets per size (or runs to convergence) measure N_opt(C)."]
    lines += _isoflop_markdown(report["isoflop"], report["compute"])
    lines += _repeated_markdown(report["repeated_data"])
    lines += _forecast_markdown(report["forecast"], item)
    noise = report["noise_scale"]
    lines += ["", "## Gradient noise scale", ""]
    if noise["per_run"]:
        lines += ["![noise scale](noise_scale.png)", "", "| run | last B_simple (tokens) |", "|---|---|"]
        lines += [f"| {name} | {s['noise_scale'][-1]:.4g} |" for name, s in noise["per_run"].items()]
        fit = noise.get("B_crit_of_L", {})
        lines += ["", f"B_crit(L) = B_star / L^(1/alpha_B): B_star = {_interval(fit, 'B_star')}, alpha_B = {_interval(fit, 'alpha_B')}; flags: {fit['flags'] or 'none'}"
                  if "params" in fit else f"B_crit(L): {fit.get('error', 'not fitted')}"]
    else:
        lines.append("Not logged by these runs.")
    if report.get("study"):
        lines += [""] + study_markdown(report["study"])
    lines += ["", "## Runs", "", "C: FLOPs as the trainer counts them (see the top); 6ND without the attention term; budget: the run's compute budget; "
              f"train loss: the mean of the last {SMOOTH_FRACTION:.0%} of the logged steps' training losses; final eval loss: the held-out loss at "
              "the last step.", "",
              "| run | N | n_layer | d_model | n_head | tokens | epochs | C (FLOPs) | 6ND | C / 6ND | C / budget | train loss | final eval loss | tokens/s | MFU |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        eval_loss = f"{r['final_eval_loss']:.4f}" if r["final_eval_loss"] is not None else "-"
        to_six_nd = f"{r['flops_over_six_nd']:.3f}" if r["flops_over_six_nd"] is not None else "-"
        to_budget = f"{r['flops_over_budget']:.4f}" if r["flops_over_budget"] is not None else "-"
        epochs = f"{r['epochs']:.2f}" if r["epochs"] is not None else "-"
        lines.append(f"| {r['name']} | {r['n_params']:,} | {r['n_layer']} | {r['d_model']} | {r['n_head']} | {r['tokens']:,} | {epochs} | {r['flops']:.3g} | "
                     f"{r['six_nd']:.3g} | {to_six_nd} | {to_budget} | {r['train_loss']:.4f} | {eval_loss} | {r['tokens_per_s']:.0f} | {mfu} |")
    return "\n".join(lines) + "\n"


def write_report(sweep_dir, *, n_bootstrap: int = 1000, forecast_reducible=None) -> dict:
    """Write report.json, report.md and the plots into sweep_dir; returns the report."""
    sweep_dir = Path(sweep_dir)
    report, fits = build_report(sweep_dir, n_bootstrap=n_bootstrap, forecast_reducible=forecast_reducible)
    report["plots"] = _plots(fits, sweep_dir) + _study_plots(report, sweep_dir)
    write_json(sweep_dir / "report.json", report, indent=2)
    write_atomically(sweep_dir / "report.md", _markdown(report))
    return report
