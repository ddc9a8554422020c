"""The report's IsoFLOP profiles (Hoffmann et al. 2022, "Training Compute-Optimal Large Language
Models", section 3.2, approach 2) and the epochs each run trained over its unique data.

IsoFLOP profiles: the runs of each compute budget C, final held-out loss against the non-embedding N of
each run's built shape. The numbers are fastscale.fit.fit_isoflop's: per budget a parabola in ln N
around the lowest loss and its vertex N_opt(C), then N_opt(C) = (C/C0)^a through the vertices, with
intervals from its parametric bootstrap of both stages at once (its docstring says why). This module
adds what is the report's: D_opt in both FLOP conventions, the comparison with approach 1, the
repeated-data section and the plot.

C is the trainer's count (fastscale.sweep.spec: flops_per_token of the built shape, 6N + attention);
D_opt(C) = C / flops_per_token(N_opt), with flops_per_token / N interpolated in ln N between the shapes
the sweep trained; the report also gives C / 6 N_opt, Chinchilla's convention.
"""

from __future__ import annotations

import numpy as np

from fastscale.fit import FitInputError, IsoFlopMinima, fit_data_constrained


def flops_per_parameter(n_params, flops_per_token):
    """flops_per_token / N as a function of N, interpolated in ln N between the trained shapes (constant
    beyond them): 6 plus the attention term's share, which falls as the shapes widen."""
    n, ratio = np.asarray(n_params, dtype=np.float64), np.asarray(flops_per_token, dtype=np.float64) / np.asarray(n_params, dtype=np.float64)
    order = np.argsort(n)
    return lambda size: np.interp(np.log(size), np.log(n[order]), ratio[order])


def profiles_section(profiles: IsoFlopMinima, per_parameter, frontier_allocation: dict | None) -> dict:
    """JSON-ready: per budget the vertex with intervals and D_opt in both FLOP conventions; the line
    N_opt(C) = (C/C0)^a with D_opt's exponent under C = 6ND (1 - a); approach 1's a beside it."""
    budgets = []
    for p in profiles.parabolas:
        n_opt = p.estimate(lambda q: q["N_opt"])
        tokens = p.estimate(lambda q, c=p.compute: c / (per_parameter(q["N_opt"]) * q["N_opt"]))
        budgets.append({
            "C": p.compute, "N": p.window.tolist(), "N_opt": _interval(n_opt), "L_opt": _interval(p.estimate(lambda q: q["L_opt"])),
            "D_opt": _interval(tokens), "D_opt_6N": p.compute / (6.0 * n_opt.value), "fit": p.summary(),
        })
    a = profiles.allocation.summary()
    low, high = a["ci"].get("a", [float("nan")] * 2)
    return {"budgets": budgets, "skipped": {f"{c:.4g}": reason for c, reason in profiles.skipped.items()}, "N_opt": a,
            "D_opt_exponent_6N": {"value": 1.0 - a["params"]["a"], "low": 1.0 - high, "high": 1.0 - low},
            "frontier_a": frontier_allocation, "comparison": _comparison(a, frontier_allocation)}


def _interval(e) -> dict:
    return {"value": e.value, "low": e.low, "high": e.high, "draws_not_finite": e.draws_not_finite}


def _comparison(isoflop: dict, frontier: dict | None) -> str:
    """One sentence: approach 2's exponent against approach 1's (the frontier of learning curves)."""
    if frontier is None or "params" not in frontier:
        return "No frontier fit to compare with (approach 1)."
    a2, a1 = isoflop["params"]["a"], frontier["params"]["a"]
    i2, i1 = isoflop["ci"].get("a"), frontier["ci"].get("a")
    if not (i2 and i1):
        return f"Approach 2 gives a = {a2:.3g}, the frontier (approach 1) a = {a1:.3g} (no intervals to compare)."
    verdict = ("overlap, so the two approaches agree within their uncertainty" if i2[0] <= i1[1] and i1[0] <= i2[1]
               else "do not overlap, so the two approaches disagree")
    return (f"Approach 2 (IsoFLOP vertices) gives a = {a2:.3g} [{i2[0]:.3g}, {i2[1]:.3g}], the frontier of learning curves (approach 1) "
            f"a = {a1:.3g} [{i1[0]:.3g}, {i1[1]:.3g}]: the intervals {verdict}.")


def epochs(run: dict) -> float | None:
    """Passes over the training data: tokens trained / (train rows x seq_len), both from the run's
    config.json (the trainer records its rows). With "documents" packing a row is one padded document,
    so the trainer's token count includes padding, and so does this denominator; None when the config
    does not record the rows."""
    rows, seq_len = run["config"].get("data", {}).get("train_rows"), run["config"]["model"].get("seq_len")
    known = all(isinstance(v, (int, float)) and v > 0 for v in (rows, seq_len))
    return run["summary"]["tokens"] / (rows * seq_len) if known else None


def unique_tokens(run: dict) -> float | None:
    """The train split's tokens (its meta.json, as the run's config.json records it), or None."""
    size = ((run["config"].get("data") or {}).get("train") or {}).get("n_tokens")
    return float(size) if isinstance(size, (int, float)) and size > 0 else None


