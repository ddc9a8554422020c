"""The `resolutions` study: the same images at several resolutions, L(N) per resolution in nats per token
and per image, and Henighan et al. 2020's forecast of the N each resolution needs for a reducible loss
(their Table 3 and Figure 4 read the reducible loss as the KL divergence in nats per image).

One sweep trains one resolution (a sweep has one dataset). `fastscale resolutions OUT` (the command in
fastscale.sweep.domains) trains the preset's grid once per resolution into OUT/r{R}, every grid with the
same sizes and the same images (the token budget scales with the tokens per image, so each resolution
sees the same images the same number of times), and writes the comparison (`compare`) into OUT.

evaluate: every held-out image (the prepared val shard, or its first `max_images`) is scored whole from its
BOS (fastscale.sweep.evaluation.token_losses, float64). Recorded: `position_loss`, the mean over images of
each of the T = 3 r^2 pixel-channel positions (nats), and the mean per image of the summed loss (nats per
image) with its standard error over images.

report (one resolution) and compare (all of them): runs of the same N (seeds) are averaged; L(N) =
L_inf + (N0/N)^alpha is fitted to the mean loss per token (fastscale.fit.fit_power_law, bootstrap
intervals) and restated per image (L_inf x T, N0 x T^(1/alpha): fastscale.units.per_item, the
intervals of L_inf scaled the same way). The forecast solves the per-token law for a reducible loss of
eps / T nats per token: the N that brings the KL divergence per image down to eps, with its bootstrap
interval, and the caveats of the sweep report's forecasts (interval span, N past the sizes trained)
plus the data the law was measured on (epochs of how many images): the law's L_inf holds the loss
of models trained on these few images, not of the images' true entropy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._common import interval_text, is_int, require, runs_by_size

DOMAINS = ("images", "photos", "digits")
OPTIONS = ("max_images", "resolutions")
DEFAULT_RESOLUTIONS = [8, 16]
FORECAST_PER_IMAGE = (1.0, 0.1, 0.01)  # reducible losses, nats per image (the and Henighan's scale)
MIN_SIZES = 4  # L(N) with L_inf has 3 parameters; fit_power_law needs one more point


def check(options: dict) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    require(not unknown, "options", unknown, f"only {list(OPTIONS)}")
    value = options.get("max_images")
    require(value is None or (is_int(value) and value >= 1), "max_images", value, "a positive integer (held-out images scored per run) or no value (all)")
    check_resolutions(options.get("resolutions", DEFAULT_RESOLUTIONS))


def check_resolutions(values) -> None:
    require(isinstance(values, list) and values and all(is_int(r) and r >= 1 for r in values) and len(set(values)) == len(values),
            "resolutions", values, "a non-empty list of distinct positive integers (image sides in pixels, such as [8, 16])")


# -- evaluate (torch) --------------------------------------------------------------------------------


def held_out_images(data_dir, max_images: int | None) -> tuple[list[np.ndarray], int]:
    """(the val shard's images as token arrays, tokens per image)."""
    from fastscale.data import TokenShard

    shard = TokenShard(Path(data_dir) / "val")
    tokenizer = shard.meta.get("tokenizer", {})
    if tokenizer.get("name") != "image":
        raise ValueError(f"data_dir={str(data_dir)!r}: the resolutions study needs images (fastscale data images/photos/digits); its tokenizer is {tokenizer!r}")
    if len(shard) == 0:
        raise ValueError(f"data_dir={str(data_dir)!r}: the val shard holds no images to score")
    count = len(shard) if max_images is None else min(max_images, len(shard))
    return [np.asarray(shard[i]) for i in range(count)], int(tokenizer["resolution"] ** 2 * tokenizer["channels"])


def evaluate(run_dir: Path, data_dir: Path, options: dict) -> dict:
    from fastscale.sweep.evaluation import load_trained

    images, tokens_per_image = held_out_images(data_dir, options.get("max_images"))
    model = load_trained(run_dir)
    return {**measure(model, images, tokens_per_image), "resolution": int(math.isqrt(tokens_per_image // 3))}


def measure(model, images: list[np.ndarray], tokens_per_image: int) -> dict:
    """Each image scored whole: the mean loss per pixel-channel position and per image over the images."""
    from fastscale.sweep.evaluation import token_losses

    for i, image in enumerate(images):
        if len(image) != tokens_per_image + 1:
            raise ValueError(f"images[{i}]: {len(image)} tokens; expected {tokens_per_image + 1} (BOS and {tokens_per_image} pixel channels)")
    losses = np.stack(token_losses(model, images))  # [images, tokens_per_image], float64
    per_image = losses.sum(axis=1)
    se = per_image.std(ddof=1) / math.sqrt(len(images)) if len(images) > 1 else float("nan")
    return {"images": len(images), "tokens_per_image": tokens_per_image, "position_loss": losses.mean(axis=0).tolist(),
            "image_loss": float(per_image.mean()), "image_loss_se": float(se)}


# -- report (numpy, fastscale.fit) -------------------------------------------------------------------


def by_size(runs: list[dict]) -> list[dict]:
    """One row per N, smallest first: the loss per image and per token averaged over the runs (seeds)."""
    rows = []
    for n, group in runs_by_size(runs):
        image = float(np.mean([r["study"]["image_loss"] for r in group]))
        se = float(math.sqrt(sum(r["study"]["image_loss_se"] ** 2 for r in group)) / len(group))
        t = group[0]["study"]["tokens_per_image"]
        rows.append({"N": n, "runs": [r["name"] for r in group], "image_loss": image, "image_loss_se": se, "token_loss": image / t})
    return rows


def fit_resolution(n, token_loss, tokens_per_image: int, n_bootstrap: int, seed: int) -> tuple[dict, object | None]:
    """(L(N)'s summary per token with its per-image restatement, the fit) or ({"error": ...}, None)."""
    from fastscale.fit import FitInputError, fit_power_law
    from fastscale.units import per_item

    if len(np.unique(n)) < MIN_SIZES:
        return {"error": f"{len(np.unique(n))} model sizes; L(N) = L_inf + (N0/N)^alpha needs at least {MIN_SIZES}"}, None
    with np.errstate(over="ignore"):  # alpha on its lower bound sends x0 to inf in some draws: the flags say so
        try:
            fit = fit_power_law(n, token_loss, n_bootstrap=n_bootstrap, seed=seed)
        except FitInputError as error:
            return {"error": str(error)}, None
    summary = fit.summary()
    image_ci = {"L_inf": [v * tokens_per_image for v in summary["ci"]["L_inf"]], "alpha": summary["ci"]["alpha"]}
    return {**summary, "per_image": {"params": per_item(fit.params, tokens_per_image), "ci": image_ci}}, fit


def forecast(fit, tokens_per_image: int, largest_n: float, epochs: float | None, train_images: int | None) -> list[dict]:
    """The N that brings the reducible loss down to each of FORECAST_PER_IMAGE nats per image, with caveats."""
    from fastscale.sweep.report import forecast_caveats

    rows = []
    for eps in FORECAST_PER_IMAGE:
        with np.errstate(over="ignore", divide="ignore"):
            size = fit.x_for_reducible(eps / tokens_per_image)
        row = {"reducible_per_image": eps, "reducible_per_token": eps / tokens_per_image, "N": _estimate(size), "C": None, "D": None}
        caveats = forecast_caveats(row, largest_n, None)
        if epochs is not None and train_images:
            caveats.append(f"measured on {epochs:.2g} epoch(s) of {train_images:,} training images: L_inf is that of models trained "
                           "on these images, and a larger model would need more of them")
        rows.append({**row, "caveats": caveats})
    return rows


def _estimate(e) -> dict:
    return {"value": float(e.value), "low": float(e.low), "high": float(e.high)}


def _training_data(runs: list[dict]) -> tuple[float | None, int | None]:
    """(the epochs of the longest run, the training images), from the runs' configs (None where unrecorded)."""
    from fastscale.sweep.isoflop import epochs

    passes = [e for e in (epochs(r) for r in runs) if e is not None]
    rows = (runs[0]["config"].get("data") or {}).get("train_rows")
    return (max(passes) if passes else None), (int(rows) if isinstance(rows, (int, float)) else None)


def report(runs: list[dict], options: dict, n_bootstrap: int, seed: int) -> dict:
    """One resolution's section (the sweep's own report): its losses, L(N) and forecasts."""
    first = runs[0]["study"]
    sizes = by_size(runs)
    n = np.array([s["N"] for s in sizes])
    fit_summary, fit = fit_resolution(n, [s["token_loss"] for s in sizes], first["tokens_per_image"], n_bootstrap, seed)
    passes, train_images = _training_data(runs)
    return {"resolution": first["resolution"], "tokens_per_image": first["tokens_per_image"], "images": first["images"],
            "epochs": passes, "train_images": train_images, "n_bootstrap": n_bootstrap, "sizes": sizes, "L_of_N": fit_summary,
            "forecast": forecast(fit, first["tokens_per_image"], float(n.max()), passes, train_images) if fit is not None else []}


def compare(sweep_dirs, n_bootstrap: int, seed: int) -> dict:
    """Every resolution's section, from the finished sweeps in sweep_dirs, smallest resolution first."""
    from fastscale.sweep.report import load_runs, study_section

    sections = []
    for sweep_dir in sweep_dirs:
        section = study_section({"kind": "resolutions"}, load_runs(sweep_dir), n_bootstrap, seed)
        sections.append({"sweep_dir": str(sweep_dir), **section})
    return {"n_bootstrap": n_bootstrap, "resolutions": sorted(sections, key=lambda s: s.get("resolution", 0))}


def _fit_note(fit: dict) -> str:
    return f"no fit: {fit['error']}" if "error" in fit else "; ".join(fit["flags"]) or "none"


def _per_image_l_inf(fit: dict) -> str:
    if "per_image" not in fit:
        return "-"
    low, high = fit["per_image"]["ci"]["L_inf"]
    return f"{fit['per_image']['params']['L_inf']:.4g} [{low:.4g}, {high:.4g}]"


def _n_text(e: dict) -> str:
    return f"{e['value']:.3g} [{e['low']:.3g}, {e['high']:.3g}]"


def _resolution_lines(section: dict) -> list[str]:
    r, t = section["resolution"], section["tokens_per_image"]
    fit = section["L_of_N"]
    lines = [f"### {r}x{r} ({t} tokens per image)", "",
             f"{section['images']} held-out images scored whole; models trained {section['epochs'] or float('nan'):.2g} epoch(s) of "
             f"{section['train_images'] or 0:,} training images. Runs of the same N averaged; +- one standard error over the images.", "",
             "| N | nats/image | nats/token |", "|---|---|---|"]
    lines += [f"| {s['N']:.3g} | {s['image_loss']:.2f} +- {s['image_loss_se']:.2f} | {s['token_loss']:.4f} |" for s in section["sizes"]]
    lines += ["", f"L(N) = L_inf + (N0/N)^alpha: alpha = {interval_text(fit, 'alpha')}, L_inf = {interval_text(fit, 'L_inf')} nats/token "
              f"= {_per_image_l_inf(fit)} nats/image; N0 = {interval_text(fit, 'x0')} (per token); flags: {_fit_note(fit)}.", ""]
    return lines


def markdown(section: dict) -> list[str]:
    """One resolution's section (in its sweep's report.md)."""
    lines = ["## Resolutions: L(N) in nats per image", ""]
    return (lines + ["![L(N) of this resolution](resolution_L_of_N.png)", ""] + _resolution_lines(section) + _forecast_lines([section])
            + ["This sweep is one resolution; `fastscale resolutions` trains every resolution and compares them.", ""])


def _forecast_lines(sections: list[dict]) -> list[str]:
    lines = ["Forecast (Henighan et al. 2020, Table 3's kind): the N (non-embedding parameters) whose reducible loss, the KL divergence "
             "between the images and the model, is eps nats per image, with its 95% bootstrap interval; extrapolations, and the "
             "caveats say how far.", "", "| resolution | eps (nats/image) | eps (nats/token) | N [95% interval] | caveats |", "|---|---|---|---|---|"]
    for section in sections:
        if not section.get("forecast"):
            lines.append(f"| {section.get('resolution', '?')} | - | - | no fit | {_fit_note(section.get('L_of_N', section))} |")
        for row in section.get("forecast", []):
            lines.append(f"| {section['resolution']}x{section['resolution']} | {row['reducible_per_image']:g} | {row['reducible_per_token']:.3g} | "
                         f"{_n_text(row['N'])} | {'; '.join(row['caveats']) or 'none'} |")
    return lines + [""]


def comparison_markdown(comparison: dict) -> str:
    """report.md of `fastscale resolutions`: the resolutions side by side, then each one's table."""
    sections = [s for s in comparison["resolutions"] if "error" not in s]
    lines = ["# Resolutions: the same images at several resolutions", "",
             f"Intervals are 95% bootstrap ({comparison['n_bootstrap']} draws). Losses are held-out images scored whole, in nats per "
             "token and per image (per token x 3 r^2: L_inf per image is L_inf per token times the tokens per image, and "
             "alpha is the same in both units); alpha says how fast the reducible loss falls with N.", "", "![L(N) per resolution](resolutions_L_of_N.png)", "",
             "| resolution | tokens/image | sizes | alpha | L_inf (nats/token) | L_inf (nats/image) | flags |", "|---|---|---|---|---|---|---|"]
    for s in comparison["resolutions"]:
        if "error" in s:
            lines.append(f"| {s['sweep_dir']} | - | - | - | - | - | {s['error']} |")
            continue
        fit = s["L_of_N"]
        lines.append(f"| {s['resolution']}x{s['resolution']} | {s['tokens_per_image']} | {len(s['sizes'])} | {interval_text(fit, 'alpha')} | "
                     f"{interval_text(fit, 'L_inf')} | {_per_image_l_inf(fit)} | {_fit_note(fit)} |")
    lines += [""] + _forecast_lines(sections)
    for s in sections:
        lines += _resolution_lines(s)
    return "\n".join(lines) + "\n"


def plots(section: dict, out_dir: Path) -> list[str]:
    """resolution_L_of_N.{png,svg}: this resolution's loss per image against N with its law."""
    return _draw([section], Path(out_dir), "resolution_L_of_N")


def comparison_plots(comparison: dict, out_dir: Path) -> list[str]:
    """resolutions_L_of_N.{png,svg}: every resolution's loss against N with its law, per token and per image."""
    sections = [s for s in comparison["resolutions"] if "error" not in s]
    return _draw(sections, Path(out_dir), "resolutions_L_of_N") if sections else []


def _draw(sections: list[dict], out_dir: Path, stem: str) -> list[str]:
    from matplotlib.figure import Figure

    from fastscale.fit.plots import readable_log_ticks, save_figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    axes = figure.subplots(1, 2)
    for i, section in enumerate(sections):
        n = np.array([s["N"] for s in section["sizes"]])
        t = section["tokens_per_image"]
        label = f"{section['resolution']}x{section['resolution']}"
        fit = section["L_of_N"]
        for ax, scale in zip(axes, (1, t)):
            ax.errorbar(n, [s["token_loss"] * scale for s in section["sizes"]], yerr=[s["image_loss_se"] * scale / t for s in section["sizes"]],
                        fmt="o", color=f"C{i}", ms=4, zorder=3)
            if "params" in fit and np.isfinite(list(fit["params"].values())).all():
                grid = np.geomspace(n.min(), n.max(), 100)
                p = fit["params"]
                ax.plot(grid, scale * (p["L_inf"] + (p["x0"] / grid) ** p["alpha"]), color=f"C{i}", lw=1.2,
                        label=f"{label}: alpha {p['alpha']:.2f}, L_inf {p['L_inf'] * scale:.3g}")
            else:
                ax.plot(n, [s["token_loss"] * scale for s in section["sizes"]], ":", color=f"C{i}", label=f"{label}, no fit drawn")
    for ax, unit in zip(axes, ("nats/token", "nats/image")):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("N (non-embedding parameters)"), ax.set_ylabel(f"held-out loss ({unit})"), ax.legend(fontsize=7)
        readable_log_ticks(ax)
    names = []
    for suffix in (".png", ".svg"):
        save_figure(figure, out_dir / f"{stem}{suffix}")
        names.append(f"{stem}{suffix}")
    return names
