"""The report's readings a researcher checks first, recomputed here in float64 numpy from the runs'
metrics: final losses, observed against fitted reducible loss, the extrapolation check on the reducible
loss, seeds, L(N, D), the forecast's caveats, and the frontier the CLI gives too. A sweep directory
written by hand (no training): sizes at two token budgets, two seeds at the smallest sizes."""

import json

import numpy as np
import pytest

from fastscale.cli import main
from fastscale.fit import fit_chinchilla, fit_power_law
from fastscale.sweep.report import SMOOTH_FRACTION, build_report, write_report

# every test reads one synthetic sweep's report, fitted with bootstraps
pytestmark = pytest.mark.slow

SIZES = [1e4, 2e4, 5e4, 1e5, 3e5, 1e6]
SEEDS = {1e4: (0, 1), 2e4: (0, 1)}
STEPS = {1e5: 100, 2e5: 200, 3e5: 300}  # token budget -> steps of 1,000 tokens
TOKENS_PER_STEP, EVAL_EVERY, UNIQUE_TOKENS = 1000, 20, 4e5
BOOT = 40


def truth(n, tokens):
    """Chinchilla's form: the held-out loss of a model of n parameters after `tokens` tokens."""
    return 1.5 + 400.0 / n**0.45 + 300.0 / tokens**0.4


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    rng = np.random.default_rng(11)
    (root / "sweep.json").write_text(json.dumps({"name": "trust", "tokens_per_item": 192, "tokens": list(STEPS)}))
    index, runs = {}, {}
    for n in SIZES:
        for budget, steps in STEPS.items():
            for seed in SEEDS.get(n, (0,)):
                name = f"N{n:.0e}_t{budget:.0e}_s{seed}"
                run_dir = root / "runs" / name
                run_dir.mkdir(parents=True)
                config = {"n_params": int(n), "model": {"n_layer": 2, "d_model": 32, "n_head": 2, "seq_len": 100},
                          "data": {"train_rows": int(UNIQUE_TOKENS / 100), "train": {"n_tokens": UNIQUE_TOKENS}}}
                (run_dir / "config.json").write_text(json.dumps(config))
                offset = rng.normal(0, 0.004)  # a seed's own departure, shared by its whole curve
                records = []
                for step in range(1, steps + 1):
                    tokens = step * TOKENS_PER_STEP
                    record = {"step": step, "loss": float(truth(n, tokens) + offset + rng.normal(0, 0.15)), "flops": 6.0 * n * tokens}
                    if step % EVAL_EVERY == 0 or step == steps:
                        record["eval_loss"] = float(truth(n, tokens) + offset + rng.normal(0, 0.002))
                    records.append(record)
                (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
                summary = {"steps": steps, "tokens": steps * TOKENS_PER_STEP, "flops": 6.0 * n * steps * TOKENS_PER_STEP,
                           "final_loss": records[-1]["loss"], "final_eval_loss": records[-1]["eval_loss"], "tokens_per_s": 1.0}
                index[name] = {"state": "done", "attempts": 1, "run_dir": f"runs/{name}", "summary": summary}
                runs[name] = records
    (root / "results.json").write_text(json.dumps({"runs": index}))
    report = write_report(root, n_bootstrap=BOOT)
    return root, report, runs


def longest(runs):
    """(names, N, final eval loss) of the 3e5-token runs, as numpy recomputes them from the metrics."""
    names = sorted((name for name in runs if "_t3e+05_" in name), key=lambda name: (float(name[1:6]), name))
    n = np.array([float(name[1:6]) for name in names])
    return names, n, np.array([runs[name][-1]["eval_loss"] for name in names])


def test_final_losses_are_the_last_held_out_loss_and_the_runs_table_the_mean_of_the_last_steps(sweep):
    _, report, runs = sweep
    names, n, loss = longest(runs)
    assert report["L_of_N"]["runs"] == names and report["L_of_N"]["loss"] == loss.tolist()
    assert report["L_of_N"]["loss_kind"] == "held-out loss at the last step"
    for row in report["runs"]:
        train = np.array([r["loss"] for r in runs[row["name"]]], dtype=np.float64)
        k = round(SMOOTH_FRACTION * len(train))
        assert row["train_loss"] == pytest.approx(train[-k:].mean(), rel=1e-12)
        assert abs(row["train_loss"] - train[-1]) > 1e-6  # not the last step's loss


def test_seeds_enter_l_of_n_and_its_bootstrap_resamples_sizes(sweep):
    _, report, runs = sweep
    _, n, loss = longest(runs)
    assert len(n) == 8 and len(np.unique(n)) == 6
    expected = fit_power_law(n, loss, n_bootstrap=BOOT, seed=0, groups=n, resampling="rows")
    assert report["L_of_N"]["params"] == pytest.approx(expected.params, rel=1e-9)
    assert report["L_of_N"]["ci"] == expected.summary()["ci"]
    spread = {s["N"]: s for s in report["L_of_N"]["seed_spread"]}
    for size in (1e4, 2e4):
        assert spread[size]["runs"] == 2 and spread[size]["std"] == pytest.approx(np.std(loss[n == size], ddof=1), rel=1e-12)
    p = report["L_of_N"]["params"]
    np.testing.assert_allclose(report["L_of_N"]["reducible_observed"], loss - p["L_inf"], rtol=1e-12)
    np.testing.assert_allclose(report["L_of_N"]["reducible"], (p["x0"] / n) ** p["alpha"], rtol=1e-9)


def test_the_extrapolation_check_reports_the_reducible_loss_error(sweep):
    _, report, runs = sweep
    _, n, loss = longest(runs)
    ext = report["extrapolation"]
    assert ext["held_out_N"] == [1e6]
    without = ext["fit"]["params"]
    predicted = (without["x0"] / 1e6) ** without["alpha"]  # the closed form of the law fitted without N = 1e6
    observed = loss[-1] - without["L_inf"]
    assert ext["reducible_predicted"] == [pytest.approx(predicted, rel=1e-9)]
    assert ext["reducible_observed"] == [pytest.approx(observed, rel=1e-12)]
    assert ext["reducible_relative_error"] == [pytest.approx((predicted - observed) / observed, rel=1e-9)]
    assert ext["relative_error"] == [pytest.approx((without["L_inf"] + predicted - loss[-1]) / loss[-1], rel=1e-9)]


def test_l_of_n_d_is_fit_chinchilla_on_every_run_with_its_compute_optimal_exponents(sweep):
    _, report, runs = sweep
    n = np.array([float(name[1:6]) for name in runs])
    tokens = np.array([len(records) * TOKENS_PER_STEP for records in runs.values()], dtype=np.float64)
    loss = np.array([records[-1]["eval_loss"] for records in runs.values()])
    expected = fit_chinchilla(n, tokens, loss, n_bootstrap=BOOT, seed=0)
    section = report["L_of_N_D"]
    assert section["runs"] == 24
    assert section["params"] == pytest.approx(expected.params, rel=1e-6)
    p = section["params"]
    assert p["a"] == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]), rel=1e-12)
    assert p["b"] == pytest.approx(p["alpha"] / (p["alpha"] + p["beta"]), rel=1e-12)
    assert p["alpha"] == pytest.approx(0.45, abs=0.1) and p["beta"] == pytest.approx(0.4, abs=0.1)  # it finds the law