def repeated_data_section(runs: list[dict], n_bootstrap: int, seed: int) -> dict:
    """Which runs repeat their data (> 1 epoch) and, when some do, Muennighoff et al.'s data-constrained
    law fitted to every run's final held-out loss, with U_D the split's tokens, D = epochs x U_D the
    tokens seen (padding left out) and min(D, U_D) the unique ones among them; or what the runs lack for
    it (fit_data_constrained's error)."""
    known = [r for r in runs if epochs(r) is not None and unique_tokens(r) and r["summary"]["final_eval_loss"] is not None]
    repeating = [r["name"] for r in known if epochs(r) > 1.0]
    out = {"unique_tokens": sorted({unique_tokens(r) for r in known}), "max_epochs": max((epochs(r) for r in known), default=None),
           "repeating_runs": repeating, "unknown_runs": [r["name"] for r in runs if r not in known]}
    if repeating:
        n, d, u, y = (np.array(v, dtype=np.float64) for v in zip(*[
            (r["config"]["n_params"], epochs(r) * unique_tokens(r), min(epochs(r), 1.0) * unique_tokens(r), r["summary"]["final_eval_loss"])
            for r in known]))
        try:
            out["data_constrained"] = fit_data_constrained(n, d, u, y, n_bootstrap=n_bootstrap, seed=seed).summary()
        except FitInputError as error:
            out["data_constrained"] = {"error": str(error)}
    return out


def plot_profiles(profiles: IsoFlopMinima, n_params, compute, loss, frontier_fit, path) -> None:
    """Left: loss against N per budget (one colour each), its parabola and vertex with N_opt's interval.
    Right: the vertices against C with N_opt(C) = (C/C0)^a and its band, approach 1's line dashed."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from fastscale.fit.plots import BAND_ALPHA, save_figure

    n, c, y = (np.asarray(v, dtype=np.float64) for v in (n_params, compute, loss))
    figure = Figure(figsize=(11, 4.4), layout="constrained")
    left, right = figure.subplots(1, 2)
    budgets = np.unique(c)
    colours = colormaps["viridis"](np.linspace(0.0, 0.85, len(budgets)))
    for budget, colour in zip(budgets, colours):
        rows = c == budget
        left.scatter(n[rows], y[rows], s=16, color=colour, zorder=3, label=f"C = {budget:.2g} FLOPs")
    for p in profiles.parabolas:
        colour = colours[int(np.searchsorted(budgets, p.compute))]
        grid = np.geomspace(p.window.min(), p.window.max(), 100)
        left.plot(grid, p.predict(grid), color=colour, lw=1.2)
        n_opt = p.estimate(lambda q: q["N_opt"])
        left.errorbar([n_opt.value], [p.params["L_opt"]], xerr=[[n_opt.value - n_opt.low], [n_opt.high - n_opt.value]], fmt="*",
                      ms=11, color=colour, mec="k", capsize=3, zorder=4)
    left.set_xscale("log"), left.grid(True, which="both", alpha=0.3)
    left.set_xlabel("N (non-embedding parameters)"), left.set_ylabel("final eval loss (nats/token)")
    left.set_title("IsoFLOP profiles: parabolas in ln N, minima (stars) with 95% intervals", fontsize=9)
    left.legend(fontsize=7)
    _plot_allocation(right, profiles, colours, budgets, frontier_fit, BAND_ALPHA)
    save_figure(figure, path)


def _plot_allocation(ax, profiles, colours, budgets, frontier_fit, band_alpha) -> None:
    fit = profiles.allocation
    compute = np.array([p.compute for p in profiles.parabolas])
    grid = np.geomspace(compute.min() / 2, compute.max() * 2, 100)
    ax.plot(grid, fit.predict(grid), color="C3", label=f"N_opt = (C/C0)^a, a = {fit.params['a']:.3g}")
    if len(fit.samples):
        low, high = fit.predict_interval(grid)
        ax.fill_between(grid, low, high, color="C3", alpha=band_alpha, label=f"{fit.level:.0%} bootstrap band")
    for p in profiles.parabolas:
        n_opt = p.estimate(lambda q: q["N_opt"])
        ax.errorbar([p.compute], [n_opt.value], yerr=[[n_opt.value - n_opt.low], [n_opt.high - n_opt.value]], fmt="*", ms=11,
                    color=colours[int(np.searchsorted(budgets, p.compute))], mec="k", capsize=3, zorder=4)
    if frontier_fit is not None:
        ax.plot(grid, frontier_fit.predict(grid), color="0.3", ls="--", lw=1, label=f"frontier (approach 1), a = {frontier_fit.params['a']:.3g}")
    ax.set_xscale("log"), ax.set_yscale("log"), ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("C (FLOPs, 6N + attention)"), ax.set_ylabel("N_opt")
    ax.set_title("N_opt(C) through the minima", fontsize=9)
    ax.legend(fontsize=7)
