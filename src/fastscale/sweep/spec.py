"""What a sweep is: a grid of runs (model sizes x token or compute budgets x seeds) over one dataset.

A sweep file is JSON:

    {"name": "image8",
     "data": {"dataset": "images", "resolution": 8},   # prepared once into OUT/data, or {"path": DIR}
     "seq_len": 193, "tokens_per_item": 192,
     "sizes": [1e4, 3e4, ...],                          # target non-embedding N (GPTConfig.from_params)
     "tokens": [6e5] or "compute": [1e13],              # budgets: D per run, or C per run (FLOPs, see below)
     "seeds": [0],                                      # every size; or one list per entry of "sizes"
     "model": {"head_dim": 32},                         # from_params options
     "aspect_ratios": [2, 16],                          # optional: each size at each d_model / n_layer (Kaplan's Fig. 5)
     "lr": "kaplan" or 3e-3,                            # Kaplan et al. eq. D.1 by size, or one value
     "train": {...},                                    # TrainSettings fields (steps come from the budget)
     "deepspeed": {...},                                # DeepSpeed config of every run (batch sizes)
     "packing": "stream" or "documents",                # how documents fill the trainer's rows (RunConfig)
     "study": {"kind": "multimodal", ...}}              # optional: fastscale.sweep.studies, after each run

One compute accounting from the budget to the report. C is what the trainer counts and records:
GPTConfig.flops_per_token() of the shape the run builds (Kaplan et al. 2020, section 2.1: 6N + 6 n_layer
n_ctx d_attn, N the non-embedding parameters of that shape, not the target size) times the tokens it
trains on (steps x train_batch_size x seq_len). A compute budget gives each run the tokens at which that
count reaches the budget, D = C / flops_per_token, in whole optimizer steps: the nearest whole number of
steps, which moves C by at most half a step (a relative 0.5 / steps). A run that would land more than
COMPUTE_TOLERANCE from its budget is refused before any run starts (at 50 steps or more it never does).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from fastscale.model.config import GPTConfig

from .presets import PRESETS

KEYS = {"name", "description", "data", "seq_len", "tokens_per_item", "sizes", "tokens", "compute", "seeds", "model", "aspect_ratios", "lr",
        "train", "deepspeed", "packing", "study"}
COMPUTE_TOLERANCE = 0.01  # the largest relative distance of a run's counted C from its compute budget


class SweepError(ValueError):
    """A sweep file or preset that cannot work, found before any run starts."""


def _require(ok: bool, name: str, value, expectation: str) -> None:
    if not ok:
        raise SweepError(f"sweep: {name}={value!r}; expected {expectation}")


def _positive_list(raw: dict, name: str) -> list[float]:
    values = raw[name]
    _require(isinstance(values, list) and values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values),
             name, values, "a non-empty list of positive numbers")
    return [float(v) for v in values]


def _seeds_per_size(seeds, n_sizes: int) -> list[list[int]]:
    """Each size's seeds: one list for every size, or one list per size (more seeds where runs are cheap,
    the small sizes, whose run names stay those of a single list: N{size}_{budget}_s{seed})."""
    def valid(values) -> bool:
        return isinstance(values, list) and bool(values) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values)

    if isinstance(seeds, list) and seeds and all(isinstance(s, list) for s in seeds):
        _require(len(seeds) == n_sizes and all(valid(s) for s in seeds), "seeds", seeds,
                 f"one list of integers >= 0 per size ({n_sizes} lists)")
        return seeds
    _require(valid(seeds), "seeds", seeds, "a non-empty list of integers >= 0, or one such list per size")
    return [seeds] * n_sizes


def _aspect_ratios(raw: dict) -> list[float] | None:
    """The sweep's aspect ratios (d_model / n_layer targets of GPTConfig.from_params), or None."""
    if "aspect_ratios" not in raw:
        return None
    ratios = _positive_list(raw, "aspect_ratios")
    _require(len(set(ratios)) == len(ratios), "aspect_ratios", raw["aspect_ratios"], "distinct values")
    model = raw.get("model", {})
    _require(not (isinstance(model, dict) and "aspect_ratio" in model), "model.aspect_ratio", model.get("aspect_ratio") if isinstance(model, dict) else None,
             "no value when aspect_ratios is given (each run takes its ratio from aspect_ratios)")
    return ratios


