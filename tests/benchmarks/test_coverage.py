"""The coverage study (benchmarks/coverage.py): its synthetic data are its laws' published constants, and
its table counts what the fits' intervals did. The study itself takes an hour; these run it small."""

import json

import numpy as np
import pytest

from fastscale.benchmarks import coverage


@pytest.mark.parametrize("law", [law for law in coverage.LAWS if law != "chinchilla"])
def test_noiseless_data_give_the_stated_truth_back(law):
    # Without noise the fit must return the constants the study scores intervals against; a design that
    # does not determine them, or a truth named or scaled differently from the fit's parameters, fails here.
    spec = coverage.LAWS[law]
    fit = spec.fit(*spec.simulate(np.random.default_rng(0), 0.0), n_bootstrap=0, resampling="parametric")
    for name, value in spec.truth.items():
        assert fit.params[name] == pytest.approx(value, rel=2e-3), name


def test_chinchilla_truth_is_hoffmann_approach_3_and_its_data_follow_it():
    # The 4,500-start fit is left to tests/fit; here the simulated losses against eq. 2 in float64.
    spec = coverage.LAWS["chinchilla"]
    n, d, loss = spec.simulate(np.random.default_rng(0), 0.0)
    assert spec.truth == {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    np.testing.assert_allclose(loss, 1.69 + 406.4 / n**0.34 + 410.7 / d**0.28, rtol=1e-14)
    assert len(loss) >= 100 and len(np.unique(n)) >= 5 and len(np.unique(d)) >= 5


@pytest.mark.slow
def test_a_small_study_writes_counts_that_match_its_replicates(tmp_path):
    argv = ["--laws", "bcrit", "kaplan-n", "--replicates", "5", "--draws", "40", "--noise", "0.03", "--jobs", "1", "--out", str(tmp_path)]
    assert coverage.main(argv) == 0
    entries = json.loads((tmp_path / "coverage.json").read_text())["entries"]
    assert {(e["law"], e["resampling"]) for e in entries} == {(law, s) for law in ("bcrit", "kaplan-n") for s in ("parametric", "rows")}
    for e in entries:
        runs = [coverage.replicate(e["law"], 0.03, i, (e["resampling"],), 40)[e["resampling"]] for i in range(5)]
        for name, p in e["params"].items():
            hits = sum(r["covered"][name] for r in runs)  # the same seeds give the same data and draws
            assert p["coverage"] == hits / 5
            assert p["se"] == pytest.approx(np.sqrt(hits / 5 * (1 - hits / 5) / 5))
    table = (tmp_path / "coverage.md").read_text()
    assert table.count("| bcrit |") == 2 and "python benchmarks/coverage.py --laws bcrit" in table
    # a second run of one law and scheme replaces its entry and keeps the others
    coverage.main(["--laws", "bcrit", "--replicates", "3", "--draws", "20", "--noise", "0.03", "--resampling", "rows", "--jobs", "1", "--out", str(tmp_path)])
    merged = {(e["law"], e["resampling"]): e["replicates"] for e in json.loads((tmp_path / "coverage.json").read_text())["entries"]}
    assert merged == {("bcrit", "rows"): 3, ("bcrit", "parametric"): 5, ("kaplan-n", "rows"): 5, ("kaplan-n", "parametric"): 5}
