"""The `multimodal` study: how much a caption tells about its image, against N ("is a picture worth a
thousand words?", Henighan et al. 2020, section 4).

Data: image+caption pairs (fastscale.data "captions": pixels 0..255, caption bytes 256..511, BOS, SEP),
trained in both orders, caption_first (BOS caption SEP image) and image_first (BOS image SEP caption),
with "documents" packing so a caption is always in context of its image.

evaluate: every held-out pair (the prepared val shard, or its first `max_pairs`) is scored in both
orders as a whole document (fastscale.sweep.evaluation.token_losses), and each part's token losses
are summed:
- image_alone: the pixels of image_first, image_given_caption: the pixels of caption_first
  (nats per image);
- caption_alone: the caption bytes of caption_first, caption_given_image: those of image_first
  (nats per caption). SEP is in neither: in image_first it follows 192 pixels and is certain, and an
  image_first caption has no end marker, so leaving out the caption_first SEP (which says where the
  caption ends) keeps the two caption losses about the same tokens.
- The first token after BOS also tells the order, which the model has to guess (training mixes the
  orders about half and half): its loss holds -log P(order | BOS), about ln 2, that belongs to neither
  part. The alone losses are conditioned on the order: P(order | BOS) is the model's probability
  mass on the pixel tokens (image_first) or on the caption bytes (caption_first) after BOS, and
  -log P(order | BOS) is subtracted (recorded as order_nats).
- information_from_image = image_alone - image_given_caption and information_from_caption =
  caption_alone - caption_given_image: two estimates of the mutual information I(image; caption) in
  nats. I is symmetric, so they agree for a perfect model; their gap measures how far the model is
  from consistent. Each has its standard error over the held-out pairs (paired differences).
- caption_use = L(image | the caption of the next held-out pair) - L(image | its own caption): what the
  image predictions gain from the caption's content, with the cost of having a caption in context
  (finding where the image starts after it, distraction) the same on both sides and cancelled. A
  diagnostic, not an estimate of I: for a perfect model it is I plus the mismatch KL
  E KL(p(image) || p(image | another caption)), so it exceeds I; near 0 says the model ignores the caption.
- caption_entropy: the plug-in entropy of the held-out captions' empirical distribution (nats),
  biased low by about (distinct captions - 1) / (2 pairs); I <= H(caption) and caption_alone >= H(caption).

report: runs of the same N (seeds) are averaged. Per N: the four losses, both I estimates and their
gap, I / image_alone (Henighan's infogain-style ratio: the share of the image's information the
caption supplies) and I / caption_alone (the share of the caption's information that is about the
image). L(N) = L_inf + (N0/N)^alpha of image_alone and image_given_caption (fastscale.fit.fit_power_law,
bootstrap over sizes). I against N: I is bounded (by H(caption)) and can be near zero or negative for
small models, so neither a power law nor a log-log line fits it honestly; it is fitted as
I = a + b log10 N (least squares over the runs, bootstrap over sizes), b in nats per decade of N, a
description of the measured range that cannot hold beyond I = H(caption). The difference of the two
L(N) fits' L_inf is the fits' asymptotic I (a point value: the fits are bootstrapped separately).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._common import interval_text, is_int, require, runs_by_size

DOMAINS = ("captions",)
OPTIONS = ("max_pairs",)
LOSSES = ("image_alone", "image_given_caption", "caption_alone", "caption_given_image")
INFORMATION = ("information_from_image", "information_from_caption")
DIFFERENCES = (*INFORMATION, "caption_use")  # per-pair differences, each with a standard error
MIN_SIZES = 3  # L(N) has three parameters


def check(options: dict) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    require(not unknown, "options", unknown, f"only {list(OPTIONS)}")
    value = options.get("max_pairs")
    require(value is None or (is_int(value) and value >= 1), "max_pairs", value, "a positive integer (held-out pairs scored per run) or no value (all)")


# -- evaluate (torch) --------------------------------------------------------------------------------


def held_out_pairs(data_dir, max_pairs: int | None):
    """(tokenizer, [(image, caption)], whether the data is the bundled digits) of the prepared val shard."""
    from fastscale.data import TokenShard, tokenizer_from_dict

    shard = TokenShard(Path(data_dir) / "val")
    if shard.meta.get("tokenizer", {}).get("name") != "image_caption":
        raise ValueError(f"data_dir={str(data_dir)!r}: the multimodal study needs image+caption data (fastscale data captions); "
                         f"its tokenizer is {shard.meta.get('tokenizer')!r}")
    if len(shard) == 0:
        raise ValueError(f"data_dir={str(data_dir)!r}: the val shard holds no pairs to score")
    tok = tokenizer_from_dict(shard.meta["tokenizer"])
    count = len(shard) if max_pairs is None else min(max_pairs, len(shard))
    pairs = [tok.decode(shard[i])[:2] for i in range(count)]
    return tok, pairs, shard.meta.get("source") == "bundled"


def evaluate(run_dir: Path, data_dir: Path, options: dict) -> dict:
    from fastscale.sweep.evaluation import load_trained

    tok, pairs, bundled = held_out_pairs(data_dir, options.get("max_pairs"))
    return {**measure(load_trained(run_dir), tok, pairs), "bundled_digits": bundled}


def order_log_probs(model, tok) -> dict:
    """log P(order | BOS): the model's log probability mass on pixels and on caption bytes after BOS."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([[tok.bos]]))[0, -1].double()
    log_p = torch.log_softmax(logits, dim=-1)
    return {"image_first": torch.logsumexp(log_p[:256], 0).item(), "caption_first": torch.logsumexp(log_p[256:512], 0).item()}


