"""The report's numbers are fastscale.fit's on the same data: a sweep directory written by hand from
known laws (no training), with a resumed run's duplicate steps and a torn last line in its metrics."""

import json

import numpy as np
import pytest

from fastscale.fit import FitInputError, fit_critical_batch_vs_loss, fit_frontier, fit_power_law
from fastscale.sweep.report import build_report, write_report

N = np.array([1e4, 3e4, 1e5, 3e5, 1e6, 3e6])
STEPS = np.arange(1, 101)
TOKENS_PER_STEP = 1000
BOOT = 200


def true_curve(n, step):
    """Loss after `step` steps of a model of size n: a converged L(N) plus a term that falls with compute."""
    compute = 6 * n * step * TOKENS_PER_STEP
    return 1.2 + (5e3 / n) ** 0.35 + (1e9 / compute) ** 0.5


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    (root / "sweep.json").write_text(json.dumps({"name": "synthetic", "tokens_per_item": 192}))
    index, finals, clean = {}, [], []
    for i, n in enumerate(N):
        name = f"run{i}"
        run_dir = root / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"n_params": int(n), "model": {"n_layer": i + 1, "d_model": 16 * (i + 1), "n_head": 1}}))
        loss = true_curve(n, STEPS) * np.exp(rng.normal(0, 0.01, len(STEPS)))
        final_eval = float(loss[-1] * 1.01)
        lines = []
        for step in range(1, 61):  # first attempt, killed after step 60: steps 41-60 were retrained
            lines.append({"step": step, "loss": float(loss[step - 1]) + (1.0 if step > 40 else 0.0), "flops": 6.0 * n * step * TOKENS_PER_STEP})
        for step in range(41, 101):  # resumed from the checkpoint at step 40
            lines.append({"step": step, "loss": float(loss[step - 1]), "flops": 6.0 * n * step * TOKENS_PER_STEP, "mfu": 0.1})
        for record in lines:
            if record["step"] % 10 == 0:
                record["noise_scale"] = 300.0 / record["loss"] ** 2
        lines[-1]["eval_loss"] = final_eval
        text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 101, "lo'  # torn last line
        (run_dir / "metrics.jsonl").write_text(text)
        summary = {"steps": 100, "tokens": 100 * TOKENS_PER_STEP, "flops": 6.0 * n * 1e5, "final_loss": float(loss[-1]), "final_eval_loss": final_eval, "tokens_per_s": 1000.0 + i}
        index[name] = {"state": "done", "attempts": 2, "run_dir": f"runs/{name}", "summary": summary}
        finals.append(final_eval)
        clean.append(loss)
    index["unfinished"] = {"state": "running", "attempts": 1, "run_dir": "runs/unfinished"}
    (root / "results.json").write_text(json.dumps({"runs": index}))
    report = write_report(root, n_bootstrap=BOOT)
    return root, report, np.array(finals), clean


def test_L_of_N_is_fit_power_law_on_the_final_eval_losses(sweep):
    _, report, finals, _ = sweep
    expected = fit_power_law(N, finals, n_bootstrap=BOOT, seed=0).summary()
    assert report["L_of_N"]["params"] == expected["params"]
    assert report["L_of_N"]["ci"] == expected["ci"]
    assert report["L_of_N"]["per_item"]["L_inf"] == pytest.approx(192 * expected["params"]["L_inf"])
    assert report["L_of_N"]["params"]["alpha"] == pytest.approx(0.35, abs=0.08)  # and it finds the law


def test_extrapolation_is_a_fit_without_the_largest(sweep):
    _, report, finals, _ = sweep
    without = fit_power_law(N[:-1], finals[:-1], n_bootstrap=BOOT, seed=0)
    predicted = float(without.predict(N[-1:])[0])
    assert report["extrapolation"]["predicted"] == [pytest.approx(predicted, rel=1e-12)]
    assert report["extrapolation"]["relative_error"] == [pytest.approx((predicted - finals[-1]) / finals[-1], rel=1e-9)]


def test_frontier_is_fit_frontier_on_the_smoothed_curves_without_early_steps(sweep):
    _, report, _, _ = sweep
    run, size, flops, smoothed = [], [], [], []
    for i, n in enumerate(N):
        loss = sweep[3][i]  # as generated: the killed attempt's +1.0 losses must not appear
        window = np.convolve(loss, np.ones(10), "full")[: len(loss)] / np.minimum(np.arange(1, len(loss) + 1), 10)  # 10% of 100 steps
        keep = STEPS > 10  # the first 10% of steps
        run += [f"run{i}"] * int(keep.sum())
        size += [n] * int(keep.sum())
        flops += list(6.0 * n * STEPS[keep] * TOKENS_PER_STEP)
        smoothed += list(window[keep])
    expected = fit_frontier(np.array(run), np.array(size), np.array(flops), np.array(smoothed), n_bootstrap=BOOT, seed=0)
    assert report["frontier"]["curves"] == "smoothed train"  # one evaluation per run: too few for a held-out curve
    assert report["frontier"]["L_of_C"]["params"] == pytest.approx(expected.loss_fit.params, rel=1e-9)
    assert report["frontier"]["N_opt"]["params"] == pytest.approx(expected.allocation.params, rel=1e-9)
    assert report["frontier"]["N_opt"]["ci"]["a"] == pytest.approx(list(expected.allocation.intervals["a"]), rel=1e-9)