def kaplan_lr(n_params: float) -> float:
    """Kaplan et al. (2020) eq. D.1: the learning rate that worked across their sizes."""
    return 0.003239 - 0.0001395 * math.log(n_params)


@dataclass
class Run:
    """One point of the grid: tokens is the budget's D (steps round it to whole optimizer steps);
    compute is the budget's C in FLOPs, None under a token budget; aspect_ratio is the shape's
    d_model / n_layer target when the sweep lists several (None: the model options decide)."""

    name: str
    n_target: float
    tokens: float
    seed: int
    steps: int
    lr: float
    compute: float | None = None
    aspect_ratio: float | None = None


@dataclass
class SweepSpec:
    name: str
    data: dict
    seq_len: int
    sizes: list
    budgets: list  # tokens per run, or compute per run when budget_kind == "compute"
    budget_kind: str
    seeds: list  # per entry of sizes, its seeds
    tokens_per_item: int | None = None
    model: dict = field(default_factory=dict)
    lr: object = "kaplan"
    train: dict = field(default_factory=dict)
    deepspeed: dict = field(default_factory=dict)
    packing: str | None = None
    study: dict | None = None
    aspect_ratios: list | None = None
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict) -> "SweepSpec":
        _require(isinstance(raw, dict), "sweep", type(raw).__name__, "a JSON object")
        unknown = sorted(set(raw) - KEYS)
        _require(not unknown, "unknown keys", unknown, f"only {sorted(KEYS)}")
        for key in ("data", "seq_len", "sizes", "deepspeed"):
            _require(key in raw, key, None, "a value (the key is required)")
        _require(("tokens" in raw) != ("compute" in raw), "tokens/compute", (raw.get("tokens"), raw.get("compute")), "exactly one of the two budgets")
        kind = "tokens" if "tokens" in raw else "compute"
        sizes = _positive_list(raw, "sizes")
        seeds = _seeds_per_size(raw.get("seeds", [0]), len(sizes))
        lr = raw.get("lr", "kaplan")
        _require(lr == "kaplan" or (isinstance(lr, (int, float)) and lr > 0), "lr", lr, "'kaplan' or a positive number")
        _require(isinstance(raw["seq_len"], int) and raw["seq_len"] >= 2, "seq_len", raw["seq_len"], "an integer >= 2")
        train = raw.get("train", {})
        _require("steps" not in train, "train.steps", train.get("steps"), "no value: steps come from the token or compute budget")
        _require("seed" not in train, "train.seed", train.get("seed"), "no value: seeds come from 'seeds'")
        aspect_ratios = _aspect_ratios(raw)
        study = raw.get("study")
        if study is not None:
            _check_study(study, raw["data"])
        return cls(
            name=str(raw.get("name", "sweep")), data=raw["data"], seq_len=raw["seq_len"], sizes=sizes,
            budgets=_positive_list(raw, kind), budget_kind=kind, seeds=seeds, tokens_per_item=raw.get("tokens_per_item"),
            model=raw.get("model", {}), lr=lr, train=train, deepspeed=raw["deepspeed"], packing=raw.get("packing"), study=study,
            aspect_ratios=aspect_ratios, raw=raw,
        )

    @classmethod
    def load(cls, preset_or_file: str) -> "SweepSpec":
        """A named preset or a JSON file."""
        if preset_or_file in PRESETS:
            return cls.from_dict(json.loads(json.dumps(PRESETS[preset_or_file])))
        path = Path(preset_or_file)
        if not path.is_file():
            raise SweepError(f"--preset={preset_or_file!r}: neither a preset ({sorted(PRESETS)}) nor a JSON file")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise SweepError(f"--preset={preset_or_file!r}: not valid JSON ({error})") from None

    def tokens_per_step(self) -> int:
        batch = self.deepspeed.get("train_batch_size")
        _require(isinstance(batch, int) and batch >= 1, "deepspeed.train_batch_size", batch, "a positive integer (steps come from it)")
        return batch * self.seq_len

    def flops_per_token(self, n_target: float, aspect_ratio: float | None = None) -> int:
        """Training FLOPs per token of the shape a run of size n_target (and aspect_ratio, if the sweep
        lists several) builds: GPTConfig.from_params with this sweep's seq_len and model options, merged
        as run_config merges them (the trainer's fastscale.train.launch.model_config builds the same shape).
        The vocabulary, which only the prepared data knows, is a placeholder: flops_per_token counts no
        embedding, so it cannot change it."""
        options = self._model_options(n_target, aspect_ratio)
        try:
            shape = GPTConfig.from_params(float(options.pop("params")), 1, self.seq_len, **options)
        except (TypeError, ValueError) as error:
            raise SweepError(f"sweep: model={self.model!r} at size {n_target:g}: {error}") from None
        return shape.flops_per_token()

    def _model_options(self, n_target: float, aspect_ratio: float | None) -> dict:
        options = {"params": n_target, **self.model}
        return options if aspect_ratio is None else {**options, "aspect_ratio": aspect_ratio}

    def runs(self) -> list[Run]:
        """The grid, smallest models first (the runner starts the largest first). With aspect_ratios,
        each size and budget is trained at every aspect ratio (run names gain _a{ratio})."""
        runs = []
        for n, seeds in sorted(zip(self.sizes, self.seeds)):
            for aspect in self.aspect_ratios or [None]:
                for budget in self.budgets:
                    label = f"{self.budget_kind[0]}{budget:.3g}" + ("" if aspect is None else f"_a{aspect:g}")
                    name = f"N{n:.3g}_{label}".replace("+", "")
                    tokens, steps, compute = self._budget(name, n, budget, aspect)
                    lr = kaplan_lr(n) if self.lr == "kaplan" else float(self.lr)
                    runs += [Run(f"{name}_s{seed}", n, tokens, seed, steps, lr, compute, aspect) for seed in seeds]
        names = [r.name for r in runs]
        _require(len(set(names)) == len(names), "sizes/budgets", names, "distinct runs (two grid points round to the same name)")
        return runs

    def _budget(self, name: str, n_target: float, budget: float, aspect_ratio: float | None) -> tuple[float, int, float | None]:
        """(tokens, steps, compute) of one grid point: the nearest whole number of steps to the budget's D."""
        per_step = self.tokens_per_step()
        if self.budget_kind == "tokens":
            return budget, max(1, round(budget / per_step)), None
        per_token = self.flops_per_token(n_target, aspect_ratio)
        tokens = budget / per_token
        steps = max(1, round(tokens / per_step))
        counted = per_token * per_step * steps
        _require(abs(counted / budget - 1) <= COMPUTE_TOLERANCE, f"compute (run {name})", budget,
                 f"a budget whole optimizer steps reach within {COMPUTE_TOLERANCE:.0%}: the nearest, {steps} step(s) of {per_step} tokens at "
                 f"{per_token:,} FLOPs/token, count {counted:.4g} FLOPs ({counted / budget - 1:+.2%}); 50 steps always do: a budget of at least "
                 f"{50 * per_step * per_token:.3g} FLOPs at this size, or a smaller deepspeed.train_batch_size")
        return tokens, steps, budget

    def run_config(self, run: Run, data: dict) -> dict:
        """The trainer's run config (fastscale.train.RunConfig) of one grid point."""
        train = {**self.train, "steps": run.steps, "seed": run.seed, "lr": run.lr}
        config = {"model": self._model_options(run.n_target, run.aspect_ratio), "data": data, "seq_len": self.seq_len, "train": train}
        return config if self.packing is None else {**config, "packing": self.packing}


def _check_study(study, data) -> None:
    from .studies import study as study_module

    _require(isinstance(study, dict) and "kind" in study, "study", study, 'an object with a "kind" (and that study\'s options)')
    module = study_module(study["kind"])
    module.check(study_options(study))
    domain = _data_domain(data)
    _require(domain is None or domain in module.DOMAINS, "data", data, f"data of domain {' or '.join(module.DOMAINS)} for a {study['kind']} study")


def _data_domain(data) -> str | None:
    """The domain of a sweep's data: its "dataset", or the domain a prepared {"path": DIR} records
    (None where that cannot be read here: the trainer's own checks name the problem)."""
    if not isinstance(data, dict):
        return None
    if "dataset" in data:
        return data["dataset"]
    try:
        return json.loads((Path(data["path"]) / "train" / "meta.json").read_text()).get("domain")
    except (KeyError, TypeError, OSError, ValueError):
        return None


def study_options(study: dict) -> dict:
    return {k: v for k, v in study.items() if k != "kind"}
