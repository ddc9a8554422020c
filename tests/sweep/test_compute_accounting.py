"""One compute accounting from a sweep's budget to its report: a compute budget C gives each run the
tokens at which flops_per_token() of the shape it builds reaches C, in whole optimizer steps, and the
FLOPs the trainer counts land within 1% of C. The counted C is recomputed here through the trainer's
own shape builder (fastscale.train.launch.model_config) and, for the real sweep, read from what the
trainer recorded."""

import copy
import json

import numpy as np
import pytest
import torch

from fastscale.sweep import PRESETS, SweepError, SweepSpec, run_sweep
from fastscale.sweep.report import compute_section, load_runs, run_rows
from fastscale.sweep.spec import COMPUTE_TOLERANCE
from fastscale.train.config import RunConfig
from fastscale.train.launch import model_config


@pytest.fixture
def rng():
    """Fresh draws per test, reproducible run to run: conftest seeds torch with the test id's CRC."""
    return np.random.default_rng(torch.initial_seed())


def iso_flop_spec(budgets) -> SweepSpec:
    """image8's sizes, shapes and batches under compute budgets: an IsoFLOP grid (Chinchilla's approach 2)."""
    raw = copy.deepcopy(PRESETS["image8"])
    del raw["tokens"]
    return SweepSpec.from_dict({**raw, "compute": list(budgets)})


def built_flops_per_token(spec: SweepSpec, run, vocab_size: int) -> int:
    """flops_per_token of the shape the trainer builds for this run (its own code path), checked against
    Kaplan's 6N + 6 n_layer n_ctx d_attn written out from the shape's dimensions."""
    shape = model_config(RunConfig.from_dict(spec.run_config(run, {"path": "/data"})), vocab_size)
    n_params = shape.n_layer * (4 * shape.d_model**2 + 2 * shape.d_model * shape.d_ff)  # multi-head: q, k, v, out + MLP
    assert shape.flops_per_token() == 6 * n_params + 6 * shape.n_layer * spec.seq_len * shape.d_model
    return shape.flops_per_token()


def counted(spec: SweepSpec, run, steps: int, vocab_size: int = 256) -> float:
    return float(built_flops_per_token(spec, run, vocab_size)) * steps * spec.deepspeed["train_batch_size"] * spec.seq_len


def test_every_run_of_an_iso_flop_sweep_counts_its_budget_within_one_percent(rng):
    budgets = [1e12, 3e12, *np.exp(rng.uniform(np.log(1e12), np.log(1e14), 3))]  # fresh budgets each seed
    spec = iso_flop_spec(budgets)
    runs = spec.runs()
    assert len(runs) == sum(len(seeds) for seeds in spec.seeds) * 5
    for run in runs:
        c = counted(spec, run, run.steps)
        assert abs(c / run.compute - 1) <= COMPUTE_TOLERANCE, run.name
        # the nearest whole number of steps: neither neighbour is closer to the budget
        assert abs(c - run.compute) <= min(abs(counted(spec, run, run.steps + d) - run.compute) for d in (-1, 1)), run.name
        assert run.tokens == pytest.approx(run.compute / built_flops_per_token(spec, run, 256), rel=1e-12)


def test_the_old_rule_c_equals_6_n_target_d_misses_the_budget_by_up_to_1_85x():
    """What the accounting replaced, measured by the same count: tokens = C / (6 N_target)."""
    spec = iso_flop_spec([1e12])
    ratios = {}
    for run in spec.runs():
        old_steps = round(run.compute / (6 * run.n_target) / spec.tokens_per_step())
        ratios[run.n_target] = counted(spec, run, old_steps) / run.compute
    assert ratios[1e4] == pytest.approx(1.85, abs=0.01) and ratios[2e5] == pytest.approx(1.29, abs=0.01)
    assert min(ratios.values()) > 1 + COMPUTE_TOLERANCE  # every size: the attention term and the rounded shape


@pytest.mark.parametrize("vocab_size", [3, 256, 50304])
def test_the_spec_counts_the_shape_the_trainer_builds_whatever_the_vocabulary(vocab_size):
    spec = SweepSpec.from_dict({**iso_flop_spec([1e12]).raw, "model": {"head_dim": 16, "positions": "rotary", "n_kv_head": 1}, "seq_len": 97})
    for run in spec.runs():
        shape = model_config(RunConfig.from_dict(spec.run_config(run, {"path": "/data"})), vocab_size)
        assert spec.flops_per_token(run.n_target) == shape.flops_per_token()  # grouped-query attention: no closed form above


def test_any_budget_of_at_least_50_steps_lands_within_one_percent(rng):
    spec = iso_flop_spec([1e12])
    per_step = {n: spec.flops_per_token(n) * spec.tokens_per_step() for n in spec.sizes}
    for n in spec.sizes:
        for budget in per_step[n] * rng.uniform(50, 400, 20):
            (run,) = SweepSpec.from_dict({**spec.raw, "sizes": [n], "seeds": [0], "compute": [float(budget)]}).runs()
            assert abs(run.steps * per_step[n] / budget - 1) <= 0.5 / 50 + 1e-12


