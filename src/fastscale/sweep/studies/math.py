"""The `math` study: train on easy arithmetic, measure the loss per difficulty level against N, up to
levels harder than any trained on (Henighan et al. 2020, section on mathematics; Saxton et al. 2019).

Problems are fastscale.data.sources.math_problems ("a op b = c\\n", level k: operands of up to k
digits, a third operand from level 3), bytes with a BOS (ByteTokenizer). The training levels are the
prepared data's `difficulty` (its train shard's metadata); every level of `eval_levels` above them is
extrapolation.

evaluate: for each level, `eval_count` problems drawn with `eval_seed` (which must differ from the
data's seed), each scored as a whole document from its BOS (fastscale.sweep.evaluation.token_losses):
- answer_loss: nats per answer token, the characters after "=" including the newline (what solving
  the problem takes), summed over the level's problems and divided by their answer tokens;
- problem_loss: nats per token over the whole problem (every character after BOS), pooled the same way;
- exact_match: the fraction of problems greedy decoding after "=" reproduces, newline included. It
  comes from the losses' forward pass, no decoding loop: greedy decoding emits the answer exactly
  when, given the true prefix, the most likely next token is the true one at every answer position.
A distinct seed does not make the held-out problems new: level 1 has only 300 distinct problems and a
prepared training set of thousands of problems holds nearly all of them, level 2 has 30,000 and a
training set holds a good share of them, level 3 on has more than 10^9. So each level records
`seen_in_training`, the fraction of its held-out problems whose text is a training document, and the
answer loss of the problems that are not (`unseen_answer_loss`): where the fraction is high, the loss
measures memorization, not arithmetic.

report: runs of the same N (seeds) are averaged; per level, answer and problem loss against N are
fitted with fastscale.fit.fit_power_law (bootstrap intervals). A fit that cannot be made falls back to
a pure power law (L_inf = 0, two parameters) with the reason in "fallback", and to {"error": reason}
when that fails too; the report never stops at one level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import checked_options, fit_loss_law, interval_text, is_int, require, runs_by_size

DOMAINS = ("math",)
DEFAULTS = {"eval_levels": [1, 2, 3, 4, 5], "eval_count": 256, "eval_seed": 1000}
MAX_LEVEL = 18  # math_problems draws operands below 10^level as numpy int64: 10^19 does not fit
MAX_COUNT = 100_000
METRICS = ("answer_loss", "problem_loss")


def _options(options: dict) -> dict:
    return {**DEFAULTS, **options}


def check(options: dict) -> None:
    o = checked_options(options, DEFAULTS)
    levels = o["eval_levels"]
    require(isinstance(levels, list) and levels and all(is_int(k) and 1 <= k <= MAX_LEVEL for k in levels) and len(set(levels)) == len(levels),
            "eval_levels", levels, f"a non-empty list of distinct integer levels from 1 to {MAX_LEVEL}")
    require(is_int(o["eval_count"]) and 1 <= o["eval_count"] <= MAX_COUNT, "eval_count", o["eval_count"], f"an integer from 1 to {MAX_COUNT} (problems per level)")
    require(is_int(o["eval_seed"]) and o["eval_seed"] >= 0, "eval_seed", o["eval_seed"], "an integer >= 0")


# -- evaluate (torch) --------------------------------------------------------------------------------


def answer_start(text: str) -> int:
    """Index, in token_losses' output for BOS + text, of the loss of the answer's first character.
    Element t there predicts token t + 1, i.e. character t; the answer starts after the "=" at text[e]."""
    if text.count("=") != 1 or not text.endswith("\n"):
        raise ValueError(f"problem {text!r}: expected 'expression=answer' and a newline")
    return text.index("=") + 1


def held_out_problems(level: int, count: int, seed: int) -> list[str]:
    from fastscale.data.sources import math_problems

    return [text for text, _ in math_problems(count, level, seed)]


def training_data(data_dir) -> tuple[set[str], list[int], int]:
    """(the training problems' texts, the trained levels [low, high], the data's seed), from the train shard."""
    from fastscale.data.shards import TokenShard
    from fastscale.data.tokenizers import ByteTokenizer

    shard = TokenShard(Path(data_dir) / "train")
    if shard.meta.get("domain") != "math":
        raise ValueError(f"data_dir={str(data_dir)!r}: a {shard.meta.get('domain')!r} dataset; the math study needs data prepared with domain 'math'")
    difficulty = shard.meta["difficulty"]
    levels = [difficulty, difficulty] if is_int(difficulty) else [int(k) for k in difficulty]
    tok = ByteTokenizer()
    return {tok.decode(shard[i]) for i in range(len(shard))}, levels, int(shard.meta["seed"])


def evaluate(run_dir: Path, data_dir: Path, options: dict) -> dict:
    from fastscale.sweep.evaluation import load_trained

    o = _options(options)
    seen, trained_levels, data_seed = training_data(data_dir)
    if o["eval_seed"] == data_seed:
        raise ValueError(f"study.eval_seed={o['eval_seed']}: the training data's seed; expected a different seed for held-out problems")
    model = load_trained(run_dir)
    levels = [score_level(model, level, held_out_problems(level, o["eval_count"], o["eval_seed"]), seen) for level in o["eval_levels"]]
    return {"trained_levels": trained_levels, "data_seed": data_seed, "eval_seed": o["eval_seed"], "eval_count": o["eval_count"], "levels": levels}


def score_level(model, level: int, texts: list[str], seen: set[str]) -> dict:
    from fastscale.data.tokenizers import ByteTokenizer
    from fastscale.sweep.evaluation import token_scores

    documents = [ByteTokenizer().encode(text) for text in texts]
    longest = max(len(d) for d in documents)
    if longest > model.config.seq_len:
        raise ValueError(f"study.eval_levels: level {level} has problems of {longest} tokens; the model's seq_len={model.config.seq_len} (raise the sweep's seq_len)")
    starts = [answer_start(text) for text in texts]
    losses, hits = token_scores(model, documents)
    answer = np.array([loss[start:].sum() for loss, start in zip(losses, starts)])
    answer_tokens = np.array([len(loss) - start for loss, start in zip(losses, starts)])
    unseen = np.array([text not in seen for text in texts])
    return {
        "level": level,
        "n_problems": len(texts),
        "answer_loss": float(answer.sum() / answer_tokens.sum()),
        "problem_loss": float(sum(loss.sum() for loss in losses) / sum(len(loss) for loss in losses)),
        "exact_match": float(np.mean(greedy_solved(hits, starts))),
        "seen_in_training": float(1 - unseen.mean()),
        "unseen_answer_loss": float(answer[unseen].sum() / answer_tokens[unseen].sum()) if unseen.any() else None,
    }


def greedy_solved(hits: list[np.ndarray], starts: list[int]) -> np.ndarray:
    """Per document, whether the most likely next token is the true one at every position from its start
    (token_scores' hits, in token_losses' indexing): whether greedy decoding from the prompt reproduces
    the rest exactly."""
    return np.array([bool(h[start:].all()) for h, start in zip(hits, starts)])


# -- report (numpy, fastscale.fit) -------------------------------------------------------------------


def level_status(level: int, trained_levels: list[int]) -> str:
    low, high = trained_levels
    return "trained" if low <= level <= high else "extrapolated" if level > high else "easier, not trained"


PER_SIZE = (*METRICS, "exact_match", "seen_in_training", "unseen_answer_loss")


def _mean(values: list) -> float | None:
    """None when any run has none (a level whose held-out problems were all training documents)."""
    return None if any(v is None for v in values) else float(np.mean(values))


def by_size(runs: list[dict]) -> list[dict]:
    """One entry per N, smallest first: its runs (seeds) and each level's metrics averaged over them."""
    sizes = []
    for n, group in runs_by_size(runs):
        levels = {}
        for entry in (e for r in group for e in r["study"]["levels"]):
            levels.setdefault(entry["level"], []).append(entry)
        means = {k: {m: _mean([e[m] for e in entries]) for m in PER_SIZE} for k, entries in levels.items()}
        sizes.append({"N": n, "runs": [r["name"] for r in group], "levels": means})
    return sizes


