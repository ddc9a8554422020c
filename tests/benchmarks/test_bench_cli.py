"""`fastscale bench attention|cross-entropy` as a user runs them: options whose defaults work together,
min/median/max over the repeats, skipped baselines listed with their reason, a non-zero exit when a
case fails. Tiny shapes; the compiled baselines are replaced where they would compile for seconds."""

import json
import random

import pytest
import torch

from fastscale.benchmarks import bench_attention, bench_cross_entropy, harness


def test_heads_kv_defaults_to_heads_and_a_mismatch_names_both(capsys):
    heads = random.choice([3, 4, 6])
    args = bench_attention.parse_args(["--heads", str(heads), "--device", "cpu"])
    assert args.heads_kv == heads and (args.tokens, args.repeats) == (4096, 5)
    with pytest.raises(SystemExit) as exit:
        bench_attention.parse_args(["--heads", "6", "--heads-kv", "4", "--device", "cpu"])
    assert exit.value.code == 2
    assert "--heads 6 --heads-kv 4: --heads-kv must divide --heads" in capsys.readouterr().err


def test_a_measurement_reports_its_spread_and_a_failing_case_its_error():
    repeats = random.randint(3, 6)
    m = harness.measure("sum", lambda: torch.randn(64).sum(), torch.device("cpu"), repeats=repeats)
    record = harness.as_record(m)
    assert len(record["times_s"]) == repeats and record["error"] is None
    assert (record["min_s"], record["max_s"]) == (min(m.times_s), max(m.times_s))
    assert record["min_s"] <= record["median_s"] <= record["max_s"]

    def broken():
        raise RuntimeError("no kernel for this shape")

    failed = harness.measure("broken", broken, torch.device("cpu"), repeats=repeats)
    assert harness.failures([m, failed]) == ["FAILED: broken: RuntimeError: no kernel for this shape"]


def test_cross_entropy_exits_non_zero_when_a_method_fails_and_lists_the_skipped_ones(tmp_path, monkeypatch, capsys):
    def broken(h, w, t):
        raise RuntimeError("out of shared memory")

    monkeypatch.setattr(bench_cross_entropy, "baselines", lambda device: {"eager (full logits)": bench_cross_entropy.eager, "broken": broken})
    out = tmp_path / "ce.json"
    code = bench_cross_entropy.main(["--tokens", "13", "--d", "7", "--vocab", "29", "--repeats", "3", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 1
    assert "FAILED: broken: RuntimeError: out of shared memory" in printed.err
    results = json.loads(out.read_text())
    eager = results["results"][0]
    assert eager["error"] is None and eager["min_s"] <= eager["median_s"] <= eager["max_s"] and len(eager["times_s"]) == 3
    skipped = {s["name"]: s["reason"] for s in results["skipped"]}
    assert skipped["liger-kernel"] == skipped["fastscale triton"] == "needs a CUDA GPU"
    assert "skipped: cut-cross-entropy (needs a CUDA GPU)" in printed.out
    assert "min s" in printed.out and "max s" in printed.out


def test_attention_exits_non_zero_when_a_case_fails_and_lists_the_skipped_ones(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported head dim")

    monkeypatch.setattr(bench_attention, "attention", broken)
    # FlexAttention compiles for seconds on a CPU: plain SDPA stands in for it
    monkeypatch.setattr(bench_attention, "flex_document", lambda lengths, causal, device: (bench_attention.sdpa_dense_mask(
        bench_attention.document_mask(lengths, causal, device)), 0.0))
    out = tmp_path / "attention.json"
    code = bench_attention.main(["--device", "cpu", "--heads", "2", "--tokens", "64", "--shortest", "4", "--longest", "16",
                                 "--unpacked-length", "16", "--repeats", "2", "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 1
    assert "FAILED: fastscale attention (torch, cu_seqlens): RuntimeError: unsupported head dim" in printed.err
    results = json.loads(out.read_text())
    assert results["args"]["heads_kv"] == 2
    backward = results["packed fwd+bwd"]
    assert {s["name"]: s["reason"] for s in backward["skipped"]} == {
        "flash-attn varlen": "needs a CUDA GPU", "FlexAttention (compiled), document block mask": "FlexAttention has no backward on CPU"}
    sdpa = backward["rows"][0]
    assert sdpa["error"] is None and sdpa["min_s"] <= sdpa["median_s"] <= sdpa["max_s"]
    assert "skipped: FlexAttention (compiled), document block mask (FlexAttention has no backward on CPU)" in printed.out
