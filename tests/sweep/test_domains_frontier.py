"""The frontier table across domains: every sweep report under a folder, approach 1's and approach 2's
N_opt(C) exponents with their intervals, and whether each interval holds Henighan et al.'s ~0.7."""

import argparse
import json

from fastscale.sweep.domains import HENIGHAN_EXPONENT, run_frontier, write_frontier_table


def allocation(a, low, high):
    return {"law": "allocation", "params": {"a": a, "C0": 1e3}, "ci": {"a": [low, high], "C0": [1.0, 1e6]}, "n_points": 7, "flags": []}


def write_report(path, report):
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps(report))


def test_rows_come_from_every_sweep_report_under_the_folder(tmp_path, capsys):
    write_report(tmp_path / "image8", {"sweep": "image8", "tokens_per_item": 192, "frontier": {"N_opt": allocation(0.71, 0.49, 0.91)}})
    write_report(tmp_path / "res" / "r16", {"sweep": "resolutions16", "study": {"kind": "resolutions"}, "frontier": {"N_opt": allocation(0.4, 0.3, 0.5)}})
    write_report(tmp_path / "isoflop", {"sweep": "isoflop", "frontier": {"error": "2 runs on the frontier"},
                                        "isoflop": {"N_opt": allocation(0.62, -0.5, 1.8)}})
    write_report(tmp_path / "res" / "comparison", {"resolutions": []})  # not a sweep report: no frontier, no row
    rows, path = write_frontier_table(tmp_path, tmp_path / "out")
    assert [(r["report"], r["method"]) for r in rows] == [("image8", "frontier of learning curves"), ("isoflop", "frontier of learning curves"),
                                                          ("isoflop", "IsoFLOP profiles"), ("res/r16", "frontier of learning curves")]
    assert rows[0]["a"] == 0.71 and rows[0]["ci"] == [0.49, 0.91] and rows[1]["error"] == "2 runs on the frontier"
    text = path.read_text()
    assert f"a ~ {HENIGHAN_EXPONENT}" in text
    assert "| image8 | image8 | - | frontier of learning curves | 0.710 [0.490, 0.910] | 7 | yes | none |" in text
    assert "| res/r16 | resolutions16 | resolutions | frontier of learning curves | 0.400 [0.300, 0.500] | 7 | no | none |" in text
    assert "no fit: 2 runs on the frontier" in text
    assert "| isoflop | isoflop | - | IsoFLOP profiles | 0.620 [-0.500, 1.800] | 7 | interval too wide to tell | none |" in text
    assert json.loads((tmp_path / "out" / "frontier_table.json").read_text())["rows"][2]["a"] == 0.62
    assert run_frontier(argparse.Namespace(root=str(tmp_path), out=None)) == 0
    assert "image8 (frontier of learning curves): a = 0.710 [0.490, 0.910]" in capsys.readouterr().out
    assert (tmp_path / "frontier_table.md").exists()


def test_a_missing_folder_is_refused_by_name(tmp_path, capsys):
    assert run_frontier(argparse.Namespace(root=str(tmp_path / "nope"), out=None)) == 2
    assert "DIR=" in capsys.readouterr().err