def test_forecast_rows_carry_their_caveats(sweep):
    _, report, _ = sweep
    assert report["forecast"]
    for row in report["forecast"]:
        n_span = row["N"]["high"] / row["N"]["low"]
        assert any("N interval spans" in c for c in row["caveats"]) == (not n_span <= 10)
        assert any("the largest size trained" in c for c in row["caveats"]) == (row["N"]["value"] > 1e6)
        beyond = row["D"] is not None and row["D"] > UNIQUE_TOKENS
        assert any(f"epochs of the {UNIQUE_TOKENS:,.0f} training tokens" in c for c in row["caveats"]) == beyond
    assert any(row["D"] > UNIQUE_TOKENS for row in report["forecast"])  # the case the caveat is for occurs


def test_the_markdown_says_what_each_number_is(sweep):
    root, report, _ = sweep
    text = (root / "report.md").read_text()
    assert "Final loss: the held-out loss at the last step." in text
    assert "What L_inf includes:" in text and "data-limited loss" in text
    assert "| reducible loss (observed: loss - L_inf of this fit) |" in text
    assert f"{report['extrapolation']['reducible_relative_error'][0]:+.1%}" in text
    assert "## L(N, D): Chinchilla's law on every run" in text and "a = beta/(alpha+beta)" in text
    assert "Caveats (extrapolations beyond what was measured):" in text
    assert "| train loss | final eval loss |" in text
    assert "N0 = " in text and "seeds: N = 1e+04: 2 seeds" in text
    assert "--drop-warmup 0.1" in text


def test_the_cli_gives_the_reports_frontier(sweep, capsys):
    root, report, _ = sweep
    assert report["frontier"]["curves"] == "held-out"
    code = main(["fit", str(root / "runs"), "--law", "frontier", "--N", "n_params", "--C", "flops", "--loss", "eval_loss",
                 "--drop-warmup", "0.1", "--bootstrap", str(BOOT), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    cli = json.loads(out)
    frontier = report["frontier"]
    assert cli["params"]["alpha"] == frontier["L_of_C"]["params"]["alpha"] and cli["params"]["a"] == frontier["N_opt"]["params"]["a"]
    assert cli["ci"]["a"] == frontier["N_opt"]["ci"]["a"]
    code = main(["fit", str(root / "runs"), "--law", "frontier", "--N", "n_params", "--C", "flops", "--loss", "eval_loss", "--bootstrap", "0", "--json"])
    without = json.loads(capsys.readouterr()[0])
    assert without["params"]["a"] != frontier["N_opt"]["params"]["a"]  # the warm-up option matters here


@pytest.mark.parametrize("budgets, section", [(("_t3e+05_",), None), (("_t1e+05_", "_t3e+05_"), "error")])
def test_l_of_n_d_needs_two_budgets_per_size_and_says_why_two_token_counts_are_not_enough(tmp_path, sweep, budgets, section):
    root, _, _ = sweep
    index = json.loads((root / "results.json").read_text())
    index["runs"] = {k: v for k, v in index["runs"].items() if any(b in k for b in budgets)}
    (tmp_path / "runs").symlink_to(root / "runs")
    (tmp_path / "sweep.json").write_text((root / "sweep.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps(index))
    report, _ = build_report(tmp_path, n_bootstrap=0)
    if section is None:
        assert report["L_of_N_D"] is None  # one budget per size: no section
    else:  # two token counts cannot separate E from B/D^beta: fit_chinchilla's refusal is the section
        assert "n_tokens has 2 distinct values" in report["L_of_N_D"]["error"]
