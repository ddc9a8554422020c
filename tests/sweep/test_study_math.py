"""The math study: its measurements on a tiny trained run against a float64 computation written apart
(one document at a time, token-by-token greedy decoding), its report against fastscale.fit on runs
made by hand, and its option checks."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import processes

from fastscale.data.prepare import build, prepare
from fastscale.data.sources import math_problems
from fastscale.fit import fit_power_law
from fastscale.sweep.evaluation import load_trained, token_scores
from fastscale.sweep.presets import PRESETS
from fastscale.sweep.report import study_markdown, study_section
from fastscale.sweep.spec import SweepError, SweepSpec
from fastscale.sweep.studies import math as study

DATA = {"count": 600, "difficulty": [1, 2], "seed": 3}
OPTIONS = {"eval_levels": [1, 2, 3], "eval_count": 40, "eval_seed": 11}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run_dir, data_dir) of a 3e3-parameter GPT trained 20 steps on problems of levels 1-2."""
    root = tmp_path_factory.mktemp("math")
    prepare("math", root / "data", **DATA)
    run = {"model": {"params": 3e3, "head_dim": 8}, "data": {"path": str(root / "data")}, "seq_len": 32,
           "train": {"steps": 20, "lr": 3e-3, "warmup_steps": 2, "eval_interval": 0, "checkpoint_interval": 10, "noise_scale_interval": 0}}
    ds = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}, "steps_per_print": 1000000000}
    return processes.train(root, run, ds), root / "data"


def reference_level(model, texts):
    """Per-level numbers from float64 logits, one problem at a time, answers found by splitting at '='
    and greedy decoding run token by token."""
    model = model.double()
    answer_nats = answer_count = problem_nats = problem_count = solved = 0
    for text in texts:
        tokens = torch.tensor([256] + list(text.encode()))
        with torch.no_grad():
            logp = torch.log_softmax(model(tokens[None, :-1])[0], dim=-1)
        nll = -logp[torch.arange(len(tokens) - 1), tokens[1:]]
        n_answer = len(text.split("=")[1])
        answer_nats += nll[-n_answer:].sum().item()
        answer_count += n_answer
        problem_nats += nll.sum().item()
        problem_count += len(nll)
        prompt, answer = text.split("=")
        solved += greedy_decode(model, prompt + "=", len(answer)) == list(answer.encode())
    model.float()
    return answer_nats / answer_count, problem_nats / problem_count, solved / len(texts)


def greedy_decode(model, prompt, max_chars):
    """The tokens greedy decoding emits after the prompt, up to a newline or max_chars of them."""
    tokens = [256] + list(prompt.encode())
    out = []
    with torch.no_grad():
        for _ in range(max_chars):
            nxt = int(model(torch.tensor([tokens]))[0, -1].argmax())
            out.append(nxt)
            tokens.append(nxt)
            if nxt == ord("\n"):
                break
    return out


@pytest.mark.slow
def test_evaluate_matches_an_independent_float64_computation(trained):
    run_dir, data_dir = trained
    result = study.evaluate(run_dir, data_dir, OPTIONS)
    assert result["trained_levels"] == [1, 2] and result["data_seed"] == DATA["seed"]
    _, train_docs, _, _ = build("math", **DATA)
    training_texts = {bytes(d[1:].astype(np.uint8).tolist()).decode() for d in train_docs}
    model = load_trained(run_dir)
    assert [e["level"] for e in result["levels"]] == OPTIONS["eval_levels"]
    for entry in result["levels"]:
        texts = [t for t, _ in math_problems(OPTIONS["eval_count"], entry["level"], OPTIONS["eval_seed"])]
        answer, problem, exact = reference_level(model, texts)
        assert entry["answer_loss"] == pytest.approx(answer, rel=1e-5)
        assert entry["problem_loss"] == pytest.approx(problem, rel=1e-5)
        assert entry["exact_match"] == exact
        assert entry["seen_in_training"] == pytest.approx(np.mean([t in training_texts for t in texts]))
        assert entry["n_problems"] == OPTIONS["eval_count"]
    # 600 problems of levels 1-2 cover much of level 1's 300 and little of level 2's 30,000
    assert result["levels"][0]["seen_in_training"] > 0.3 > result["levels"][1]["seen_in_training"]
    assert result["levels"][2]["seen_in_training"] == 0 and result["levels"][2]["unseen_answer_loss"] == result["levels"][2]["answer_loss"]


