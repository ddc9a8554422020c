"""`fastscale fit`: the published Chinchilla numbers as JSON, CSV and run-directory input, errors, plots."""

import csv
import json
import sys

import numpy as np
import pytest

import processes

from fastscale.cli import main
from fastscale.fit import fit_isoflop


def run_cli(capsys, *argv):
    code = main(["fit", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_chinchilla_json_prints_the_published_fit(capsys, epoch_csv):
    code, out, err = run_cli(
        capsys, epoch_csv, "--law", "chinchilla", "--N", "Model Size", "--C", "Training FLOP", "--loss", "loss",
        "--drop-top-loss", "5", "--bootstrap", "20", "--holdout-largest", "10", "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    p = report["params"]
    assert report["n_points"] == 240
    assert p["E"] == pytest.approx(1.8172, abs=0.01) and p["alpha"] == pytest.approx(0.3473, abs=0.005)
    assert p["beta"] == pytest.approx(0.3672, abs=0.01) and p["A"] == pytest.approx(477.8, rel=0.05)
    assert p["B"] == pytest.approx(2143, rel=0.1) and p["a"] == pytest.approx(0.514, abs=0.01)
    assert set(report["ci"]) == {"E", "A", "B", "alpha", "beta", "a", "b"}
    holdout = report["holdout"]
    assert len(holdout["rows"]) == 10
    assert holdout["mean_abs_rel_error"] == pytest.approx(np.mean([abs(r["rel_error"]) for r in holdout["rows"]]))
    assert 0 < holdout["mean_abs_rel_error"] < 0.05


def write_power_csv(path, seed=0):
    rng = np.random.default_rng(seed)
    n = np.logspace(5, 9, 9)
    loss = (2.0 + (3e4 / n) ** 0.25) * np.exp(rng.normal(0, 0.005, 9))
    path.write_text("N,loss,name\n" + "".join(f"{a},{b},run{i}\n" for i, (a, b) in enumerate(zip(n, loss))))
    return path


def test_power_table_holdout_forecast_and_results_file(capsys, tmp_path):
    data = write_power_csv(tmp_path / "runs.csv")
    out_file = tmp_path / "fit.json"
    code, out, err = run_cli(
        capsys, data, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "30", "--holdout-largest", "2",
        "--forecast-loss", "2.05", "--forecast-reducible", "0.05", "--tokens-per-item", "192", "--out", out_file,
    )
    assert code == 0, err
    assert "L_inf" in out and "x0" in out and "alpha" in out and "holdout" in out and "forecast" in out
    report = json.loads(out_file.read_text())
    p = report["params"]
    assert p["alpha"] == pytest.approx(0.25, abs=0.05)
    assert p["L_inf"] + (p["x0"] / report["forecast"]["N"]["value"]) ** p["alpha"] == pytest.approx(2.05)
    assert (p["x0"] / report["forecast_reducible"]["N"]["value"]) ** p["alpha"] == pytest.approx(0.05)
    assert report["per_item"]["L_inf"] == pytest.approx(192 * p["L_inf"])
    assert [row["row"] for row in report["holdout"]["rows"]] == [f"{data} line 10", f"{data} line 9"]  # the header is line 1
    assert list(tmp_path.glob(".fit.json.*")) == []  # no temporary file left behind


def test_resampling_scheme_is_chosen_and_stated(capsys, tmp_path):
    data = write_power_csv(tmp_path / "runs.csv")
    reports = {}
    for scheme in ("parametric", "rows"):
        code, out, err = run_cli(capsys, data, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "60", "--resampling", scheme, "--json")
        assert code == 0, err
        reports[scheme] = json.loads(out)
    assert [r["resampling"] for r in reports.values()] == ["parametric", "rows"]
    assert reports["parametric"]["params"] == reports["rows"]["params"]  # one estimate, two ways to draw its interval
    assert reports["parametric"]["ci"]["alpha"] != reports["rows"]["ci"]["alpha"]
    code, out, _ = run_cli(capsys, data, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "0")
    assert code == 0 and "bootstrap resamples: 0 (none)" in out
    with pytest.raises(SystemExit) as stop:
        run_cli(capsys, data, "--law", "power", "--x", "N", "--y", "loss", "--resampling", "bca")
    assert stop.value.code == 2 and "invalid choice: 'bca'" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_is_written(capsys, tmp_path, suffix):
    pytest.importorskip("matplotlib")
    data = write_power_csv(tmp_path / "runs.csv")
    plot = tmp_path / f"law{suffix}"
    code, _, err = run_cli(capsys, data, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "20", "--plot", plot)
    assert code == 0, err
    head = plot.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in head or b"<?xml" in head


def test_plot_with_holdout_and_for_the_data_constrained_law(capsys, tmp_path):
    """--plot draws with --holdout-largest, and for --law data-constrained (refused before it had a figure)."""
    pytest.importorskip("matplotlib")
    data = write_power_csv(tmp_path / "runs.csv")
    plot = tmp_path / "holdout.png"
    code, _, err = run_cli(capsys, data, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "20", "--holdout-largest", "2", "--plot", plot)
    assert code == 0, err
    assert plot.read_bytes().startswith(b"\x89PNG")
    n, unique_d, epochs = (a.ravel() for a in np.meshgrid([1e8, 4e8, 1.6e9], [2e9, 8e9], [1.0, 4.0, 16.0]))
    loss = 1.9 + 400 / n**0.34 + 400 / (unique_d * (1 + np.log(epochs))) ** 0.28  # falls with N and with epochs
    path = tmp_path / "repeated.csv"
    path.write_text("N,D,U,loss\n" + "".join(f"{a:g},{b * c:g},{b:g},{e:.17g}\n" for a, b, c, e in zip(n, unique_d, epochs, loss)))
    plot = tmp_path / "constrained.svg"
    code, _, err = run_cli(
        capsys, path, "--law", "data-constrained", "--N", "N", "--D", "D", "--unique-D", "U", "--loss", "loss", "--bootstrap", "0", "--plot", plot
    )
    assert code == 0, err
    assert b"<svg" in plot.read_bytes()[:500]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--law", "power", "--x", "params", "--y", "loss"], "--x 'params': no such column in DATA; columns are ['N', 'loss', 'name']"),
        (["--law", "power", "--x", "name", "--y", "loss"], "--x 'name': expected numbers"),
        (["--law", "power", "--x", "loss", "--y", "name", "--drop-warmup", "0.1"], "--drop-warmup does not apply to --law power"),
        (["--law", "chinchilla", "--N", "N", "--loss", "loss"], "expected --D or --C"),
        (["--law", "critical-batch", "--x", "N", "--y", "loss", "--drop-top-loss", "1"], "--drop-top-loss does not apply"),
        (["--law", "power", "--x", "N", "--y", "loss", "--drop-top-loss", "9"], "drop_top_loss=9: expected fewer than the 9 rows"),
    ],
)
def test_errors_name_the_option_and_exit_2(capsys, tmp_path, argv, message):
    data = write_power_csv(tmp_path / "runs.csv")
    code, out, err = run_cli(capsys, data, *argv, "--bootstrap", "0")
    assert code == 2 and out == ""
    assert message in err


def test_missing_file_is_an_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, tmp_path / "nope.csv", "--law", "power", "--x", "N", "--y", "loss")
    assert code == 2 and "no such file or directory" in err


