"""The `classify` study: fine-tune each generative image model on the digit labels, and measure the
classification loss and error against N beside the generative loss (Henighan et al. 2020, section on
image classification: generative pretraining, then fine-tuning; the classification loss follows a
power law in N).

Data: the sweep's prepared digits (or "images": digits and photo patches). The fine-tuning set is the
labelled digits of the generative train split and the held-out set the digits of its val split, both
from fastscale.data.prepare.labelled_split with the options that built the shards (read back from
the shards and checked token for token against them): no held-out digit was seen by any generative
model or by the fine-tuning.

evaluate: the trained GPT (fastscale.sweep.evaluation.load_trained) gets a linear head on the mean of
its final layer-normed hidden states over the image's pixel positions (standardized with their
statistics over the fine-tuning digits); all weights are fine-tuned with torch AdamW for `steps`
steps of `batch_size` digits (linear decay of `lr` to 0, gradient clipping 1.0, fixed `seed`:
deterministic on CPU). Recorded on the held-out digits: the classification loss
(nats per digit), the error rate, and the generative loss per image before fine-tuning (token_losses);
with `baseline`, the same classifier shape fine-tuned the same way from GPT's own random
initialization (seeded; no pretraining), which is what shows the pretraining's value. `measure`
returns the fine-tuned classifiers and held-out logits beside the record, for checks.

report: per N (seeds averaged), the classification loss and error, the baseline's and the generative
loss per image; L_clf(N) = L_inf + (N0/N)^alpha by fastscale.fit.fit_power_law with bootstrap, falling
back to a pure power law (L_inf = 0) with the reason in "fallback", and to {"error": reason} when that
fails too: the report never stops at the fit.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastscale.data.prepare import LABELLED_DOMAINS

from ..index import read_state
from ._common import checked_options, fit_loss_law, interval_text, is_int, is_number, require, runs_by_size

logger = logging.getLogger(__name__)

DOMAINS = LABELLED_DOMAINS  # the bundled digits carry labels
DEFAULTS = {"steps": 150, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0, "seed": 0, "baseline": True}
MAX_STEPS = 10_000
MAX_BATCH = 1024
N_CLASSES = 10
CLIP = 1.0
METRICS = ("classification_loss", "error", "generative_loss_per_image")


def _options(options: dict) -> dict:
    return {**DEFAULTS, **options}


def check(options: dict) -> None:
    o = checked_options(options, DEFAULTS)
    require(is_int(o["steps"]) and 1 <= o["steps"] <= MAX_STEPS, "steps", o["steps"], f"an integer from 1 to {MAX_STEPS} (fine-tuning steps)")
    require(is_int(o["batch_size"]) and 1 <= o["batch_size"] <= MAX_BATCH, "batch_size", o["batch_size"], f"an integer from 1 to {MAX_BATCH} (digits per step)")
    require(is_number(o["lr"]) and 0 < o["lr"] <= 1, "lr", o["lr"], "a number in (0, 1]")
    require(is_number(o["weight_decay"]) and 0 <= o["weight_decay"] <= 1, "weight_decay", o["weight_decay"], "a number in [0, 1]")
    require(is_int(o["seed"]) and o["seed"] >= 0, "seed", o["seed"], "an integer >= 0")
    require(isinstance(o["baseline"], bool), "baseline", o["baseline"], "true or false (also fine-tune a randomly initialized model of the same shape)")


# -- evaluate (torch) --------------------------------------------------------------------------------


@dataclass
class Digits:
    """Labelled digits as the models read them: tokens int64 [n, 1 + pixels] (BOS first), labels int64 [n],
    and each digit's document index in its shard."""

    tokens: np.ndarray
    labels: np.ndarray
    positions: np.ndarray


def labelled_digits(data_dir) -> tuple[Digits, Digits]:
    """(fine-tuning digits, held-out digits): the labelled digits of the prepared train and val shards."""
    from fastscale.data.prepare import labelled_split
    from fastscale.data.shards import TokenShard

    data_dir = Path(data_dir)
    train, val = TokenShard(data_dir / "train"), TokenShard(data_dir / "val")
    meta = train.meta
    if meta.get("domain") not in DOMAINS or meta.get("source") != "bundled":
        raise ValueError(f"data_dir={str(data_dir)!r}: domain {meta.get('domain')!r} from {meta.get('source')!r}; "
                         "the classify study needs the bundled digits (domain 'digits' or 'images')")
    # build()'s val split holds round(n * val_fraction) documents: this fraction gives back the same split
    options = {"resolution": meta["tokenizer"]["resolution"], "val_fraction": len(val) / (len(train) + len(val)), "seed": meta["seed"]}
    splits = labelled_split(meta["domain"], **options)
    for name, split in zip(("train", "val"), splits):
        if not len(split.labels):
            raise ValueError(f"data_dir={str(data_dir)!r}: no digits in the {name} shard; the classify study needs digits in both splits (val_fraction > 0)")
    return tuple(_as_read(shard, split, data_dir) for shard, split in zip((train, val), splits))


