"""The `text` study: Kaplan et al. 2020's language findings on a byte-level BPE vocabulary.

evaluate (per run, torch): the trained model's shape and its parameter counts both ways, non-embedding
(Kaplan's N: GPT.num_params(), no token or position embedding, no output projection) and total; and
the memory one training micro-batch's loss takes at the run's vocabulary, measured twice on the same
held-out rows through the trained model: fastscale's fused linear + cross-entropy
(fastscale.ops.linear_cross_entropy, forward and backward) against eager PyTorch (the [tokens, V]
logits, F.cross_entropy, backward). Memory is the peak of the bytes torch's CPU allocator holds beyond
what was allocated on entry, from the profiler's allocation events (torch.profiler, profile_memory):
the CPU counterpart of CUDA's max_memory_allocated, exact rather than sampled.

report (numpy, fastscale.fit):
- L(N) of the final held-out losses of each size's longest budget, fitted as Kaplan's pure power law
  L = (Nc/N)^alpha_N twice: against non-embedding N and against total N, side by side. Kaplan's
  Figure 6: with non-embedding N runs of every depth fall on one law; with total N they do not (the
  embedding, V x d_model, dominates small models' totals). What this data shows is read from each
  fit's rms log residual and its misspecification flags, not assumed.
- L(D): the held-out learning curve of the largest model's longest run, loss against tokens seen,
  without its first EARLY_FRACTION (warmup), fitted as (Dc/D)^alpha_D. Each token is seen once, so
  the loss at D tokens seen is an upper bound of an early-stopped run on D tokens (Kaplan's L(D)); a
  learning rate still high at D keeps it above.
- L(N, D) = [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D (fastscale.fit.fit_kaplan_nd) on every run's
  held-out evaluations after EARLY_FRACTION: two token budgets give two final D per size, too few for
  the law's D term, so the intermediate evaluations supply D, with the same caveat as L(D).
- The loss memory per size: fused and eager bytes and their ratio, beside fastscale.train.plan.vocabulary_bytes' closed
  form of the same two peaks (the formula `fastscale plan` counts the vocabulary with).
B_crit(L) from the gradient noise scale is the sweep report's own section (every sweep has it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import interval_text, require

DOMAINS = ("text",)
DEFAULTS: dict = {}
EARLY_FRACTION = 0.1  # the share of a learning curve's steps left out of L(D) and L(N, D), as the sweep report's L(C)
KAPLAN = {"alpha_N": 0.076, "alpha_D": 0.095}  # Kaplan et al. 2020, WebText2, eqs. 1.1 and 1.2


def check(options: dict) -> None:
    require(not options, "options", sorted(options), "none: the text study has no options")


# -- evaluate (torch) --------------------------------------------------------------------------------


def evaluate(run_dir: Path, data_dir: Path, options: dict) -> dict:
    from fastscale.sweep.evaluation import load_trained
    from fastscale.sweep.index import read_state
    from fastscale.train.config import DeepSpeedSettings

    config = read_state(Path(run_dir) / "config.json")
    model = load_trained(run_dir)
    rows = DeepSpeedSettings.read(config["deepspeed"], config["world_size"]).micro_batch
    idx, targets = held_out_rows(data_dir, rows, model.config.seq_len)
    c = model.config
    return {
        "n_layer": c.n_layer, "d_model": c.d_model, "vocab_size": c.vocab_size, "tie_embeddings": bool(c.tie_embeddings),
        "non_embedding_params": model.num_params(non_embedding=True), "total_params": model.num_params(non_embedding=False),
        "loss_memory": loss_memory(model, idx, targets),
    }


def held_out_rows(data_dir, rows: int, seq_len: int):
    """The first `rows` rows of seq_len tokens of the held-out shard, packed as the trainer packs them
    (fastscale.data.pack_rows): idx and targets [rows, seq_len] as torch tensors."""
    from fastscale.data import TokenShard, collate, pack_rows

    packed = pack_rows(TokenShard(Path(data_dir) / "val"), seq_len)
    if len(packed) < rows:
        raise ValueError(f"data_dir={str(data_dir)!r}: the held-out shard has {len(packed)} rows of {seq_len} tokens; the loss memory needs {rows} (a micro-batch)")
    batch = collate([packed[r] for r in range(rows)])
    return batch["idx"], batch["targets"]


def loss_memory(model, idx, targets) -> dict:
    """Peak bytes of one micro-batch's loss, forward and backward, from the model's final hidden states:
    fused (fastscale.ops.linear_cross_entropy, the op the trainer runs) and eager (logits, then
    F.cross_entropy). Both start from the same leaf hidden states and the same output weight, whose
    gradients both must produce; logits_bytes is one float32 [tokens, V] array, for reference."""
    import torch
    from torch.nn import functional as F

    from fastscale.ops import linear_cross_entropy

    with torch.no_grad():
        hidden = model.hidden_states(idx).reshape(-1, model.config.d_model)
    weight = model.head.weight.detach()
    flat = targets.reshape(-1)

    def fused(h, w):
        linear_cross_entropy(h, w, flat).backward()

    def eager(h, w):
        F.cross_entropy(h @ w.t(), flat).backward()

    measured = {name: peak_bytes(fn, hidden, weight) for name, fn in (("fused", fused), ("eager", eager))}
    return {"tokens": int(flat.numel()), "vocab_size": int(weight.shape[0]), "d_model": int(weight.shape[1]),
            "fused_bytes": measured["fused"], "eager_bytes": measured["eager"], "logits_bytes": int(flat.numel() * weight.shape[0] * 4)}


def peak_bytes(fn, hidden, weight) -> int:
    """The peak of torch's CPU allocations beyond entry while fn(h, w) runs on fresh leaf copies, from the
    profiler's allocation and free events in time order. fn runs once before, untimed and unmeasured, so
    one-time allocations (thread pools, caches) are not counted."""
    from torch.profiler import ProfilerActivity, profile

    fn(hidden.clone().requires_grad_(), weight.clone().requires_grad_())
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(h, w)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    return int(max(0, np.cumsum([e.nbytes() for e in events]).max())) if events else 0


# -- report (numpy, fastscale.fit) -------------------------------------------------------------------


def run_rows(runs: list[dict]) -> list[dict]:
    """One row per evaluated run: its shape, both parameter counts, tokens trained, final held-out loss."""
    rows = []
    for r in runs:
        s = r["study"]
        rows.append({"run": r["name"], "n_layer": s["n_layer"], "d_model": s["d_model"], "aspect_ratio": s["d_model"] / s["n_layer"],
                     "N": s["non_embedding_params"], "N_total": s["total_params"], "tokens": r["summary"]["tokens"],
                     "loss": r["summary"]["final_eval_loss"], "loss_memory": s["loss_memory"]})
    return rows


def longest(rows: list[dict]) -> list[dict]:
    """Per shape (the same non-embedding N and depth), the rows of its largest token budget."""
    most: dict = {}
    for row in rows:
        key = (row["N"], row["n_layer"])
        most[key] = max(most.get(key, 0), row["tokens"])
    return [row for row in rows if row["tokens"] == most[(row["N"], row["n_layer"])]]


def fit_pure(x, loss, n_bootstrap: int, seed: int) -> dict:
    """Kaplan's pure power law (Nc/x)^alpha (fastscale.fit.fit_power_law, L_inf = 0), or {"error": ...}."""
    from fastscale.fit import FitInputError, fit_power_law

    try:
        return fit_power_law(x, loss, irreducible=False, n_bootstrap=n_bootstrap, seed=seed).summary()
    except FitInputError as error:
        return {"error": str(error)}