def report(runs: list[dict], options: dict, n_bootstrap: int, seed: int) -> dict:
    o = _options(options)
    trained_levels = runs[0]["study"]["trained_levels"]
    sizes = by_size(runs)
    levels = []
    for level in o["eval_levels"]:
        present = [s for s in sizes if level in s["levels"]]
        n = np.array([s["N"] for s in present])
        entry = {"level": level, "status": level_status(level, trained_levels), "N": n.tolist()}
        for metric in PER_SIZE:
            entry[metric] = [s["levels"][level][metric] for s in present]
        entry["fits"] = {metric: fit_loss_law("math", n, entry[metric], n_bootstrap, seed) for metric in METRICS}
        levels.append(entry)
    return {"trained_levels": trained_levels, "eval_seed": runs[0]["study"]["eval_seed"], "eval_count": runs[0]["study"]["eval_count"],
            "n_bootstrap": n_bootstrap, "sizes": [{"N": s["N"], "runs": s["runs"]} for s in sizes], "levels": levels}


def _fit_note(fit: dict) -> str:
    if "error" in fit:
        return f"no fit: {fit['error']}"
    notes = ([fit["fallback"]] if "fallback" in fit else []) + fit["flags"]
    return "; ".join(notes) or "none"


def _table(section: dict, metric: str, fmt: str) -> list[str]:
    ns = [s["N"] for s in section["sizes"]]
    lines = ["| level | status | " + " | ".join(f"N={n:.3g}" for n in ns) + " |", "|---|---|" + "---|" * len(ns)]
    for entry in section["levels"]:
        values = dict(zip(entry["N"], entry[metric]))
        cells = [format(values[n], fmt) if n in values else "-" for n in ns]
        lines.append(f"| {entry['level']} | {entry['status']} | " + " | ".join(cells) + " |")
    return lines