def _as_read(shard, split, data_dir) -> Digits:
    """The digits' tokens from the shard itself, after checking they are the labelled split's images."""
    tokens = np.stack([shard[int(i)] for i in split.positions])
    if not np.array_equal(tokens[:, 1:], split.images.reshape(len(split.images), -1)):
        raise ValueError(f"data_dir={str(data_dir)!r}: the {shard.meta.get('split')} shard's documents are not build()'s split of the digits "
                         "(prepared with other options or edited?)")
    return Digits(tokens, split.labels, split.positions)


def pooled_features(gpt, idx):
    """[B, d_model]: the mean of the final layer-normed hidden states over the pixel positions of digits
    idx [B, 1 + pixels]. Under causal attention only the last position has read the whole image, but
    its state is shaped to predict one pixel; the mean over every pixel position pools what all of them
    extracted (Image GPT's choice for probes and fine-tuning, Chen et al. 2020) and sends gradient to
    every position. The BOS position is left out: it is the same for every digit."""
    return gpt.hidden_states(idx)[:, 1:].mean(dim=1)


def classifier_for(gpt, digits: Digits, *, batch_size: int = 256):
    """The GPT and a linear head of N_CLASSES outputs on its pooled features standardized with their
    mean and standard deviation over the fine-tuning digits (fixed before fine-tuning): a pooled feature
    varies between digits far less than the hidden states do, and unstandardized, 150 steps barely move
    the held-out loss from log 10 (benchmarks/results/notes.md). The head starts at zero:
    the uniform prediction, log 10 nats, whatever the trunk."""
    import torch

    gpt.eval()
    tokens = torch.from_numpy(digits.tokens)
    with torch.no_grad():
        features = torch.cat([pooled_features(gpt, tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)])
    head = torch.nn.Linear(gpt.config.d_model, N_CLASSES)
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    classifier = torch.nn.ModuleDict({"gpt": gpt, "head": head})
    classifier.register_buffer("feature_mean", features.mean(dim=0))
    classifier.register_buffer("feature_std", features.std(dim=0).clamp_min(1e-6))
    return classifier


def class_logits(classifier, idx):
    """[B, N_CLASSES] logits of digits idx [B, 1 + pixels]."""
    features = pooled_features(classifier["gpt"], idx)
    return classifier["head"]((features - classifier.feature_mean) / classifier.feature_std)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """[steps, batch_size] indices: epochs of fresh permutations, read in order."""
    rng = np.random.default_rng(seed)
    epochs = math.ceil(steps * batch_size / n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch_size].reshape(steps, batch_size)


def fine_tune(classifier, digits: Digits, o: dict) -> list[float]:
    """AdamW on every weight, lr decaying linearly to 0; returns the batch losses."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(o["seed"])  # dropout, where the config has it
    params = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / o["steps"])
    tokens, labels = torch.from_numpy(digits.tokens), torch.from_numpy(digits.labels)
    losses = []
    classifier.train()
    for rows in batch_order(len(labels), o["batch_size"], o["steps"], o["seed"]):
        rows = torch.from_numpy(rows)
        loss = F.cross_entropy(class_logits(classifier, tokens[rows]), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def held_out_logits(classifier, digits: Digits, *, batch_size: int = 256) -> np.ndarray:
    import torch

    classifier.eval()
    tokens = torch.from_numpy(digits.tokens)
    with torch.no_grad():
        return torch.cat([class_logits(classifier, tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)]).numpy()


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Mean cross-entropy in nats (float64) and the error rate of the argmax."""
    import torch
    from torch.nn import functional as F

    z = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    loss = F.cross_entropy(z, torch.from_numpy(labels)).item()
    return {"classification_loss": loss, "error": float(np.mean(np.argmax(logits, axis=1) != labels))}


@dataclass
class Measured:
    """What evaluate returns (`record`) and what it was computed from, for checks."""

    record: dict
    classifier: object
    finetune: Digits
    heldout: Digits
    logits: np.ndarray
    baseline_classifier: object | None
    baseline_logits: np.ndarray | None