def test_answer_start_picks_the_characters_after_the_equals_sign():
    # token_losses' element t predicts character t of the text (the document is BOS + text)
    for text, answer in [("7+8=15\n", "15\n"), ("3-7=-4\n", "-4\n"), ("12*3+4=40\n", "40\n"), ("0*0=0\n", "0\n")]:
        assert text[study.answer_start(text) :] == answer
    with pytest.raises(ValueError, match=r"'1\+2\\n'"):
        study.answer_start("1+2\n")


class Oracle(torch.nn.Module):
    """Next-token logits from a table of documents: after a known prefix, the document's next token."""

    def __init__(self, taught):
        super().__init__()
        self.config = SimpleNamespace(seq_len=64)  # what token_scores checks documents against
        self.table = {tuple(d[: t + 1]): d[t + 1] for d in taught for t in range(len(d) - 1)}

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 257)
        for b, row in enumerate(idx.tolist()):
            for t in range(len(row)):
                logits[b, t, self.table.get(tuple(row[: t + 1]), 0)] = 1.0
        return logits


def test_greedy_solved_is_greedy_decoding_of_the_answer():
    texts = ["7+8=15\n", "3-7=-4\n", "12*3+4=40\n", "9*9=81\n", "5*5=25\n"]
    # the second has a wrong answer; the fourth an unknown prompt from its second 9; the fifth's prompt is
    # mispredicted at its '*' (the later "5+5" wins the prefix "5"), which greedy decoding after '=' never meets
    taught = ["7+8=15\n", "3-7=-5\n", "12*3+4=40\n", "9*8=81\n", "5*5=25\n", "5+5=10\n"]
    encode = lambda s: np.array([256] + list(s.encode()), dtype=np.int64)  # noqa: E731
    oracle = Oracle([encode(t).tolist() for t in taught])
    documents = [encode(t) for t in texts]
    solved = study.greedy_solved(token_scores(oracle, documents, batch_size=3)[1], [study.answer_start(t) for t in texts])
    expected = [greedy_decode(oracle, t.split("=")[0] + "=", 12) == list(t.split("=")[1].encode()) for t in texts]
    assert solved.tolist() == expected == [True, False, True, False, True]


def fake_run(name, n, seed, levels, trained=(1, 2)):
    return {"name": name, "config": {"n_params": n, "train": {"seed": seed}},
            "study": {"trained_levels": list(trained), "data_seed": 0, "eval_seed": 11, "eval_count": 40, "levels": levels}}


def fake_levels(rng, n):
    """Losses of a power law in N per level (harder levels higher) with noise, fresh each call."""
    return [{"level": k, "n_problems": 40, "answer_loss": float((0.2 * k + (3e3 * k / n) ** 0.4) * rng.lognormal(0, 0.03)),
             "problem_loss": float((0.5 + (1e3 * k / n) ** 0.3) * rng.lognormal(0, 0.03)), "exact_match": float(rng.uniform()),
             "seen_in_training": 1.0 if k == 1 else 0.0, "unseen_answer_loss": None if k == 1 else float(rng.uniform(1, 2))} for k in (1, 2, 3)]


def test_report_averages_seeds_and_matches_fastscale_fit(rng):
    sizes = [1e4, 3e4, 1e5, 3e5, 1e6]
    runs = [fake_run(f"N{n:g}_s{s}", n, s, fake_levels(rng, n)) for n in sizes for s in ((0, 1) if n == 1e5 else (0,))]
    section = study.report(runs, OPTIONS, n_bootstrap=50, seed=4)
    assert [s["N"] for s in section["sizes"]] == sizes
    assert section["sizes"][2]["runs"] == ["N100000_s0", "N100000_s1"]
    assert [e["status"] for e in section["levels"]] == ["trained", "trained", "extrapolated"]
    for i, entry in enumerate(section["levels"]):
        unseen = [np.mean([r["study"]["levels"][i]["unseen_answer_loss"] or np.nan for r in runs if r["config"]["n_params"] == n]) for n in sizes]
        assert entry["unseen_answer_loss"] == ([None] * len(sizes) if i == 0 else pytest.approx(unseen, rel=1e-12))
        for metric in ("answer_loss", "problem_loss"):
            mean = [np.mean([r["study"]["levels"][i][metric] for r in runs if r["config"]["n_params"] == n]) for n in sizes]
            assert entry[metric] == pytest.approx(mean, rel=1e-12)
            expected = fit_power_law(np.array(sizes), np.array(mean), n_bootstrap=50, seed=4).summary()
            assert entry["fits"][metric]["params"] == pytest.approx(expected["params"], rel=1e-9)
            assert entry["fits"][metric]["ci"]["alpha"] == pytest.approx(expected["ci"]["alpha"], rel=1e-9)
    json.dumps(section)  # JSON-ready