def curve_points(run: dict, early_fraction: float = EARLY_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(tokens seen, held-out loss) at each evaluation of a run after its first early_fraction of steps."""
    points = np.array([(m["step"], m["tokens"], m["eval_loss"]) for m in run["metrics"] if m.get("eval_loss") is not None], dtype=np.float64)
    if not len(points):
        return np.zeros(0), np.zeros(0)
    keep = points[:, 0] > early_fraction * points[:, 0].max()
    return points[keep, 1], points[keep, 2]


def l_of_d(runs: list[dict], rows: list[dict], n_bootstrap: int, seed: int) -> dict:
    """L(D) of the largest model's longest run's held-out learning curve."""
    top = max(longest(rows), key=lambda row: (row["N"], row["tokens"]))
    run = next(r for r in runs if r["name"] == top["run"])
    d, loss = curve_points(run)
    return {"run": top["run"], "N": top["N"], "D": d.tolist(), "loss": loss.tolist(), "fit": fit_pure(d, loss, n_bootstrap, seed) if len(d) else {"error": "no held-out evaluations"}}


def l_of_nd(runs: list[dict], rows: list[dict], n_bootstrap: int, seed: int) -> dict:
    from fastscale.fit import FitInputError, fit_kaplan_nd

    n_by_run = {row["run"]: row["N"] for row in rows}
    n, d, loss = [], [], []
    for r in runs:
        tokens, values = curve_points(r)
        n += [n_by_run[r["name"]]] * len(tokens)
        d += tokens.tolist()
        loss += values.tolist()
    try:
        fit = fit_kaplan_nd(n, d, loss, n_bootstrap=n_bootstrap, seed=seed).summary()
    except FitInputError as error:
        fit = {"error": str(error)}
    return {"n_points": len(loss), "fit": fit}


def memory_rows(rows: list[dict]) -> list[dict]:
    """Per shape, the loss memory of its runs (every run of a shape measures the same shapes: the first is shown)."""
    from fastscale.train.plan import vocabulary_bytes

    seen, out = set(), []
    for row in sorted(rows, key=lambda r: (r["N"], r["n_layer"])):
        key = (row["N"], row["n_layer"])
        if key not in seen:
            seen.add(key)
            m = row["loss_memory"]
            formula = vocabulary_bytes(m["vocab_size"], m["d_model"], m["tokens"])  # fp32, as the study's runs train
            out.append({"run": row["run"], "N": row["N"], **m, "ratio": m["eager_bytes"] / m["fused_bytes"] if m["fused_bytes"] else None,
                        "eager_estimate": formula["eager_loss"], "fused_estimate": formula["fused_loss"]})
    return out


def report(runs: list[dict], options: dict, n_bootstrap: int, seed: int) -> dict:
    rows = run_rows(runs)
    final = [row for row in longest(rows) if row["loss"] is not None]
    loss = [row["loss"] for row in final]
    return {
        "vocab_size": rows[0]["loss_memory"]["vocab_size"], "n_bootstrap": n_bootstrap, "runs": rows, "kaplan": KAPLAN,
        "L_of_N": {"runs": [row["run"] for row in final],
                   "non_embedding": fit_pure([row["N"] for row in final], loss, n_bootstrap, seed),
                   "total": fit_pure([row["N_total"] for row in final], loss, n_bootstrap, seed)},
        "L_of_D": l_of_d(runs, rows, n_bootstrap, seed),
        "L_of_ND": l_of_nd(runs, rows, n_bootstrap, seed),
        "memory": memory_rows(rows),
    }


# -- markdown and plots ------------------------------------------------------------------------------


def _fit_cells(fit: dict, exponent: str) -> str:
    if "error" in fit:
        return f"no fit: {fit['error']} | - | - | -"
    return f"{interval_text(fit, exponent)} | {interval_text(fit, 'x0' if 'x0' in fit['params'] else 'Nc')} | {fit['rms_log_residual']:.4f} | {'; '.join(fit['flags']) or 'none'}"


def finding(section: dict) -> str:
    """What the two L(N) fits say, from their rms log residuals."""
    fits = section["L_of_N"]
    if "error" in fits["non_embedding"] or "error" in fits["total"]:
        return "One of the two L(N) fits failed: no comparison."
    a, b = fits["non_embedding"]["rms_log_residual"], fits["total"]["rms_log_residual"]
    better = "non-embedding" if a < b else "total"
    return (f"The power law in {better} N fits these runs better: rms log residual {a:.4f} (non-embedding) against {b:.4f} (total), "
            f"{max(a, b) / min(a, b):.1f}x. Kaplan et al. found the non-embedding law one line across depths and the total one not.")


def markdown(section: dict) -> list[str]:
    lines = ["## Text: Kaplan et al.'s language laws on a BPE vocabulary", ""]
    lof = section["L_of_N"]
    lines += [f"Byte-level BPE vocabulary of {section['vocab_size']:,} tokens. Kaplan et al. 2020 (WebText2, 50k BPE): "
              f"alpha_N = {KAPLAN['alpha_N']}, alpha_D = {KAPLAN['alpha_D']}; different data and a far smaller scale, so compare the "
              "shape of the laws, not the constants.", "", "![text: L(N) with non-embedding and total N, L(D)](text_laws.png)", "",
              "| run | n_layer | d_model | d_model/n_layer | non-embedding N | total N | tokens | held-out loss |", "|---|---|---|---|---|---|---|---|"]
    for row in section["runs"]:
        loss = "-" if row["loss"] is None else f"{row['loss']:.4f}"
        lines.append(f"| {row['run']} | {row['n_layer']} | {row['d_model']} | {row['aspect_ratio']:.1f} | {row['N']:,} | {row['N_total']:,} | {row['tokens']:,} | {loss} |")
    lines += ["", f"L(N) = (Nc/N)^alpha_N on the longest budget of each size ({len(lof['runs'])} runs), intervals {section['n_bootstrap']} bootstrap draws:", "",
              "| N counted | alpha_N | Nc | rms log residual | flags |", "|---|---|---|---|---|",
              f"| non-embedding | {_fit_cells(lof['non_embedding'], 'alpha')} |", f"| total | {_fit_cells(lof['total'], 'alpha')} |", "", finding(section), ""]
    lod = section["L_of_D"]
    lines += [f"L(D) = (Dc/D)^alpha_D, held-out learning curve of {lod['run']} (N = {lod['N']:,}; each token seen once, first "
              f"{EARLY_FRACTION:.0%} of steps left out; an upper bound of the early-stopped L(D)): alpha_D = {interval_text(lod['fit'], 'alpha')}, "
              f"Dc = {interval_text(lod['fit'], 'x0')}" + (f" ({lod['fit']['error']})" if "error" in lod["fit"] else "") + ".", ""]
    nd = section["L_of_ND"]["fit"]
    lines += [f"L(N, D) = [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D on {section['L_of_ND']['n_points']} held-out evaluations of every run: "
              + ("no fit: " + nd["error"] if "error" in nd else
                 f"alpha_N = {interval_text(nd, 'alpha_N')}, alpha_D = {interval_text(nd, 'alpha_D')}, Nc = {interval_text(nd, 'Nc')}, "
                 f"Dc = {interval_text(nd, 'Dc')}, rms log residual {nd['rms_log_residual']:.4f}" + (f"; flags: {'; '.join(nd['flags'])}" if nd["flags"] else "")) + ".", ""]
    lines += ["Loss memory of one training micro-batch, forward and backward (peak bytes torch allocates beyond its inputs, measured in each "
              "run's evaluation on its held-out rows):", "",
              "| N | tokens | vocab | d_model | fused MiB (closed form) | eager MiB (closed form) | eager / fused | saved per micro-batch MiB |",
              "|---|---|---|---|---|---|---|---|"]
    for m in section["memory"]:
        ratio = "-" if m["ratio"] is None else f"{m['ratio']:.2f}x"
        lines.append(f"| {m['N']:,} | {m['tokens']:,} | {m['vocab_size']:,} | {m['d_model']} | {m['fused_bytes'] / 2**20:.1f} ({m['fused_estimate'] / 2**20:.1f}) | "
                     f"{m['eager_bytes'] / 2**20:.1f} ({m['eager_estimate'] / 2**20:.1f}) | {ratio} | {(m['eager_bytes'] - m['fused_bytes']) / 2**20:.1f} |")
    lines += ["", "B_crit(L) from the gradient noise scale: the sweep's 'Gradient noise scale' section."]
    return lines + [""]


def plots(section: dict, out_dir: Path) -> list[str]:
    """text_laws.{png,svg}: held-out loss against non-embedding N and against total N (colour: depth),
    each with its fitted law, and the L(D) learning curve with its fit."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    from fastscale.fit.plots import readable_log_ticks, save_figure, size_colorbar

    figure = Figure(figsize=(14, 4.2), layout="constrained")
    axes = figure.subplots(1, 3)
    final = {row["run"]: row for row in section["runs"] if row["run"] in section["L_of_N"]["runs"]}
    depths = [row["n_layer"] for row in final.values()]
    norm = LogNorm(min(depths), max(max(depths), min(depths) + 1))
    for ax, key, column, label in ((axes[0], "non_embedding", "N", "non-embedding N"), (axes[1], "total", "N_total", "total N (with embeddings)")):
        x = np.array([row[column] for row in final.values()], dtype=np.float64)
        y = np.array([row["loss"] for row in final.values()])
        points = ax.scatter(x, y, c=depths, cmap=colormaps["viridis"], norm=norm, s=24, zorder=3)
        _draw_pure(ax, section["L_of_N"][key], x, "alpha_N")
        ax.set_xscale("log"), ax.set_yscale("log"), ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel(label), ax.set_ylabel("held-out loss (nats/token)"), ax.legend(fontsize=7)
    size_colorbar(figure, points, axes[:2], depths, "n_layer")
    lod = section["L_of_D"]
    d, loss = np.array(lod["D"], dtype=np.float64), np.array(lod["loss"])
    axes[2].scatter(d, loss, s=14, color="C1", zorder=3, label=lod["run"])
    _draw_pure(axes[2], lod["fit"], d, "alpha_D")
    axes[2].set_xscale("log"), axes[2].set_yscale("log"), axes[2].grid(True, which="both", alpha=0.3)
    axes[2].set_xlabel("D (tokens seen)"), axes[2].set_ylabel("held-out loss (nats/token)"), axes[2].legend(fontsize=7)
    for ax in axes:
        readable_log_ticks(ax)
    names = []
    for suffix in (".png", ".svg"):
        save_figure(figure, Path(out_dir) / f"text_laws{suffix}")
        names.append(f"text_laws{suffix}")
    return names


def _draw_pure(ax, fit: dict, x: np.ndarray, name: str) -> None:
    if "params" not in fit or not len(x):
        return
    grid = np.geomspace(x.min(), x.max(), 100)
    p = fit["params"]
    ax.plot(grid, (p["x0"] / grid) ** p["alpha"], "k--", lw=1, label=f"{name} = {p['alpha']:.3f} (rms log res. {fit['rms_log_residual']:.3f})")
