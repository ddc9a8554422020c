"""The text study: its two L(N) fits, L(D) and L(N, D) against independent recomputation on fresh runs, the
loss memory measured on a real model, option checks, and the markdown and plot it writes."""

import numpy as np
import pytest
import torch

from fastscale.sweep.report import study_markdown, study_section
from fastscale.sweep.spec import SweepError
from fastscale.sweep.studies import text
from fastscale.train.plan import vocabulary_bytes

V = 8192


def pure_law(x, loss):
    """Least squares of log loss on log x: the pure power law (Nc/x)^alpha is a straight line there."""
    slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
    alpha = -slope
    residual = np.log(loss) - (intercept + slope * np.log(x))
    return alpha, np.exp(intercept / alpha), np.sqrt(np.mean(residual**2))


def fake_runs(rng, noise=0.01):
    """Runs of several depths at three widths, two token budgets each, with learning curves (eval_loss
    every 20 steps) that follow Kaplan's L(N, D) in non-embedding N with lognormal noise."""
    runs = []
    for n_layer, d_model in [(1, 16), (3, 16), (6, 16), (2, 32), (4, 32), (8, 32), (12, 48)]:
        n = 12 * n_layer * d_model**2
        for tokens in (3e5, 9e5):
            steps = int(tokens // 2048)
            curve = []
            for step in range(20, steps + 1, 20):
                d = step * 2048
                loss = ((1e6 / n) ** (0.08 / 0.1) + 1e6 / d) ** 0.1 * np.exp(noise * rng.standard_normal())
                curve.append({"step": step, "tokens": d, "loss": loss + 0.1, "eval_loss": loss})
            memory = {"tokens": 1024, "vocab_size": V, "d_model": d_model, "fused_bytes": 35_000_000 + d_model, "eager_bytes": 100_000_000,
                      "logits_bytes": 1024 * V * 4}
            runs.append({
                "name": f"L{n_layer}_d{d_model}_t{tokens:.0e}", "config": {"n_params": n},
                "summary": {"tokens": steps * 2048, "final_eval_loss": curve[-1]["eval_loss"]}, "metrics": curve,
                "study": {"n_layer": n_layer, "d_model": d_model, "vocab_size": V, "tie_embeddings": False, "non_embedding_params": n,
                          "total_params": n + 2 * V * d_model + 128 * d_model, "loss_memory": memory},
            })
    return runs


@pytest.fixture(scope="module")
def study():
    """(runs, their report): one report for the module's checks, on seeded noise."""
    runs = fake_runs(np.random.default_rng(20261203), noise=0.003)
    return runs, text.report(runs, {}, n_bootstrap=20, seed=0)


def test_both_l_of_n_fits_match_an_independent_least_squares(study):
    runs, section = study
    final = [r for r in runs if r["summary"]["tokens"] == max(x["summary"]["tokens"] for x in runs if x["study"]["n_layer"] == r["study"]["n_layer"]
                                                                   and x["study"]["d_model"] == r["study"]["d_model"])]
    assert sorted(section["L_of_N"]["runs"]) == sorted(r["name"] for r in final) and len(final) == 7
    loss = np.array([r["summary"]["final_eval_loss"] for r in final])
    for key, column in (("non_embedding", "non_embedding_params"), ("total", "total_params")):
        x = np.array([r["study"][column] for r in final], dtype=np.float64)
        alpha, nc, rms = pure_law(x, loss)
        fit = section["L_of_N"][key]
        assert fit["params"]["alpha"] == pytest.approx(alpha, rel=1e-4)
        assert fit["params"]["x0"] == pytest.approx(nc, rel=1e-3)
        assert fit["rms_log_residual"] == pytest.approx(rms, rel=1e-4)
        assert fit["ci"]["alpha"][0] <= fit["params"]["alpha"] <= fit["ci"]["alpha"][1]
    # the data follow the non-embedding law; with total N the depths at one width share nearly one x
    assert section["L_of_N"]["non_embedding"]["rms_log_residual"] < section["L_of_N"]["total"]["rms_log_residual"]
    assert text.finding(section).startswith("The power law in non-embedding N fits these runs better")


def test_l_of_d_and_l_of_nd_use_the_held_out_curves_after_warmup(study):
    runs, section = study
    largest = max((r for r in runs), key=lambda r: (r["study"]["non_embedding_params"], r["summary"]["tokens"]))
    lod = section["L_of_D"]
    assert lod["run"] == largest["name"]
    steps = np.array([m["step"] for m in largest["metrics"]])
    keep = steps > 0.1 * steps.max()
    d = np.array([m["tokens"] for m in largest["metrics"]], dtype=np.float64)[keep]
    loss = np.array([m["eval_loss"] for m in largest["metrics"]])[keep]
    assert lod["D"] == d.tolist() and lod["loss"] == loss.tolist()
    alpha, dc, _ = pure_law(d, loss)
    assert lod["fit"]["params"]["alpha"] == pytest.approx(alpha, rel=1e-4) and lod["fit"]["params"]["x0"] == pytest.approx(dc, rel=1e-3)
    nd = section["L_of_ND"]
    assert nd["n_points"] == sum(int((np.array([m["step"] for m in r["metrics"]]) > 0.1 * r["metrics"][-1]["step"]).sum()) for r in runs)
    assert nd["fit"]["params"]["alpha_N"] == pytest.approx(0.08, rel=0.1) and nd["fit"]["params"]["alpha_D"] == pytest.approx(0.1, rel=0.1)


def test_memory_rows_and_markdown(rng):
    runs = fake_runs(rng)
    runs[0] = {k: v for k, v in runs[0].items() if k != "study"}
    section = study_section({"kind": "text"}, runs, n_bootstrap=2, seed=0)
    assert section["missing"] == [runs[0]["name"]]
    assert len(section["memory"]) == 7 and all(m["ratio"] == pytest.approx(100_000_000 / (35_000_000 + m["d_model"])) for m in section["memory"])
    lines = "\n".join(study_markdown(section))
    assert "| non-embedding |" in lines and "| total |" in lines and "alpha_N = 0.076" in lines and "text_laws.png" in lines
    assert "Runs without a study evaluation (left out)" in lines
    assert study_section({"kind": "text"}, [runs[0]], 10, 0)["error"].startswith("no run has a text study evaluation")


def test_plot_is_written(tmp_path, study):
    section = study[1]
    assert text.plots(section, tmp_path) == ["text_laws.png", "text_laws.svg"]
    assert (tmp_path / "text_laws.png").stat().st_size > 10_000


def test_the_text_study_takes_no_options():
    text.check({})
    with pytest.raises(SweepError, match="study.options=\\['vocab'\\]"):
        text.check({"vocab": 3})


def test_loss_memory_fused_holds_less_than_eager_logits():
    from fastscale.model import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=4096, seq_len=64, n_layer=1, d_model=16, n_head=1)).eval()
    idx = torch.randint(0, 4096, (4, 64))
    targets = torch.randint(0, 4096, (4, 64))
    m = text.loss_memory(model, idx, targets)
    assert m["tokens"] == 256 and m["vocab_size"] == 4096 and m["logits_bytes"] == 256 * 4096 * 4
    # eager holds the logits and their gradient (and log-softmax) at once; the fused op one chunk of logits
    assert m["eager_bytes"] >= 2 * m["logits_bytes"]
    assert 0 < m["fused_bytes"] < m["eager_bytes"]
    # the planner's closed form, against the measurement
    formula = vocabulary_bytes(4096, 16, 256)
    assert m["eager_bytes"] == pytest.approx(formula["eager_loss"], rel=0.05)
    assert m["fused_bytes"] == pytest.approx(formula["fused_loss"], rel=0.05)
    tied = vocabulary_bytes(4096, 16, 256, tie_embeddings=True)
    assert tied["weights"] == 4096 * 16 * 4 and formula["optimizer_state"] == 2 * 4096 * 16 * 8


@pytest.mark.parametrize("tie", [False, True])
def test_a_large_vocabulary_trains_through_the_fused_loss(tie):
    """V = 32,768 (what a GPU text run uses): GPT's loss through LinearCrossEntropyLoss and every
    parameter's gradient, against a float64 copy of the model scored from its full eager logits, with the
    embedding tied or not."""
    import copy

    from torch.nn import functional as F

    from fastscale.model import GPT, GPTConfig
    from fastscale.nn import LinearCrossEntropyLoss

    model = GPT(GPTConfig(vocab_size=32_768, seq_len=16, n_layer=1, d_model=16, n_head=1, tie_embeddings=tie))
    assert isinstance(model.head, LinearCrossEntropyLoss) and (model.head.weight is model.wte.weight) == tie
    reference = copy.deepcopy(model).double()
    idx, targets = torch.randint(0, 32_768, (3, 16)), torch.randint(0, 32_768, (3, 16))
    targets[0, :5] = -100
    loss = model(idx, targets)
    loss.backward()
    expected = F.cross_entropy(reference(idx).reshape(-1, 32_768), targets.reshape(-1), ignore_index=-100)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-3, atol=1e-7, msg=lambda m: f"{name}: {m}")