def markdown(section: dict) -> list[str]:
    lines = ["## Math: loss per difficulty level against N", ""]
    low, high = section["trained_levels"]
    lines += [f"Trained on levels {low}-{high}; evaluated on {section['eval_count']} held-out problems per level (seed {section['eval_seed']}); "
              f"runs of the same N are averaged (runs per N: {', '.join(str(len(s['runs'])) for s in section['sizes'])}). "
              "Answer loss: nats per token of the answer (the characters after '=' and the newline); problem loss: nats per token "
              "of the whole problem; exact match: greedy decoding reproduces the answer. 'in training' is the fraction of the "
              "held-out problems that are training documents too: where it is high the loss measures memorization.", "",
              "![math: loss per level against N](math_loss_vs_N.png)", "", "Answer loss (nats/token):", ""]
    lines += _table(section, "answer_loss", ".4f") + ["", "Exact match (greedy):", ""] + _table(section, "exact_match", ".3f")
    lines += ["", "L(N) = L_inf + (N0/N)^alpha of the answer loss per level:", "",
              "| level | status | in training | alpha | L_inf | notes |", "|---|---|---|---|---|---|"]
    for entry in section["levels"]:
        fit = entry["fits"]["answer_loss"]
        seen = max(entry["seen_in_training"]) if entry["seen_in_training"] else float("nan")
        lines.append(f"| {entry['level']} | {entry['status']} | {seen:.0%} | {interval_text(fit, 'alpha')} | {interval_text(fit, 'L_inf')} | {_fit_note(fit)} |")
    return lines + [""]


STYLES = {"trained": ("-", "o"), "extrapolated": ("--", "^"), "easier, not trained": (":", "s")}


def plots(section: dict, out_dir: Path) -> list[str]:
    """math_loss_vs_N.{png,svg}: answer and problem loss against N, one line per level (solid: trained,
    dashed: extrapolated), each with its fitted law where there is one."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    from fastscale.fit.plots import save_figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    for ax, metric in zip(figure.subplots(1, 2), METRICS):
        for i, entry in enumerate(section["levels"]):
            _draw_level(ax, entry, metric, f"C{i}")
        ax.set_xscale("log"), ax.set_yscale("log"), ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap at 1.6 decades
        ax.set_xlabel("N (non-embedding parameters)"), ax.set_ylabel(f"{metric.replace('_', ' ')} (nats/token)")
        ax.legend(fontsize=7)
    names = []
    for suffix in (".png", ".svg"):
        save_figure(figure, Path(out_dir) / f"math_loss_vs_N{suffix}")
        names.append(f"math_loss_vs_N{suffix}")
    return names


def _draw_level(ax, entry: dict, metric: str, color: str) -> None:
    line, marker = STYLES[entry["status"]]
    n, loss = np.array(entry["N"]), np.array(entry[metric])
    ax.scatter(n, loss, color=color, marker=marker, s=16, zorder=3)
    fit = entry["fits"][metric]
    label = f"level {entry['level']} ({entry['status']})"
    if "params" in fit and len(n) and np.isfinite(list(fit["params"].values())).all():
        grid = np.geomspace(n.min(), n.max(), 100)
        p = fit["params"]
        ax.plot(grid, p["L_inf"] + (p["x0"] / grid) ** p["alpha"], line, color=color, lw=1.2, label=label)
    else:  # no fit, or a degenerate one (alpha on its lower bound sends x0 to infinity): join the points
        ax.plot(n, loss, line, color=color, lw=1, label=label + ", no fit drawn")