def write_run(directory, n_params, noise_scale=False):
    """A trainer run directory: config.json and metrics.jsonl, resumed once (steps 40-50 logged twice)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"n_params": n_params}))
    lines = []
    for step in list(range(0, 51, 5)) + list(range(40, 101, 5)):
        tokens = step * 4096
        loss = (1e4 / n_params) ** 0.3 + (2e5 / max(tokens, 1)) ** 0.6
        record = {"step": step, "tokens": tokens, "flops": 6 * n_params * tokens, "loss": loss}
        if noise_scale and step % 20 == 0:
            record["noise_scale"] = 1e6 / loss ** (1 / 0.21)
        lines.append(json.dumps(record))
    (directory / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 105, "tok')  # torn last line


def test_frontier_from_run_directories(capsys, tmp_path):
    for i, n in enumerate(np.geomspace(1e4, 1e7, 7)):
        write_run(tmp_path / "sweep" / f"run{i}", float(n))
    code, out, err = run_cli(
        capsys, tmp_path / "sweep", "--law", "frontier", "--N", "n_params", "--C", "flops", "--loss", "loss",
        "--bootstrap", "20", "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert {"L_inf", "x0", "alpha", "a", "C0"} <= set(report["params"])
    assert len(report["frontier_runs"]) >= 3
    assert report["max_log_above_frontier"] <= 1e-3
    assert len(report["skipped_lines"]) == 7 and all("skipped 1 unreadable line (torn by a kill?)" in note for note in report["skipped_lines"])


def test_noise_scale_from_run_directory(capsys, tmp_path):
    write_run(tmp_path / "run", 1e6, noise_scale=True)
    code, out, err = run_cli(
        capsys, tmp_path / "run", "--law", "critical-batch", "--loss", "loss", "--noise-scale", "noise_scale", "--bootstrap", "0", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["params"]["alpha_B"] == pytest.approx(0.21, rel=1e-6)


def test_fit_layer_imports_without_torch():
    code = (
        "import sys, fastscale.fit, fastscale.fit.command, fastscale.fit.plots, fastscale.fit.benchmark, fastscale.units, fastscale.hardware; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'deepspeed', 'matplotlib')]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = processes.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


def test_benchmark_reports_both_optimizers(epoch_csv):
    from fastscale.fit import benchmark

    report = benchmark.chinchilla_comparison(*benchmark.load_epoch(epoch_csv), baseline_starts=9, repeats=1, data="Epoch")
    assert report["problem"] == {"data": "Epoch", "points": 240, "starts": 4500, "params": 5, "huber_delta": 1e-3}
    assert report["batched"]["objective"] == pytest.approx(0.00101827, rel=1e-4)
    assert report["scipy_loop"]["extrapolated"] and report["scipy_loop"]["starts_run"] == 9
    assert report["speedup"] > 0


def test_parameter_at_bound_is_warned_on_stderr_and_in_json(capsys, tmp_path):
    n = np.logspace(5, 9, 8)
    data = tmp_path / "pure.csv"
    data.write_text("N,loss\n" + "".join(f"{a},{(1e12 / a) ** 0.1}\n" for a in n))  # no floor: L_inf hits 0
    code, out, err = run_cli(capsys, data, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "0", "--json")
    assert code == 0
    assert any(flag.startswith("L_inf_at_bound: the estimate is on its lower bound 0") for flag in json.loads(out)["flags"])
    assert "warning: L_inf_at_bound: the estimate is on its lower bound 0" in err


def test_porian_allocation_with_where_and_sigma(capsys, porian, porian_folder):
    published, _, _ = porian
    setup = next(p for p in published if p["config"] == "rw-tuned-short-const-standard-val")
    data_path = porian_folder / "optimal_pairs.csv"
    code, out, err = run_cli(
        capsys, data_path, "--law", "allocation", "--where", f"config={setup['config']}", "--x", "flops", "--y", "n_star",
        "--sigma", "n_star_std_log", "--bootstrap", "0", "--json",
    )
    assert code == 0, err
    assert json.loads(out)["params"]["a"] == pytest.approx(setup["a_n_exponent"], abs=1e-4)
    code, out, err = run_cli(
        capsys, data_path, "--law", "allocation", "--where", f"config={setup['config']}", "--x", "flops", "--y", "n_star",
        "--sigma", "n_star_std_log", "--bootstrap", "0", "--holdout-largest", "2", "--json",
    )
    assert code == 0, err
    with open(data_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = sorted((float(r["flops"]), float(r["n_star"]), float(r["n_star_std_log"])) for r in rows if r["config"] == setup["config"] and r["n_star"])
    c, n_star, sigma = np.array(kept[:-2]).T
    from fastscale.fit import fit_allocation

    holdout = json.loads(out)["holdout"]
    assert holdout["fit_params"] == pytest.approx(fit_allocation(c, n_star, weights=sigma**-2, n_bootstrap=0).params, rel=1e-9)
    assert [row["flops"] for row in holdout["rows"]] == pytest.approx([kept[-1][0], kept[-2][0]])
    code, _, err = run_cli(capsys, data_path, "--law", "allocation", "--where", "config=nope", "--x", "flops", "--y", "n_star")
    assert code == 2 and "--where config=nope: no row matches" in err


def test_refusals_name_the_option_and_column_in_one_line(capsys, tmp_path):
    same_n = tmp_path / "same_n.csv"
    same_n.write_text("N,loss\n" + "".join(f"1000000,{2.5 + 0.01 * i}\n" for i in range(7)))
    code, out, err = run_cli(capsys, same_n, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "10")
    assert (code, out) == (2, "")
    assert err == (
        "fastscale fit: error: --x 'N': x has 1 distinct value (7 rows: 1e+06); "
        "power law needs >= 4 distinct values of x to determine how it depends on x\n"
    )
    flops = tmp_path / "flops.csv"
    flops.write_text("N,C,loss\n" + "".join(f"{n:g},{6 * n * 1e9:g},{3 + i / 10}\n" for i, n in enumerate([1e7, 1e8, 1e9] * 2)))
    code, _, err = run_cli(capsys, flops, "--law", "kaplan-nd", "--N", "N", "--C", "C", "--loss", "loss", "--bootstrap", "0")
    assert code == 2
    assert err.startswith("fastscale fit: error: --C 'C' (D = C/6N): n_tokens has 1 distinct value (6 rows: 1e+09); kaplan-nd needs >= 3")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("N,loss\n1e6,3.1\n2e6,3.0\n4e6,2.9,7\n", "line 4: 3 fields, expected 2 as in the header ['N', 'loss']; extra value '7' after column 'loss'"),
        ("N,loss\n1e6,3.1,7\n2e6,3.0\n", "line 2: 3 fields, expected 2 as in the header ['N', 'loss']; extra value '7' after column 'loss'"),
        ("N,loss,N\n1e6,3.1,1\n", "line 1: column name 'N' appears more than once (columns [1, 3]); each column needs its own name"),
        ("N,loss\n1e6,3.1\n2e6,3.0\n4e6,2.9x\n", "--y 'loss': expected numbers, got '2.9x' at {path} line 4"),
    ],
)
def test_malformed_csv_is_one_error_line(capsys, tmp_path, text, message):
    path = tmp_path / "runs.csv"
    path.write_text(text)
    code, out, err = run_cli(capsys, path, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "0")
    assert (code, out) == (2, "")
    expected = message.format(path=path) if message.startswith("--") else f"{path} {message}"
    assert err == f"fastscale fit: error: {expected}\n"


def test_torn_metrics_lines_are_reported_and_every_record_kept(capsys, tmp_path):
    write_run(tmp_path / "run", 1e6, noise_scale=True)  # its last line is torn
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[3] = lines[3][:20]  # a torn record in the middle too (glued-on appends before issue 11)
    metrics.write_text("\n".join(lines))
    code, out, err = run_cli(
        capsys, tmp_path / "run", "--law", "critical-batch", "--loss", "loss", "--noise-scale", "noise_scale", "--bootstrap", "0", "--json"
    )
    assert code == 0, err
    note = f"{metrics}: skipped 2 unreadable lines (torn by a kill?): line 4, {len(lines)}"
    assert json.loads(out)["skipped_lines"] == [note]
    assert f"warning: {note}\n" in err
    report = json.loads(out)
    assert report["n_points"] == 6  # noise scales logged at steps 0, 20, ..., 100: none lost around the torn lines
    assert report["params"]["alpha_B"] == pytest.approx(0.21, rel=1e-6)


def write_sizes_csv(path, seed):
    """Chinchilla-like rows over 5 sizes x 4 token counts, a text column, and one row with no N."""
    rng = np.random.default_rng(seed)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e9, 1e11, 4)))
    loss = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * np.exp(rng.normal(0, 0.003, n.size))
    tags = rng.choice(["a", "b", "c"], n.size)
    lines = [f"{a:g},{b:g},{c:.17g},{t}\n" for a, b, c, t in zip(n, d, loss, tags)]
    path.write_text("N,D,loss,tag\n" + "".join(lines) + ",1e10,3.0,a\n")
    return path, n, d, loss, tags


@pytest.mark.parametrize("expression, keep", [
    ("N<1e9", lambda n, tag: n < 1e9),
    ("N <= 1e8", lambda n, tag: n <= 1e8),
    ("N>3.2e7", lambda n, tag: n > 3.2e7),
    ("N>=1e8", lambda n, tag: n >= 1e8),
    ("N!=1e8", lambda n, tag: n != 1e8),
    ("N=1e8", lambda n, tag: n == 1e8),
    ("tag!=b", lambda n, tag: tag != "b"),
    ("tag<b", lambda n, tag: tag < "b"),
    ("tag>=b", lambda n, tag: tag >= "b"),
])
def test_where_operators_select_the_rows_python_selects(tmp_path, expression, keep):
    from fastscale.fit.command import select_rows
    from fastscale.fit.io import read_table

    path, *_ = write_sizes_csv(tmp_path / "runs.csv", seed=1)
    table = read_table(path)
    rows = select_rows(table, [expression])
    expected = [i for i, (n, tag) in enumerate(zip(table["N"], table["tag"])) if keep(float(n), str(tag))]
    assert list(rows.origin) == [f"{path} line {i + 2}" for i in expected]
    if expression.startswith("N"):  # the row with no N (nan) satisfies only !=
        assert ("!=" in expression) == (f"{path} line 22" in rows.origin)


def test_where_conditions_all_hold_and_exclude_the_largest_model(capsys, tmp_path):
    path, n, d, loss, tags = write_sizes_csv(tmp_path / "runs.csv", seed=2)
    code, out, err = run_cli(
        capsys, path, "--law", "overtrain", "--N", "N", "--D", "D", "--loss", "loss", "--where", "N<1e9", "--where", "tag != c",
        "--bootstrap", "0", "--json",
    )
    assert code == 0, err
    kept = (n < 1e9) & (tags != "c")
    subset = tmp_path / "subset.csv"
    subset.write_text("N,D,loss\n" + "".join(f"{a:g},{b:g},{c:.17g}\n" for a, b, c in zip(n[kept], d[kept], loss[kept])))
    code, expected, err = run_cli(capsys, subset, "--law", "overtrain", "--N", "N", "--D", "D", "--loss", "loss", "--bootstrap", "0", "--json")
    assert code == 0, err
    report, reference = json.loads(out), json.loads(expected)
    assert report["n_points"] == kept.sum() < 20
    assert report["params"] == reference["params"]


@pytest.mark.parametrize("expression, message", [
    ("N", "--where 'N': expected COL OP VALUE with OP one of = != < <= > >="),
    ("<1e9", "--where '<1e9': expected COL OP VALUE"),
    ("size<1e9", "--where 'size<1e9': no column 'size' in DATA; columns are ['D', 'N', 'loss', 'tag']"),
    ("N<=big", "--where 'N<=big': column 'N' holds numbers, got 'big'"),
    ("N>1e12", "--where N>1e12: no row matches"),
])
def test_where_errors_name_the_expression(capsys, tmp_path, expression, message):
    path, *_ = write_sizes_csv(tmp_path / "runs.csv", seed=3)
    code, out, err = run_cli(capsys, path, "--law", "chinchilla", "--N", "N", "--D", "D", "--loss", "loss", "--where", expression, "--bootstrap", "0")
    assert (code, out) == (2, "")
    assert err.startswith(f"fastscale fit: error: {message}") and err.count("\n") == 1


def test_frontier_holdout_largest_predicts_where_the_held_out_runs_lead(capsys, tmp_path):
    sizes = np.geomspace(1e4, 1e7, 7)
    for i, n in enumerate(sizes):
        write_run(tmp_path / "sweep" / f"run{i}", float(n))
    code, out, err = run_cli(
        capsys, tmp_path / "sweep", "--law", "frontier", "--N", "n_params", "--C", "flops", "--loss", "loss",
        "--bootstrap", "20", "--holdout-largest", "2", "--json",
    )
    assert code == 0, err
    holdout = json.loads(out)["holdout"]
    assert "(run5, run6)" in holdout["held_out"]
    assert {row["run"] for row in holdout["rows"]} <= {"run5", "run6"} and len(holdout["rows"]) > 0
    assert holdout["mean_abs_rel_error"] == pytest.approx(np.mean([abs(r["rel_error"]) for r in holdout["rows"]]))
    for row in holdout["rows"]:
        assert row["rel_error"] == pytest.approx(row["predicted"] / row["observed"] - 1)
        assert row["low"] <= row["predicted"] <= row["high"]
    assert {"L_inf", "x0", "alpha", "a", "C0"} == set(holdout["fit_params"])
    code, out, _ = run_cli(
        capsys, tmp_path / "sweep", "--law", "frontier", "--N", "n_params", "--C", "flops", "--loss", "loss",
        "--bootstrap", "0", "--holdout-largest", "2",
    )
    assert code == 0 and "holdout: mean |relative error| on the runs of the 2 largest N (run5, run6)" in out


def test_isoflop_holdout_largest_holds_out_the_largest_budgets(capsys, tmp_path):
    rng = np.random.default_rng(5)
    budgets = np.geomspace(1e18, 1e21, 6)
    rows = []
    for c in budgets:
        for n in np.geomspace(1e7, 1e10, 13):
            loss = (1.69 + 406.4 / n**0.34 + 410.7 / (c / (6 * n)) ** 0.28) * np.exp(rng.normal(0, 1e-4))
            rows.append(f"{n:g},{c:g},{loss:.17g}\n")
    path = tmp_path / "isoflop.csv"
    path.write_text("N,C,loss\n" + "".join(rows))
    code, out, err = run_cli(
        capsys, path, "--law", "isoflop", "--N", "N", "--C", "C", "--loss", "loss", "--bootstrap", "0", "--holdout-largest", "2", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    minima = {m["C"]: m["N_opt"] for m in report["minima"]}
    holdout = report["holdout"]
    assert [row["C"] for row in holdout["rows"]] == pytest.approx(sorted(minima)[-1:-3:-1])
    assert [row["observed"] for row in holdout["rows"]] == pytest.approx([minima[row["C"]] for row in holdout["rows"]])
    from fastscale.fit import fit_allocation

    small = sorted(minima)[:-2]
    reference = fit_allocation(small, [minima[c] for c in small], n_bootstrap=0)
    assert [row["predicted"] for row in holdout["rows"]] == pytest.approx(reference.predict(np.array([row["C"] for row in holdout["rows"]])))
    code, out, err = run_cli(capsys, path, "--law", "isoflop", "--N", "N", "--C", "C", "--loss", "loss", "--bootstrap", "0", "--holdout-largest", "2")
    assert code == 0, err
    assert "holdout: mean |relative error| on the 2 points of largest C (budgets with an interior minimum)" in out
    assert f"  C={sorted(minima)[-1]:.4g}: observed" in out


def test_isoflop_reports_each_budgets_minimum_with_its_interval(capsys, tmp_path, rng):
    # Chinchilla's law (Hoffmann et al. 2022, eq. 10) on 4 budgets x 9 sizes, 0.3% noise: the JSON and the
    # table give each budget's N_opt and loss with fit_isoflop's intervals; the holdout keeps them for the rest.
    rows = []
    for c in np.geomspace(1e18, 1e21, 4):
        for n in np.geomspace(3e7, 3e9, 9):
            loss = (1.69 + 406.4 / n**0.34 + 410.7 / (c / (6 * n)) ** 0.28) * np.exp(rng.normal(0, 0.003))
            rows.append((n, c, loss))
    path = tmp_path / "isoflop.csv"
    path.write_text("N,C,loss\n" + "".join(f"{n:.17g},{c:.17g},{loss:.17g}\n" for n, c, loss in rows))
    options = ("--law", "isoflop", "--N", "N", "--C", "C", "--loss", "loss", "--bootstrap", "60", "--seed", "4")
    code, out, err = run_cli(capsys, path, *options, "--json")
    assert code == 0, err
    report = json.loads(out)
    n, c, loss = np.array(rows).T
    expected = fit_isoflop(n, c, loss, n_bootstrap=60, seed=4)
    assert len(report["minima"]) == len(expected.parabolas) >= 3
    for row, parabola in zip(report["minima"], expected.parabolas):
        assert row["C"] == parabola.compute and row["N_opt"] == pytest.approx(parabola.params["N_opt"], rel=1e-12)
        assert row["N_opt_ci"] == pytest.approx(list(parabola.intervals["N_opt"]), rel=1e-12)
        assert row["loss_ci"] == pytest.approx(list(parabola.intervals["L_opt"]), rel=1e-12)
        assert row["N_opt_ci"][0] <= row["N_opt"] <= row["N_opt_ci"][1]
    assert report["ci"]["a"] == pytest.approx(list(expected.allocation.intervals["a"]), rel=1e-12)
    code, out, err = run_cli(capsys, path, *options)
    assert code == 0, err
    first = report["minima"][0]
    assert (f"budget C={first['C']:.4g}: N_opt {first['N_opt']:.4g} [{first['N_opt_ci'][0]:.4g}, {first['N_opt_ci'][1]:.4g}]" in out), out


def test_overtrain_law_from_compute_recovers_the_shared_exponent(capsys, tmp_path):
    """Gadre et al. 2024's law, L = E + A N^-alpha + B D^-alpha, at token multipliers M = D/N from 20 to 320
    (their sweep's range), given as C = 6ND; 0.3% lognormal noise."""
    rng = np.random.default_rng(6)
    truth = {"E": 1.8, "A": 500.0, "B": 1500.0, "alpha": 0.3}
    n, multiplier = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 5), [20.0, 80.0, 320.0]))
    d = multiplier * n
    loss = (truth["E"] + truth["A"] * n ** -truth["alpha"] + truth["B"] * d ** -truth["alpha"]) * np.exp(rng.normal(0, 0.003, n.size))
    path = tmp_path / "overtrain.csv"
    path.write_text("N,C,loss\n" + "".join(f"{a:.17g},{6 * a * b:.17g},{c:.17g}\n" for a, b, c in zip(n, d, loss)))
    code, out, err = run_cli(
        capsys, path, "--law", "overtrain", "--N", "N", "--C", "C", "--loss", "loss", "--bootstrap", "60",
        "--forecast-loss", "2.2", "--holdout-largest", "3", "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    p, ci = report["params"], report["ci"]
    assert report["law"] == "overtrain" and report["n_points"] == 15
    assert p["alpha"] == pytest.approx(truth["alpha"], abs=0.03) and ci["alpha"][0] <= truth["alpha"] <= ci["alpha"][1]
    assert p["E"] == pytest.approx(truth["E"], abs=0.1)
    assert p["eta"] == pytest.approx(p["alpha"] / 2) and p["a"] == pytest.approx(p["A"] * 6 ** p["eta"])
    c = report["forecast"]["C"]["value"]  # on the compute-optimal line, L*(C) = E + 2 sqrt(ab) C^-eta
    assert p["E"] + 2 * np.sqrt(p["a"] * p["b"]) * c ** -p["eta"] == pytest.approx(2.2, rel=1e-9)
    holdout = report["holdout"]
    assert [row["N"] for row in holdout["rows"]] == pytest.approx([1e9] * 3)
    assert sorted(row["D"] for row in holdout["rows"]) == pytest.approx(sorted(d[n == n.max()]), rel=1e-9)  # D = C/6N
    assert holdout["mean_abs_rel_error"] < 0.02


def test_overtrain_errors_name_the_column(capsys, tmp_path):
    path = tmp_path / "two_sizes.csv"
    path.write_text("N,D,loss\n" + "".join(f"{n:g},{d:g},{3 + i / 10}\n" for i, (n, d) in enumerate([(1e7, 1e9), (1e8, 2e9)] * 3)))
    code, out, err = run_cli(capsys, path, "--law", "overtrain", "--N", "N", "--D", "D", "--loss", "loss", "--bootstrap", "0")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("fastscale fit: error: --N 'N': n has 2 distinct values")


def test_broken_power_law_finds_the_break(capsys, tmp_path):
    """Caballero et al. 2023 eq. 1 with one break: slope 0.1 below x = 1e6, 0.5 above; 0.3% lognormal noise."""
    rng = np.random.default_rng(7)
    truth = {"a": 0.5, "b": 10.0, "c0": 0.1, "c1": 0.4, "d1": 1e6, "f1": 0.3}
    x = np.geomspace(1e3, 1e9, 25)
    y = truth["a"] + truth["b"] * x ** -truth["c0"] * (1 + (x / truth["d1"]) ** (1 / truth["f1"])) ** (-truth["c1"] * truth["f1"])
    y = y * np.exp(rng.normal(0, 0.003, x.size))
    path = tmp_path / "broken.csv"
    path.write_text("x,y\n" + "".join(f"{a:.17g},{b:.17g}\n" for a, b in zip(x, y)))
    code, out, err = run_cli(
        capsys, path, "--law", "broken", "--breaks", "1", "--x", "x", "--y", "y", "--bootstrap", "50", "--holdout-largest", "2", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    p, ci = report["params"], report["ci"]
    assert report["law"] == "broken" and set(p) == {"a", "b", "c0", "c1", "d1", "f1"}
    below, above = report["segment_exponents"]
    assert below["value"] == pytest.approx(truth["c0"], abs=0.05) and above["value"] == pytest.approx(truth["c0"] + truth["c1"], abs=0.1)
    assert below["value"] == pytest.approx(p["c0"]) and above["value"] == pytest.approx(p["c0"] + p["c1"])
    assert ci["d1"][0] <= truth["d1"] <= ci["d1"][1]
    assert [row["x"] for row in report["holdout"]["rows"]] == pytest.approx(x[[-1, -2]])
    code, out, err = run_cli(capsys, path, "--law", "broken", "--x", "x", "--y", "y", "--bootstrap", "0")  # one break by default
    assert code == 0, err
    assert "segment 0 exponent" in out and "segment 1 exponent" in out and "segment 2" not in out and "d1" in out
    code, _, err = run_cli(capsys, path, "--law", "power", "--breaks", "2", "--x", "x", "--y", "y")
    assert code == 2 and err == "fastscale fit: error: --breaks does not apply to --law power\n"


def test_data_constrained_law_from_repeated_epochs(capsys, tmp_path):
    """Muennighoff et al. 2023's law with the paper's fit (PAPER_PARAMS: R_D* = 15.4, R_N* = 5.3) on runs of
    3 sizes x 2 unique-data sizes x 1 to 60 epochs; 0.3% lognormal noise."""
    from fastscale.fit.data_constrained import PAPER_PARAMS, data_constrained_loss

    rng = np.random.default_rng(8)
    n, unique_d, epochs = (a.ravel() for a in np.meshgrid([1e8, 4e8, 1.6e9], [2e9, 8e9], [1.0, 4.0, 16.0, 60.0]))
    d = unique_d * epochs
    loss = data_constrained_loss(PAPER_PARAMS, n, d, unique_d) * np.exp(rng.normal(0, 0.003, n.size))
    path = tmp_path / "repeated.csv"
    path.write_text("N,D,U,loss\n" + "".join(f"{a:.17g},{b:.17g},{c:.17g},{e:.17g}\n" for a, b, c, e in zip(n, d, unique_d, loss)))
    code, out, err = run_cli(
        capsys, path, "--law", "data-constrained", "--N", "N", "--D", "D", "--unique-D", "U", "--loss", "loss",
        "--bootstrap", "40", "--holdout-largest", "4", "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    p = report["params"]
    assert report["law"] == "data-constrained" and report["n_points"] == 24
    assert set(p) == set(PAPER_PARAMS)
    assert np.allclose(data_constrained_loss(p, n, d, unique_d), loss, rtol=0.01)  # the fitted law follows the runs
    assert report["ci"]["R_D_star"][0] <= PAPER_PARAMS["R_D_star"] <= report["ci"]["R_D_star"][1]
    holdout = report["holdout"]
    assert [row["N"] for row in holdout["rows"]] == pytest.approx([1.6e9] * 4)
    assert all(row["unique_D"] * 1.0 <= row["D"] for row in holdout["rows"])
    for row in holdout["rows"]:
        assert row["rel_error"] == pytest.approx(row["predicted"] / row["observed"] - 1)
    code, _, err = run_cli(capsys, path, "--law", "data-constrained", "--N", "N", "--D", "D", "--unique-D", "D", "--loss", "loss", "--bootstrap", "0")
    assert code == 2 and err.startswith("fastscale fit: error: --unique-D 'D' (epochs = D/unique-D): epochs has 1 distinct value")


def test_critical_batch_holdout_holds_out_the_lowest_losses(capsys, tmp_path):
    """Noise scales exactly on B_crit(L) = 1e6/L^(1/0.21) (alpha_B = 0.21 as in Kaplan et al. 2020); the forecast
    direction is down in loss, so the lowest losses are held out."""
    write_run(tmp_path / "run", 1e6, noise_scale=True)
    code, out, err = run_cli(
        capsys, tmp_path / "run", "--law", "critical-batch", "--loss", "loss", "--noise-scale", "noise_scale",
        "--bootstrap", "20", "--holdout-largest", "2", "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    holdout = report["holdout"]
    losses = sorted(row["loss"] for row in holdout["rows"])
    table = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[:-1]]
    logged = sorted({r["loss"] for r in table if "noise_scale" in r})
    assert losses == pytest.approx(logged[:2]) and holdout["held_out"] == "the 2 points of lowest loss"
    assert holdout["mean_abs_rel_error"] < 1e-6  # the law is exact on these noise scales
    code, out, err = run_cli(
        capsys, tmp_path / "run", "--law", "critical-batch", "--loss", "loss", "--noise-scale", "noise_scale",
        "--bootstrap", "0", "--holdout-largest", "2",
    )
    assert code == 0 and "holdout: mean |relative error| on the 2 points of lowest loss" in out and "/run/metrics.jsonl step " in out
    code, _, err = run_cli(capsys, tmp_path / "run", "--law", "critical-batch", "--x", "step", "--y", "tokens", "--holdout-largest", "2")
    assert code == 2 and err.startswith("fastscale fit: error: --holdout-largest: --law critical-batch without --loss") and err.count("\n") == 1


def test_forecast_reports_the_draws_left_out_of_its_interval(capsys, tmp_path):
    data = write_power_csv(tmp_path / "runs.csv")
    code, out, err = run_cli(capsys, data, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "40", "--json")
    assert code == 0, err
    l_inf = json.loads(out)["params"]["L_inf"]
    argv = ["--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "40", "--forecast-loss", f"{l_inf + 1e-4:.10f}"]
    code, out, err = run_cli(capsys, data, *argv, "--json")
    assert code == 0, err
    forecast = json.loads(out)["forecast"]["N"]
    assert 0 < forecast["draws_not_finite"] < 40  # draws whose L_inf is above the target never reach it
    assert {"value", "low", "high", "widened", "draws_not_finite"} <= set(forecast)
    code, out, err = run_cli(capsys, data, *argv)
    assert code == 0 and f"{forecast['draws_not_finite']} bootstrap draws not finite, left out)" in out


def test_conventional_column_names_need_no_options_and_the_report_says_which_it_took(capsys, tmp_path, rng):
    data = write_power_csv(tmp_path / "runs.csv")  # columns N, loss, name
    code, out, err = run_cli(capsys, data, "--law", "power", "--bootstrap", "0", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["default_columns"] == {"x": "N", "y": "loss"}
    _, explicit, _ = run_cli(capsys, data, "--law", "power", "--x", "N", "--y", "loss", "--bootstrap", "0", "--json")
    assert report["params"] == json.loads(explicit)["params"]
    # N and D both there: which one is x is the user's choice, and the error says what is missing
    rows = [(n, 20 * n, 1.7 + (1e4 / n) ** 0.3 + (1e6 / (20 * n)) ** 0.3 + rng.normal(0, 0.001)) for n in np.geomspace(1e5, 1e8, 12)]
    both = tmp_path / "nd.csv"
    both.write_text("N,D,loss\n" + "".join(f"{n},{d},{y}\n" for n, d, y in rows))
    code, out, err = run_cli(capsys, both, "--law", "power", "--bootstrap", "0")
    assert code == 2 and out == "" and "--law power: expected --x" in err
    code, out, err = run_cli(capsys, both, "--law", "chinchilla", "--bootstrap", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["default_columns"] == {"N": "N", "D": "D", "loss": "loss"}


def test_errors_name_the_csv_line_of_the_bad_value(capsys, tmp_path):
    # a blank line and a --where filter before the bad row: the error still names the line an editor shows
    path = tmp_path / "runs.csv"
    n = [1e4, 3e4, 1e5, 3e5, 1e6, 3e6]
    loss = [3.1, 2.9, 2.7, -2.6, 2.5, 2.45]
    path.write_text("N,loss\n\n" + "".join(f"{a},{b}\n" for a, b in zip(n, loss)) + "1e7,nan\n")
    code, out, err = run_cli(capsys, path, "--law", "power", "--where", "N>2e4", "--bootstrap", "0")
    assert code == 2 and out == ""
    assert f"got nan at {path} line 9" in err and "index" not in err  # header line 1, blank line 2, rows on lines 3 to 9
    path.write_text(path.read_text().replace("1e7,nan\n", ""))
    code, out, err = run_cli(capsys, path, "--law", "power", "--where", "N>2e4", "--bootstrap", "0")
    assert code == 2 and f"got -2.6 at {path} line 6" in err  # the 1e4 row on line 3 filtered out: index 2 of the fit