def measure(model, tok, pairs) -> dict:
    """Each pair scored in both orders; per-part sums of token losses, averaged over the pairs."""
    from fastscale.sweep.evaluation import token_losses

    n_pixels = tok.image.tokens_per_image
    image_first = token_losses(model, [tok.encode(image, caption, "image_first") for image, caption in pairs])
    caption_first = token_losses(model, [tok.encode(image, caption, "caption_first") for image, caption in pairs])
    # each image after the caption of the next pair: a caption in context, but not its own
    mismatched = token_losses(model, [tok.encode(image, pairs[(i + 1) % len(pairs)][1], "caption_first") for i, (image, _) in enumerate(pairs)])
    order = order_log_probs(model, tok)
    per_pair = {name: [] for name in LOSSES}
    caption_tokens = [len(first) - n_pixels - 1 for first in image_first]  # a document of L tokens has L - 1 losses
    for m, first, second in zip(caption_tokens, image_first, caption_first):
        # image_first: loss t predicts token t + 1 of BOS, pixels, SEP, caption; caption_first: BOS, caption, SEP, pixels
        per_pair["image_alone"].append(first[:n_pixels].sum() + order["image_first"])
        per_pair["caption_given_image"].append(first[n_pixels + 1 :].sum())
        per_pair["caption_alone"].append(second[:m].sum() + order["caption_first"])
        per_pair["image_given_caption"].append(second[m + 1 :].sum())
    losses = {name: np.asarray(values) for name, values in per_pair.items()}
    given_other = np.array([other[len(other) - n_pixels :].sum() for other in mismatched])
    gains = {"information_from_image": losses["image_alone"] - losses["image_given_caption"],
             "information_from_caption": losses["caption_alone"] - losses["caption_given_image"],
             "caption_use": given_other - losses["image_given_caption"]}
    out = {"pairs": len(pairs), "tokens_per_image": n_pixels, "caption_bytes": float(np.mean(caption_tokens)),
           "order_nats": {k: -v for k, v in order.items()}, "caption_entropy": plug_in_entropy([c for _, c in pairs])}
    out.update({name: float(v.mean()) for name, v in losses.items()})
    for name, v in gains.items():
        out[name] = float(v.mean())
        out[f"{name}_se"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return out


def plug_in_entropy(values: list[str]) -> float:
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


# -- report (numpy, scipy, fastscale.fit) ------------------------------------------------------------


def by_size(runs: list[dict]) -> list[dict]:
    """One row per N, smallest first: every measurement averaged over its runs (seeds), and the ratios."""
    rows = []
    for n, group in runs_by_size(runs):
        row = {"N": n, "runs": [r["name"] for r in group]}
        for name in (*LOSSES, *DIFFERENCES, "caption_entropy"):
            row[name] = float(np.mean([r["study"][name] for r in group]))
        # independent seeds: the standard error of their mean, from each run's over held-out pairs
        for name in DIFFERENCES:
            row[f"{name}_se"] = float(math.sqrt(sum(r["study"][f"{name}_se"] ** 2 for r in group)) / len(group))
        row["information_gap"] = row["information_from_image"] - row["information_from_caption"]
        row["infogain"] = row["information_from_image"] / row["image_alone"]
        row["information_over_caption"] = row["information_from_image"] / row["caption_alone"]
        rows.append(row)
    return rows


def fit_law(n, loss, n_bootstrap: int, seed: int) -> dict:
    """L(N) = L_inf + (N0/N)^alpha of per-run losses, the bootstrap resampling sizes (seeds together,
    "rows" resampling over groups: the seeds of one size share that size's departure from the law, so
    they are not independent points, which the parametric scheme assumes)."""
    from fastscale.fit import FitInputError, fit_power_law

    if len(np.unique(n)) < MIN_SIZES:  # seeds of one size are more points, not more of the curve
        return {"error": f"{len(np.unique(n))} model sizes; L(N) has 3 parameters and needs at least {MIN_SIZES}"}
    try:
        fit = fit_power_law(n, loss, n_bootstrap=n_bootstrap, seed=seed, groups=n, resampling="rows")
    except FitInputError as error:
        return {"error": str(error)}
    return {**fit.summary(), "N": list(map(float, n)), "loss": list(map(float, loss))}


def fit_information(n, information, n_bootstrap: int, seed: int) -> dict:
    """I = a + b log10 N by least squares over the runs, with a bootstrap over sizes (seeds together)."""
    from fastscale.fit.bootstrap import resample_counts

    x = np.log10(n)
    if len(np.unique(x)) < MIN_SIZES:
        return {"error": f"{len(np.unique(x))} model sizes; the I(N) line needs at least {MIN_SIZES} for a check of its fit"}
    slope, intercept = np.polyfit(x, information, 1)
    draws = []
    for counts in resample_counts(len(x), n_bootstrap, seed, groups=n):
        if len(np.unique(x[counts > 0])) >= 2:  # a draw of one size has no slope
            draws.append(weighted_line(x, information, counts))
    draws = np.array(draws).reshape(-1, 2)
    residuals = information - (intercept + slope * x)
    out = {"slope_per_decade": {"value": float(slope)}, "intercept": {"value": float(intercept)}, "n_bootstrap": len(draws),
           "dropped_draws": n_bootstrap - len(draws), "rms_residual": float(np.sqrt(np.mean(residuals**2))),
           "N": list(map(float, n)), "information": list(map(float, information))}
    if len(draws):
        for j, name in enumerate(("slope_per_decade", "intercept")):
            low, high = np.percentile(draws[:, j], [2.5, 97.5])
            out[name].update(low=float(low), high=float(high))
    return out


def weighted_line(x, y, counts) -> tuple[float, float]:
    """(slope, intercept) of least squares with each point counted `counts` times."""
    w = counts / counts.sum()
    mx, my = (w * x).sum(), (w * y).sum()
    slope = (w * (x - mx) * (y - my)).sum() / (w * (x - mx) ** 2).sum()
    return float(slope), float(my - slope * mx)


def report(runs: list[dict], options: dict, n_bootstrap: int, seed: int) -> dict:
    n = np.array([float(r["config"]["n_params"]) for r in runs])
    per_run = {name: np.array([r["study"][name] for r in runs]) for name in (*LOSSES, *INFORMATION)}
    fits = {name: fit_law(n, per_run[name], n_bootstrap, seed) for name in ("image_alone", "image_given_caption")}
    asymptote = None
    if all("params" in f for f in fits.values()):
        asymptote = fits["image_alone"]["params"]["L_inf"] - fits["image_given_caption"]["params"]["L_inf"]
    first = runs[0]["study"]
    return {
        "pairs": first["pairs"], "tokens_per_image": first["tokens_per_image"], "caption_bytes": first["caption_bytes"],
        "bundled_digits": first.get("bundled_digits", False), "n_bootstrap": n_bootstrap,
        "positions": sorted({r["config"].get("model", {}).get("positions", "learned") for r in runs}),
        "sizes": by_size(runs),
        "runs": [{"name": r["name"], "N": float(r["config"]["n_params"]), **{k: r["study"][k] for k in (*LOSSES, *DIFFERENCES)},
                  "order_nats": r["study"]["order_nats"]} for r in runs],
        "L_of_N": fits,
        "I_of_N": fit_information(n, per_run["information_from_image"], n_bootstrap, seed),
        "I_asymptote_from_fits": asymptote,
    }


def _estimate(e: dict) -> str:
    return f"{e['value']:.3g} [{e['low']:.3g}, {e['high']:.3g}]" if "low" in e else f"{e['value']:.3g}"


def markdown(section: dict) -> list[str]:
    lines = ["## Multimodal: the information a caption gives about its image", ""]
    lines += [
        f"Each of {section['pairs']} held-out image+caption pairs scored in both orders; losses are sums over a part, nats per image "
        f"({section['tokens_per_image']} pixel tokens) or per caption ({section['caption_bytes']:.1f} bytes on average), with the guess "
        "of the order at the first token taken out. I = L(image) - L(image | caption); measured the other way, "
        "L(caption) - L(caption | image) estimates the same symmetric quantity, so their gap shows how far the models are from "
        "consistent. infogain = I / L(image): the share of the image's information the caption supplies; I / L(caption): the share "
        "of the caption's information that is about the image. caption use = L(image | another pair's caption) - L(image | its "
        "caption): what the model takes from the caption's content, the cost of a caption in context cancelled (a diagnostic: "
        "for a perfect model it exceeds I). Runs of the same N are averaged; +- is one standard error over the pairs.",
        "", "![I against N](multimodal_information.png)", "", "![image losses against N](multimodal_losses.png)", "",
        "| N | L(image) | L(image given caption) | L(caption) | L(caption given image) | I from image | I from caption | gap | infogain | I / L(caption) | caption use | H(caption) plug-in |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_size_row(s) for s in section["sizes"]] + _fit_lines(section) + _caveats(section)
    return lines + [""]


def _size_row(s: dict) -> str:
    return (f"| {s['N']:.3g} | {s['image_alone']:.2f} | {s['image_given_caption']:.2f} | {s['caption_alone']:.3f} | "
            f"{s['caption_given_image']:.3f} | {s['information_from_image']:.3f} +- {s['information_from_image_se']:.3f} | "
            f"{s['information_from_caption']:.3f} +- {s['information_from_caption_se']:.3f} | {s['information_gap']:+.3f} | "
            f"{s['infogain']:.4f} | {s['information_over_caption']:.3f} | {s['caption_use']:.3f} +- {s['caption_use_se']:.3f} | "
            f"{s['caption_entropy']:.3f} |")


def _fit_lines(section: dict) -> list[str]:
    lines = ["", "L(N) = L_inf + (N0/N)^alpha, nats per image:", "", "| loss | alpha | L_inf | N0 | flags |", "|---|---|---|---|---|"]
    for name, label in (("image_alone", "L(image)"), ("image_given_caption", "L(image given caption)")):
        fit = section["L_of_N"][name]
        note = fit["error"] if "error" in fit else ", ".join(fit["flags"]) or "none"
        lines.append(f"| {label} | {interval_text(fit, 'alpha')} | {interval_text(fit, 'L_inf')} | {interval_text(fit, 'x0')} | {note} |")
    if section["I_asymptote_from_fits"] is not None:
        lines += ["", f"The fits' L_inf differ by {section['I_asymptote_from_fits']:.3f} nats/image: their asymptotic I (a point value; "
                  "the two fits are bootstrapped separately, so no interval)."]
    line = section["I_of_N"]
    lines += [""]
    if "error" in line:
        lines.append(f"I against N: not fitted: {line['error']}.")
    else:
        lines.append(f"I against N, fitted as I = a + b log10 N: b = {_estimate(line['slope_per_decade'])} nats per decade of N, "
                     f"a = {_estimate(line['intercept'])} (rms residual {line['rms_residual']:.3f} nats). I is bounded by H(caption) and "
                     "may be near zero or negative for small models, so a power law in N (a straight line on log-log axes) "
                     "does not describe it; this line only summarizes the measured range and must not be extrapolated past H(caption).")
    return lines


def _caveats(section: dict) -> list[str]:
    lines = []
    negative = [f"{s['N']:.3g}" for s in section["sizes"] if any(s[k] + 2 * s[f"{k}_se"] < 0 for k in INFORMATION)]
    if negative:
        lines += ["", f"An I estimate is below zero by more than two standard errors at N = {', '.join(negative)}: the true I cannot be "
                  "negative, so there the model predicts a part worse after the other part than alone (it has to find where the part "
                  "starts, and it may be distracted by the other part). That cost biases every estimate of this table low: at these "
                  "sizes they do not measure I."]
    if "learned" in section["positions"]:
        lines += ["", "Caveat: these models use learned absolute positions, and a pixel's position differs between the orders (after a "
                  "caption of 5 to 33 bytes it is shifted by the caption's length), so L(image | caption) also pays for locating the "
                  "pixel grid anew and I is biased low. With rotary positions (model.positions = \"rotary\") attention sees only "
                  "relative offsets, so in both orders the grid is found from the token before the image (BOS or SEP)."]
    if section["bundled_digits"]:
        lines += ["", "Bundled data: a caption is a template (chosen independently of the image) filled with the digit, so what it says "
                  f"about the image is the digit: I <= H(digit) ~= ln 10 = {math.log(10):.3f} nats."]
    return lines


def plots(section: dict, out_dir: Path) -> list[str]:
    """multimodal_information.{png,svg}: both I estimates and the caption use against N, with the fitted line;
    multimodal_losses.{png,svg}: L(image) and L(image | caption) against N with their L(N) fits."""
    from matplotlib.figure import Figure

    from fastscale.fit.plots import save_figure

    information = Figure(figsize=(5.5, 4.2), layout="constrained")
    _draw_information(information.subplots(), section)
    losses = Figure(figsize=(5.5, 4.2), layout="constrained")
    _draw_losses(losses.subplots(), section)
    names = []
    for figure, stem in ((information, "multimodal_information"), (losses, "multimodal_losses")):
        for suffix in (".png", ".svg"):
            save_figure(figure, Path(out_dir) / f"{stem}{suffix}")
            names.append(f"{stem}{suffix}")
    return names


def _draw_information(ax, section: dict) -> None:
    n = np.array([s["N"] for s in section["sizes"]])
    for i, (name, label) in enumerate((("information_from_image", "L(image) - L(image | caption)"),
                                       ("information_from_caption", "L(caption) - L(caption | image)"),
                                       ("caption_use", "caption use: L(image | other caption) - L(image | caption)"))):
        ax.errorbar(n, [s[name] for s in section["sizes"]], yerr=[s[f"{name}_se"] for s in section["sizes"]],
                    fmt="o", ms=4, capsize=3, color=f"C{i}", label=label)
    line = section["I_of_N"]
    if "error" not in line:
        grid = np.geomspace(n.min(), n.max(), 100)
        ax.plot(grid, line["intercept"]["value"] + line["slope_per_decade"]["value"] * np.log10(grid), "--", color="C3",
                label=f"fit to I from image: a + b log10 N, b = {line['slope_per_decade']['value']:.3g}")
    ax.axhline(0.0, color="k", lw=0.6)
    _log_axes(ax, n, y=False)
    ax.set_xlabel("N (non-embedding parameters)"), ax.set_ylabel("I(image; caption) (nats)"), ax.legend(fontsize=7)


def _draw_losses(ax, section: dict) -> None:
    for i, (name, label) in enumerate((("image_alone", "L(image)"), ("image_given_caption", "L(image | caption)"))):
        fit = section["L_of_N"][name]
        n = np.array([r["N"] for r in section["runs"]])
        ax.scatter(n, [r[name] for r in section["runs"]], s=16, color=f"C{i}", zorder=3, label=label)
        if "params" in fit:
            p, grid = fit["params"], np.geomspace(n.min(), n.max(), 100)
            ax.plot(grid, p["L_inf"] + (p["x0"] / grid) ** p["alpha"], color=f"C{i}", lw=1.2, label=f"fit: alpha = {p['alpha']:.3g}")
    _log_axes(ax, np.unique([r["N"] for r in section["runs"]]), y=True)
    ax.set_xlabel("N (non-embedding parameters)"), ax.set_ylabel("loss (nats/image)"), ax.legend(fontsize=7)


def _log_axes(ax, n, y: bool) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(n, [f"{v:.2g}" for v in n])  # the measured sizes: default minor labels over two decades overlap
    ax.xaxis.set_minor_formatter(NullFormatter())
    if y:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