def test_forecast_solves_the_fitted_law(sweep):
    _, report, _, _ = sweep
    p = report["L_of_N"]["params"]
    largest = (p["x0"] / N.max()) ** p["alpha"]
    for row, fraction in zip(report["forecast"], (0.5, 0.25, 0.1)):
        assert row["reducible"] == pytest.approx(fraction * largest)
        assert row["reducible_per_item"] == pytest.approx(192 * fraction * largest)
        assert row["N"]["value"] == pytest.approx(p["x0"] * (fraction * largest) ** (-1 / p["alpha"]), rel=1e-9)
        assert row["N"]["value"] > N.max()
        # the compute at which that N is compute-optimal: N_opt(C) = (C/C0)^a solved for C
        a, c0 = report["frontier"]["N_opt"]["params"]["a"], report["frontier"]["N_opt"]["params"]["C0"]
        assert row["C"]["value"] == pytest.approx(c0 * row["N"]["value"] ** (1 / a), rel=1e-9)
        assert row["C"]["low"] < row["C"]["value"] < row["C"]["high"]
        assert row["D"] == pytest.approx(row["C"]["value"] / (6 * row["N"]["value"]), rel=1e-12)


def test_noise_scale_and_run_table(sweep):
    root, report, _, _ = sweep
    assert sorted(report["noise_scale"]["per_run"]) == [f"run{i}" for i in range(6)]
    losses, scales = [], []
    for i in range(6):
        series = report["noise_scale"]["per_run"][f"run{i}"]
        assert series["step"] == [float(s) for s in range(10, 101, 10)]
        clean = sweep[3][i]  # each step's loss as generated (the killed attempt's +1.0 retrained away)
        smoothed = [clean[max(0, s - 10) : s].mean() for s in range(10, 101, 10)]  # trailing mean over 10% of 100 steps
        np.testing.assert_allclose(series["loss"], smoothed, rtol=1e-12)
        np.testing.assert_allclose(series["noise_scale"], [300.0 / clean[s - 1] ** 2 for s in range(10, 101, 10)], rtol=1e-12)
        losses += series["loss"][5:]
        scales += series["noise_scale"][5:]
    expected = fit_critical_batch_vs_loss(np.array(losses), np.array(scales), n_bootstrap=BOOT, seed=0)
    assert report["noise_scale"]["B_crit_of_L"]["params"]["alpha_B"] == pytest.approx(0.5, abs=0.05)  # B = 300 / L^2, L smoothed
    assert report["noise_scale"]["B_crit_of_L"]["params"] == pytest.approx(expected.params, rel=1e-9)
    assert [r["n_params"] for r in report["runs"]] == [int(n) for n in N]
    assert [r["tokens_per_s"] for r in report["runs"]] == [1000.0 + i for i in range(6)]
    assert all(r["mfu"] == 0.1 for r in report["runs"])
    text = (root / "report.md").read_text()
    assert f"alpha = {report['L_of_N']['params']['alpha']:.4g}" in text
    for name in ("L_of_N", "frontier", "noise_scale"):
        for suffix in (".png", ".svg"):
            assert (root / f"{name}{suffix}").stat().st_size > 1000


def test_L_of_N_takes_each_sizes_largest_token_budget_with_every_seed():
    from fastscale.sweep.report import longest_runs

    def run(name, n, tokens):
        return {"name": name, "config": {"n_params": n}, "summary": {"tokens": tokens}}

    runs = [run("a", 10, 100), run("b", 10, 300), run("c", 10, 300), run("d", 20, 100), run("e", 30, 200), run("f", 30, 50)]
    assert [r["name"] for r in longest_runs(runs)] == ["b", "c", "d", "e"]


def test_steps_skipped_as_non_finite_leave_the_curves_finite():
    """train.nonfinite="skip" records a skipped step with loss null: the smoothed curve and the noise-scale
    points leave it out instead of turning NaN."""
    from fastscale.sweep.report import learning_curves, noise_scales

    metrics = [{"step": s, "flops": 10.0 * s, "loss": 5.0 / s, "noise_scale": 100.0} for s in range(1, 21)]
    metrics[12] = {**metrics[12], "loss": None}
    runs = [{"name": "a", "config": {"n_params": 10}, "metrics": metrics}]
    rows, kind = learning_curves(runs)
    assert kind == "smoothed train" and np.isfinite(rows["loss"]).all()
    assert 13 * 10.0 not in rows["flops"] and len(rows["flops"]) == 17  # steps 3..20 but the skipped one
    assert np.isfinite(noise_scales(runs)["a"]).all() and len(noise_scales(runs)["a"]) == 19


