"""`fastscale bench fit --quick` runs every law and reports it (timings are not tested: they are measured)."""

import json

import pytest

from fastscale.fit import benchmark


@pytest.mark.slow
def test_quick_bench_reports_every_law_and_the_chinchilla_comparison(tmp_path, capsys):
    assert benchmark.main(["--quick", "--write", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "fit.json").read_text())
    assert [r["law"] for r in report["laws"]] == list(benchmark.CASES)
    for r in report["laws"]:
        assert r["points"] == benchmark.QUICK["points"] and r["rows"] == benchmark.QUICK["rows"]
        assert r["seconds"] >= 0 and r["rows_seconds"] >= 0
        assert f"\n{r['law']:<24}{r['points']:>7}" in printed
    chinchilla = report["chinchilla"]
    assert chinchilla["problem"]["data"].startswith("synthetic")  # --quick never needs data outside the repository
    assert chinchilla["scipy_loop"]["starts_run"] == benchmark.QUICK["baseline_starts"]
    # the batched grid keeps the best of 4,500 starts, so no start of the loop beats it (by more than rounding)
    assert chinchilla["objective_rel_difference"] >= -1e-6
    assert printed.strip() in (tmp_path / "fit.md").read_text()


def test_bad_sizes_are_refused_naming_the_option(capsys):
    for option in ("--points", "--repeats"):
        with pytest.raises(SystemExit) as exit_:
            benchmark.main([option, "0"])
        assert exit_.value.code == 2
        assert f"{option} 0: expected an integer >= 1" in capsys.readouterr().err
