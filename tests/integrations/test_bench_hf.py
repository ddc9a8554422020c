"""benchmarks/bench_hf.py runs end to end at a tiny size: stock and fastscale measured, Liger-Kernel
reported with the reason it did not run on a machine without a GPU."""

import json

import pytest
import torch

pytest.importorskip("transformers")


def test_bench_hf_tiny(tmp_path, capsys):
    from fastscale.benchmarks import bench_hf

    out = tmp_path / "hf.json"
    assert bench_hf.main(["--vocab", "97", "--d", "32", "--layers", "1", "--batch", "2", "--seq", "9",
                          "--repeats", "1", "--device", "cpu", "--out", str(out)]) == 0
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    for name in ("transformers (SDPA, full logits)", "fastscale (apply_fastscale)"):
        assert results[name]["error"] is None and len(results[name]["times_s"]) == 1
    if not torch.cuda.is_available():
        assert "need a GPU" in results["liger-kernel"]["error"] or "not installed" in results["liger-kernel"]["error"]
    assert "fastscale (apply_fastscale)" in capsys.readouterr().out