def test_report_json_is_strict_json_with_null_for_non_finite_values(sweep):
    root, _, _, _ = sweep

    def refuse(constant):
        raise AssertionError(f"report.json holds {constant}")

    json.loads((root / "report.json").read_text(), parse_constant=refuse)


def test_the_torn_lines_the_report_skipped_are_listed_run_by_run(sweep):
    root, report, _, _ = sweep
    lines = {f"run{i}": len((root / "runs" / f"run{i}" / "metrics.jsonl").read_text().splitlines()) for i in range(6)}
    assert report["skipped_lines"] == {name: [count] for name, count in lines.items()}  # each run's torn last line
    assert json.loads((root / "report.json").read_text())["skipped_lines"] == report["skipped_lines"]
    text = (root / "report.md").read_text()
    assert "Skipped unreadable lines of metrics.jsonl" in text and f"run0: 1 (line {lines['run0']})" in text


def test_forecast_at_chosen_reducible_losses(sweep):
    root, _, _, _ = sweep
    report, _ = build_report(root, n_bootstrap=BOOT, forecast_reducible=[0.2, 0.01])
    p = report["L_of_N"]["params"]
    for row, eps in zip(report["forecast"], (0.2, 0.01), strict=True):
        assert row["reducible"] == eps and row["loss"] == pytest.approx(p["L_inf"] + eps)
        assert row["N"]["value"] == pytest.approx(p["x0"] * eps ** (-1 / p["alpha"]), rel=1e-9)


@pytest.mark.parametrize("bad", [[], [0.1, -0.2], [float("nan")], 0.1])
def test_bad_forecast_losses_are_refused_before_any_fit(sweep, bad):
    root, _, _, _ = sweep
    with pytest.raises(FitInputError, match=r"forecast_reducible=.*expected a non-empty list of positive"):
        build_report(root, n_bootstrap=BOOT, forecast_reducible=bad)