def test_a_budget_that_whole_steps_miss_by_more_than_one_percent_is_refused_with_the_run_named():
    spec = iso_flop_spec([1e12])
    per_step = spec.flops_per_token(1e6) * spec.tokens_per_step()  # 6,085,440 FLOPs/token x 1,544 tokens
    budget = 10.5 * per_step  # 10 or 11 steps: 4.8% off either way (round half to even: 10)
    with pytest.raises(SweepError, match=r"compute \(run N1e06_c.*\)=.*within 1%: the nearest, 10 step\(s\).*-4\.76%.*at least 4\.7e\+11 FLOPs at this size"):
        SweepSpec.from_dict({**spec.raw, "compute": [budget]}).runs()
    with pytest.raises(SweepError, match=r"compute \(run N1e04_c1e06\)=1000000.0.*1 step\(s\) of 1544 tokens.*\+17005"):  # less than a step: one overshoots
        SweepSpec.from_dict({**spec.raw, "compute": [1e6]}).runs()


def test_a_shape_from_params_cannot_build_is_refused_naming_the_model_option():
    spec = iso_flop_spec([1e12])
    with pytest.raises(SweepError, match=r"model=\{'head_dim': 64\} at size 10000: .*too small for head_dim=64"):
        SweepSpec.from_dict({**spec.raw, "model": {"head_dim": 64}}).runs()


# ---------------------------------------------------------------- a real tiny sweep
# two sizes of distinct one-layer shapes (head_dim 8), 64 tokens a step, ~60 and ~200 steps
TINY = {
    "name": "tiny-compute", "data": {"dataset": "digits"}, "seq_len": 32, "sizes": [3e3, 1.2e4], "seeds": [0], "model": {"head_dim": 8},
    "lr": 3e-3, "train": {"warmup_steps": 2, "log_interval": 10, "eval_interval": 0, "checkpoint_interval": 0, "noise_scale_interval": 0},
    "deepspeed": {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}, "steps_per_print": 1000000000},
}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    base = SweepSpec.from_dict({**TINY, "tokens": [1.0]})
    budget = 60.3 * base.flops_per_token(1.2e4) * base.tokens_per_step()  # ~60 steps of the larger size
    out = tmp_path_factory.mktemp("compute")
    spec = SweepSpec.from_dict({**TINY, "compute": [budget]})
    run_sweep(spec, out, jobs=2)
    return out, spec, budget


@pytest.mark.slow
def test_a_real_sweep_records_the_budget_it_was_given(tiny_sweep):
    """What the trainer recorded: tokens = steps x 2 rows x 32, C = flops_per_token x tokens within 1% of the budget."""
    out, spec, budget = tiny_sweep
    index = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(index) == sorted(r.name for r in spec.runs()) and all(e["state"] == "done" for e in index.values())
    for run in spec.runs():
        summary = index[run.name]["summary"]
        config = json.loads((out / index[run.name]["run_dir"] / "config.json").read_text())
        assert summary["steps"] == run.steps and summary["tokens"] == run.steps * 64
        assert config["flops_per_token"] == spec.flops_per_token(run.n_target)
        assert summary["flops"] == pytest.approx(config["flops_per_token"] * summary["tokens"], rel=1e-12)
        assert abs(summary["flops"] / budget - 1) <= COMPUTE_TOLERANCE
    assert {r.steps for r in spec.runs()} == {60, round(60.3 * spec.flops_per_token(1.2e4) / spec.flops_per_token(3e3))}


@pytest.mark.slow
def test_the_report_rows_of_a_real_sweep_show_c_beside_6nd_and_the_budget(tiny_sweep):
    out, spec, budget = tiny_sweep
    rows = run_rows(json.loads((out / "sweep.json").read_text()), load_runs(out))
    assert len(rows) == 2
    for row in rows:
        assert row["compute_budget"] == budget
        assert row["flops_over_budget"] == pytest.approx(row["flops"] / budget, rel=1e-12) and abs(row["flops_over_budget"] - 1) <= COMPUTE_TOLERANCE
        assert row["six_nd"] == 6.0 * row["n_params"] * row["tokens"]
        # one layer of width d over 32 positions: C / 6ND = 1 + 6 x 32 x d / (6 x 12 d^2) = 1 + 32 / (12 d)
        assert row["flops_over_six_nd"] == pytest.approx(1 + 32 / (12 * row["d_model"]), rel=1e-12)
    section = compute_section(rows)
    assert section["max_budget_error"] == max(abs(r["flops_over_budget"] - 1) for r in rows) <= COMPUTE_TOLERANCE
    assert "6N + 6 n_layer n_ctx d_attn" in section["convention"] and "non-embedding" in section["convention"]