def _fine_tune_and_score(gpt, finetune: Digits, heldout: Digits, o: dict):
    start = time.perf_counter()
    classifier = classifier_for(gpt, finetune)
    losses = fine_tune(classifier, finetune, o)
    logits = held_out_logits(classifier, heldout)
    tail = losses[-max(1, len(losses) // 10) :]
    summary = {**classification_metrics(logits, heldout.labels), "final_train_loss": float(np.mean(tail)), "seconds": time.perf_counter() - start}
    return classifier, logits, summary


def measure(run_dir, data_dir, options: dict) -> Measured:
    import torch

    from fastscale.model import GPT
    from fastscale.sweep.evaluation import load_trained, token_losses

    o = _options(options)
    finetune, heldout = labelled_digits(data_dir)
    model = load_trained(run_dir)
    if heldout.tokens.shape[1] > model.config.seq_len:
        raise ValueError(f"run_dir={str(run_dir)!r}: seq_len={model.config.seq_len}; the classify study needs whole digits of {heldout.tokens.shape[1]} tokens")
    generative = np.array([loss.sum() for loss in token_losses(model, list(heldout.tokens))])
    classifier, logits, tuned = _fine_tune_and_score(model, finetune, heldout, o)
    record = {
        "n_params": read_state(Path(run_dir) / "config.json")["n_params"],
        "finetune": {**{k: o[k] for k in ("steps", "batch_size", "lr", "weight_decay", "seed")}, "schedule": "linear decay to 0",
                     "gradient_clipping": CLIP, "optimizer": "AdamW", "examples": len(finetune.labels),
                     "epochs": o["steps"] * o["batch_size"] / len(finetune.labels)},
        "heldout_examples": len(heldout.labels),
        "generative_loss_per_image": float(generative.mean()),
        "generative_loss_per_token": float(generative.mean() / (heldout.tokens.shape[1] - 1)),
        **tuned,
    }
    baseline_classifier = baseline_logits = None
    if o["baseline"]:
        torch.manual_seed(o["seed"])
        baseline_classifier, baseline_logits, record["baseline"] = _fine_tune_and_score(GPT(model.config), finetune, heldout, o)
    logger.info("classify %s: loss %.4f, error %.4f (%.1f s)", run_dir, record["classification_loss"], record["error"], record["seconds"])
    return Measured(record, classifier, finetune, heldout, logits, baseline_classifier, baseline_logits)


def evaluate(run_dir: Path, data_dir: Path, options: dict) -> dict:
    return measure(run_dir, data_dir, options).record


# -- report (numpy, fastscale.fit) -------------------------------------------------------------------


def by_size(runs: list[dict]) -> list[dict]:
    """One row per N, smallest first, each metric averaged over the N's evaluated runs (seeds)."""
    rows = []
    for n, group in runs_by_size(runs):
        studies = [r["study"] for r in group]
        row = {"N": n, "runs": [r["name"] for r in group], **{m: float(np.mean([s[m] for s in studies])) for m in METRICS}}
        row["seconds"] = float(np.mean([s["seconds"] + s.get("baseline", {}).get("seconds", 0.0) for s in studies]))
        if all("baseline" in s for s in studies):
            row["baseline"] = {m: float(np.mean([s["baseline"][m] for s in studies])) for m in ("classification_loss", "error")}
        rows.append(row)
    return rows


def report(runs: list[dict], options: dict, n_bootstrap: int, seed: int) -> dict:
    rows = by_size(runs)
    n = np.array([row["N"] for row in rows], dtype=np.float64)
    first = runs[0]["study"]
    section = {"options": _options(options), "sizes": rows, "finetune_examples": first["finetune"]["examples"], "heldout_examples": first["heldout_examples"],
               "fit": fit_loss_law("classify", n, np.array([row["classification_loss"] for row in rows]), n_bootstrap, seed)}
    if all("baseline" in row for row in rows):
        section["baseline_fit"] = fit_loss_law("classify", n, np.array([row["baseline"]["classification_loss"] for row in rows]), n_bootstrap, seed)
    return section


def _fit_line(label: str, fit: dict) -> str:
    if "error" in fit:
        return f"- {label}: no fit ({fit['error']})"
    law = "L_inf + (N0/N)^alpha" if fit["law"] == "power" else "(N0/N)^alpha"
    parts = [f"alpha = {interval_text(fit, 'alpha')}", f"N0 = {interval_text(fit, 'x0')}"] + ([f"L_inf = {interval_text(fit, 'L_inf')} nats"] if fit["law"] == "power" else [])
    note = f"; fallback: {fit['fallback']}" if "fallback" in fit else ""
    return f"- {label}: L = {law}, " + ", ".join(parts) + f"; converged: {fit['converged']}; flags: {fit['flags'] or 'none'}{note}"


def markdown(section: dict) -> list[str]:
    o = section["options"]
    lines = ["## Classification: the generative models fine-tuned on the digit labels", ""]
    lines += [f"Each trained GPT gets a linear head on the mean of its final hidden states over the image, and all its weights are "
              f"fine-tuned with AdamW ({o['steps']} steps of {o['batch_size']} digits, lr {o['lr']:g} decaying linearly to 0, weight decay "
              f"{o['weight_decay']:g}, seed {o['seed']}) on the {section['finetune_examples']} labelled digits of the generative training split; "
              f"losses are on the {section['heldout_examples']} held-out digits no model saw (nats per digit). The generative loss is the "
              "pretrained model's, per image, on the same held-out digits."
              + (" The baseline is the same network fine-tuned the same way from a random initialization." if o["baseline"] else ""), "",
              "![classification](classify.png)", "", _fit_line("classification loss L_clf(N)", section["fit"])]
    if "baseline_fit" in section:
        lines.append(_fit_line("baseline (no pretraining)", section["baseline_fit"]))
    lines += ["", "| N | generative loss (nats/image) | classification loss | error | baseline loss | baseline error | fine-tuning s (with baseline) |", "|---|---|---|---|---|---|---|"]
    for row in section["sizes"]:
        base = row.get("baseline")
        base_text = f"{base['classification_loss']:.4f} | {base['error']:.2%}" if base else "- | -"
        lines.append(f"| {row['N']:.3g} | {row['generative_loss_per_image']:.2f} | {row['classification_loss']:.4f} | {row['error']:.2%} | {base_text} | {row['seconds']:.1f} |")
    return lines


def _law(fit: dict, n: np.ndarray) -> np.ndarray:
    p = fit["params"]
    return (p["L_inf"] if fit["law"] == "power" else 0.0) + (p["x0"] / n) ** p["alpha"]


def plots(section: dict, out_dir: Path) -> list[str]:
    """classify.png/.svg: classification loss (with its fit) and error against N, beside the generative loss."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    from fastscale.fit.plots import save_figure

    rows = section["sizes"]
    if not rows:
        return []
    n = np.array([row["N"] for row in rows])
    figure = Figure(figsize=(15, 4.2), layout="constrained")
    loss_ax, error_ax, gen_ax = figure.subplots(1, 3)
    loss_ax.scatter(n, [row["classification_loss"] for row in rows], color="C0", zorder=3, label="fine-tuned")
    error_ax.plot(n, [row["error"] for row in rows], "o-", color="C0", label="fine-tuned")
    if all("baseline" in row for row in rows):
        loss_ax.scatter(n, [row["baseline"]["classification_loss"] for row in rows], color="C1", marker="s", zorder=3, label="from scratch")
        error_ax.plot(n, [row["baseline"]["error"] for row in rows], "s--", color="C1", label="from scratch")
    if "params" in section["fit"]:
        grid = np.geomspace(n.min() / 2, n.max() * 2, 100)
        loss_ax.plot(grid, _law(section["fit"], grid), color="C3", label=f"fit: alpha = {section['fit']['params']['alpha']:.3g}")
    gen_ax.plot(n, [row["generative_loss_per_image"] for row in rows], "o-", color="C2")
    labels = (("classification loss (nats/digit)", loss_ax), ("error rate", error_ax), ("generative loss (nats/image)", gen_ax))
    for ylabel, ax in labels:
        ax.set_xscale("log"), ax.set_xlabel("N (non-embedding parameters)"), ax.set_ylabel(ylabel), ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())  # within a decade matplotlib labels minor ticks, and they overlap
    loss_ax.set_yscale("log"), loss_ax.yaxis.set_minor_formatter(FormatStrFormatter("%.1f")), loss_ax.legend(fontsize=8), error_ax.legend(fontsize=8)
    gen_ax.set_title("held-out digits, before fine-tuning", fontsize=9)
    names = []
    for suffix in (".png", ".svg"):
        save_figure(figure, Path(out_dir) / f"classify{suffix}")
        names.append(f"classify{suffix}")
    return names