@pytest.mark.slow
def test_fastscale_report_command_forecasts_the_losses_it_is_given(sweep):
    import sys

    from processes import run

    root, _, _, _ = sweep
    done = run([sys.executable, "-m", "fastscale.cli", "report", str(root), "--bootstrap", str(BOOT), "--forecast-reducible", "0.3", "0.02"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [row["reducible"] for row in json.loads((root / "report.json").read_text())["forecast"]] == [0.3, 0.02]
    bad = run([sys.executable, "-m", "fastscale.cli", "sweep", str(root / "never"), "--forecast-reducible", "-1"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "forecast_reducible=[-1.0]" in bad.stderr
    assert not (root / "never").exists()  # refused before any work


def test_frontier_takes_the_held_out_curves_when_every_run_evaluated_often(tmp_path, rng):
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "evaluated"}))
    index, run, size, flops, held_out = {}, [], [], [], []
    for i, n in enumerate(N):
        name = f"run{i}"
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text(json.dumps({"n_params": int(n), "model": {"n_layer": 1, "d_model": 16, "n_head": 1}}))
        lines = []
        for step in STEPS:
            record = {"step": int(step), "loss": float(true_curve(n, step) + rng.normal(0, 0.3)), "flops": 6.0 * n * step * TOKENS_PER_STEP}
            if step % 20 == 0 or step == 5:  # 6 evaluations; the one at step 5 is in the first 10% of steps
                record["eval_loss"] = float(true_curve(n, step) * np.exp(rng.normal(0, 0.003)))
                if step > 10:
                    run.append(name), size.append(n), flops.append(record["flops"]), held_out.append(record["eval_loss"])
            lines.append(json.dumps(record))
        (tmp_path / "runs" / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        summary = {"steps": 100, "tokens": 100 * TOKENS_PER_STEP, "flops": 6.0 * n * 1e5, "final_loss": 3.0, "final_eval_loss": held_out[-1], "tokens_per_s": 1.0}
        index[name] = {"state": "done", "attempts": 1, "run_dir": f"runs/{name}", "summary": summary}
    (tmp_path / "results.json").write_text(json.dumps({"runs": index}))
    report, _ = build_report(tmp_path, n_bootstrap=BOOT)
    expected = fit_frontier(np.array(run), np.array(size), np.array(flops), np.array(held_out), n_bootstrap=BOOT, seed=0)
    assert report["frontier"]["curves"] == "held-out"
    assert report["frontier"]["L_of_C"]["params"] == pytest.approx(expected.loss_fit.params, rel=1e-9)
    assert report["frontier"]["N_opt"]["params"] == pytest.approx(expected.allocation.params, rel=1e-9)


def test_the_report_states_the_flop_convention_and_shows_6nd_beside_c(sweep):
    root, report, _, _ = sweep
    # the synthetic runs record C = 6 N D exactly (no attention term) and have token budgets
    assert report["compute"]["flops_over_six_nd"] == [1.0, 1.0] and report["compute"]["max_budget_error"] is None
    for r, n in zip(report["runs"], N):
        assert r["six_nd"] == 6.0 * int(n) * 1e5 and r["flops_over_six_nd"] == 1.0
        assert r["compute_budget"] is None and r["flops_over_budget"] is None
    text = (root / "report.md").read_text()
    assert "Compute: C is the trainer's count of training FLOPs: flops_per_token x tokens, flops_per_token = 6N + 6 n_layer n_ctx d_attn" in text
    assert "Here C / 6ND = 1.000 to 1.000" in text and "Compute budgets" not in text
    assert "| run | N | n_layer | d_model | n_head | tokens | epochs | C (FLOPs) | 6ND | C / 6ND | C / budget |" in text
    assert "| run0 | 10,000 | 1 | 16 | 1 | 100,000 | - | 6e+09 | 6e+09 | 1.000 | - |" in text  # no train split size recorded: epochs unknown
    assert report["isoflop"] is None and "IsoFLOP" not in text  # token budgets: no profiles


@pytest.mark.slow
def test_a_compute_sweeps_report_shows_each_runs_budget_and_its_distance(tmp_path, rng):
    """A sweep directory as an IsoFLOP sweep's runs would leave it (no training): each run trained the
    steps its spec gives, and recorded C = flops_per_token of its built shape x tokens."""
    from fastscale.model import GPTConfig
    from fastscale.sweep import SweepSpec

    raw = {"name": "iso", "data": {"dataset": "images", "resolution": 8}, "seq_len": 193, "tokens_per_item": 192, "sizes": [1e4, 2e4, 5e4, 2e5],
           "compute": [3e11, 1e12], "model": {"head_dim": 16}, "deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4}}
    (tmp_path / "sweep.json").write_text(json.dumps(raw))
    index, errors, ratios = {}, [], []
    for run in SweepSpec.from_dict(raw).runs():
        shape = GPTConfig.from_params(run.n_target, 256, 193, head_dim=16)
        tokens = run.steps * 8 * 193
        flops = float(shape.flops_per_token()) * tokens
        errors.append(abs(flops / run.compute - 1))
        ratios.append(flops / (6.0 * shape.n_params * tokens))
        (tmp_path / "runs" / run.name).mkdir(parents=True)
        (tmp_path / "runs" / run.name / "config.json").write_text(json.dumps({"n_params": shape.n_params, "model": shape.to_dict()}))
        steps = np.linspace(run.steps / 10, run.steps, 10).round()
        lines = [{"step": int(s), "loss": float(true_curve(shape.n_params, s) * np.exp(rng.normal(0, 0.01))), "flops": flops * s / run.steps} for s in steps]
        (tmp_path / "runs" / run.name / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        summary = {"steps": run.steps, "tokens": tokens, "flops": flops, "final_loss": lines[-1]["loss"], "final_eval_loss": None, "tokens_per_s": 1.0}
        index[run.name] = {"state": "done", "attempts": 1, "run_dir": f"runs/{run.name}", "summary": summary}
    (tmp_path / "results.json").write_text(json.dumps({"runs": index}))
    report = write_report(tmp_path, n_bootstrap=20)
    budgets = {run.name: run.compute for run in SweepSpec.from_dict(raw).runs()}
    for r in report["runs"]:
        assert r["compute_budget"] == budgets[r["name"]]
        assert r["flops_over_budget"] == pytest.approx(index[r["name"]]["summary"]["flops"] / budgets[r["name"]], rel=1e-12)
    assert report["compute"]["max_budget_error"] == pytest.approx(max(errors), rel=1e-12) and max(errors) <= 0.01
    assert report["compute"]["flops_over_six_nd"] == pytest.approx([min(ratios), max(ratios)], rel=1e-12)
    assert min(ratios) > 1.01  # at these sizes the attention term is more than 1% of C
    text = (tmp_path / "report.md").read_text()
    assert f"every run's C is within {max(errors):.2%} of its budget (the sweep refuses more than 1%)" in text
    assert f"Here C / 6ND = {min(ratios):.3f} to {max(ratios):.3f}" in text
    assert "expected at least 3" in report["isoflop"]["error"]  # 2 budgets: no IsoFLOP line, and the report says why
    assert "## IsoFLOP profiles" in text and "Not fitted: compute: got " in text