def test_report_falls_back_when_a_level_cannot_be_fitted(tmp_path, rng):
    sizes = [1e4, 1e5, 1e6]  # too few for L_inf + (N0/N)^alpha (fit_power_law wants 4), enough for (N0/N)^alpha
    runs = [fake_run(f"N{n:g}", n, 0, fake_levels(rng, n)) for n in sizes]
    for r in runs[1:]:
        r["study"]["levels"] = r["study"]["levels"][:2]  # level 3 at one size only
    runs.append({"name": "unevaluated", "config": {"n_params": 3e6}})
    section = study_section({"kind": "math", **OPTIONS}, runs, n_bootstrap=20, seed=0)
    fallback = section["levels"][0]["fits"]["answer_loss"]
    losses = [r["study"]["levels"][0]["answer_loss"] for r in runs[:3]]
    expected = fit_power_law(np.array(sizes), np.array(losses), irreducible=False, n_bootstrap=20, seed=0)
    assert "pure power law" in fallback["fallback"] and fallback["params"] == pytest.approx(expected.summary()["params"], rel=1e-9)
    assert "error" in section["levels"][2]["fits"]["answer_loss"]
    assert section["missing"] == ["unevaluated"]
    lines = study_markdown(section)
    assert "Runs without a study evaluation (left out): unevaluated." in lines
    assert sum(line.startswith("| 3 | extrapolated |") for line in lines) == 3  # answer, exact match, fits
    assert any("no fit" in line for line in lines)
    assert study.plots(section, tmp_path) == ["math_loss_vs_N.png", "math_loss_vs_N.svg"]
    assert all((tmp_path / name).stat().st_size > 0 for name in ("math_loss_vs_N.png", "math_loss_vs_N.svg"))


@pytest.mark.parametrize("options, name", [
    ({"eval_levels": [0, 1]}, "eval_levels"), ({"eval_levels": [1, 1]}, "eval_levels"), ({"eval_levels": []}, "eval_levels"),
    ({"eval_levels": [True]}, "eval_levels"), ({"eval_levels": 3}, "eval_levels"), ({"eval_count": 0}, "eval_count"),
    ({"eval_count": 2.5}, "eval_count"), ({"eval_seed": -1}, "eval_seed"), ({"levels": [1]}, "options"),
])
def test_check_names_the_bad_option(options, name):
    with pytest.raises(SweepError, match=rf"study\.{name}=.*expected"):
        study.check(options)
    study.check(OPTIONS)
    study.check({})


@pytest.mark.slow
def test_evaluate_refuses_the_training_seed_and_problems_longer_than_seq_len(trained):
    run_dir, data_dir = trained
    with pytest.raises(ValueError, match=r"eval_seed=3.*different seed"):
        study.evaluate(run_dir, data_dir, {**OPTIONS, "eval_seed": DATA["seed"]})
    with pytest.raises(ValueError, match=r"level 8 .*seq_len=32"):
        study.evaluate(run_dir, data_dir, {**OPTIONS, "eval_levels": [8]})


def test_preset_is_a_valid_sweep_whose_rows_hold_every_evaluated_problem():
    preset = json.loads(json.dumps(PRESETS["math"]))
    spec = SweepSpec.from_dict(preset)  # checks the study's options too
    assert spec.study["kind"] == "math" and len(spec.runs()) == len(preset["sizes"])
    longest = max(len(t) + 1 for k in preset["study"]["eval_levels"] for t, _ in math_problems(2000, k, 0))
    assert longest <= preset["seq_len"]
