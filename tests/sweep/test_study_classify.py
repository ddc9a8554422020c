"""The classify study: options, evaluate on a tiny trained run (determinism, the data it reads, its
numbers recomputed in float64 from the fine-tuned model by another code path), and report against
fastscale.fit on hand-made runs."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.datasets import load_digits

from fastscale.data.prepare import prepare
from fastscale.data.shards import TokenShard, write_shard
from fastscale.fit import fit_power_law
from fastscale.model import GPT
from fastscale.sweep.evaluation import load_trained
from fastscale.sweep.presets import PRESETS
from fastscale.sweep.report import study_section
from fastscale.sweep.spec import SweepError, SweepSpec
from fastscale.sweep.studies import classify

OPTIONS = {"steps": 6, "batch_size": 16, "lr": 3e-3, "seed": 3, "baseline": True}


@pytest.fixture(scope="module")
def trained(digits_run):
    """(run_dir, data_dir): the session's one-layer GPT trained on the prepared digits, with a final checkpoint."""
    return digits_run.run_dir, digits_run.data_dir


@pytest.fixture(scope="module")
def measured(trained):
    return classify.measure(*trained, OPTIONS)


# -- options -------------------------------------------------------------------------------------------


def test_check_accepts_the_defaults_and_the_preset():
    classify.check({})
    spec = SweepSpec.from_dict(PRESETS["classify"])  # the sweep's own checks, the study's check among them
    assert spec.study["kind"] == "classify"


@pytest.mark.parametrize("options,pattern", [
    ({"step": 10}, r"study\.options=\['step'\]; expected only \["),
    ({"steps": 0}, r"study\.steps=0; expected an integer from 1 to 10000"),
    ({"steps": 2.5}, r"study\.steps=2\.5; expected an integer"),
    ({"steps": True}, r"study\.steps=True; expected an integer"),
    ({"batch_size": 4096}, r"study\.batch_size=4096; expected an integer from 1 to 1024"),
    ({"lr": 0}, r"study\.lr=0; expected a number in \(0, 1\]"),
    ({"lr": float("nan")}, r"study\.lr=nan; expected a number"),
    ({"weight_decay": -0.1}, r"study\.weight_decay=-0\.1; expected a number in \[0, 1\]"),
    ({"seed": -1}, r"study\.seed=-1; expected an integer >= 0"),
    ({"baseline": "yes"}, r"study\.baseline='yes'; expected true or false"),
])
def test_check_names_the_bad_option_its_value_and_what_was_expected(options, pattern):
    with pytest.raises(SweepError, match=pattern):
        classify.check(options)


# -- evaluate ------------------------------------------------------------------------------------------


def without_timing(record: dict) -> dict:
    record = copy.deepcopy(record)
    record.pop("seconds")
    record.get("baseline", {}).pop("seconds", None)
    return record


@pytest.mark.slow
def test_evaluate_is_deterministic(trained, measured):
    again = classify.evaluate(*trained, OPTIONS)
    assert without_timing(again) == without_timing(measured.record)
    json.dumps(again)  # JSON-ready


@pytest.mark.slow
def test_fine_tunes_on_training_digits_and_scores_held_out_digits_with_their_true_labels(trained, measured):
    _, data_dir = trained
    train, val = TokenShard(data_dir / "train"), TokenShard(data_dir / "val")
    # the digits domain is all digits: every document of each shard, read from the shard itself
    for digits, shard in ((measured.finetune, train), (measured.heldout, val)):
        np.testing.assert_array_equal(digits.positions, np.arange(len(shard)))
        np.testing.assert_array_equal(digits.tokens, np.stack([shard[i] for i in range(len(shard))]))
    seen = {row.tobytes() for row in measured.finetune.tokens}
    assert not any(row.tobytes() in seen for row in measured.heldout.tokens)
    # labels: each digit's scikit-learn target, found by its pixels (the 1,797 digits are distinct)
    data = load_digits()
    grey = np.rint(data.images * (255 / 16)).astype(np.int64)
    target = {np.repeat(g[..., None], 3, axis=2).reshape(-1).tobytes(): int(t) for g, t in zip(grey, data.target)}
    for digits in (measured.finetune, measured.heldout):
        assert [target[row[1:].tobytes()] for row in digits.tokens] == digits.labels.tolist()
    assert measured.record["finetune"]["examples"] == len(train) and measured.record["heldout_examples"] == len(val)


def float64_logits(classifier, tokens: np.ndarray) -> np.ndarray:
    """The classifier's logits in float64, its hidden states taken from GPT.forward itself (a hook on the
    final layer norm) rather than from the study's pooling code."""
    model = copy.deepcopy(classifier).double().eval()
    captured = {}
    model["gpt"].ln_f.register_forward_hook(lambda module, args, out: captured.update(hidden=out))
    with torch.no_grad():
        model["gpt"](torch.from_numpy(tokens))
        pooled = captured["hidden"][:, 1:].sum(dim=1) / (tokens.shape[1] - 1)
        standardized = (pooled - model.feature_mean) / model.feature_std
        return (standardized @ model["head"].weight.T + model["head"].bias).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["fine_tuned", "baseline"])
def test_loss_and_error_recomputed_in_float64_from_the_fine_tuned_model(measured, which):
    classifier, logits, record = ((measured.classifier, measured.logits, measured.record) if which == "fine_tuned"
                                  else (measured.baseline_classifier, measured.baseline_logits, measured.record["baseline"]))
    z = float64_logits(classifier, measured.heldout.tokens)
    labels = measured.heldout.labels
    np.testing.assert_allclose(logits, z, rtol=0, atol=1e-4 * np.abs(z).max())
    loss = np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels])
    assert record["classification_loss"] == pytest.approx(loss, rel=1e-5)
    assert record["error"] == np.mean(z.argmax(axis=1) != labels)
    assert 0 < record["classification_loss"] and 0 <= record["error"] <= 1


@pytest.mark.slow
def test_baseline_starts_from_a_random_initialization(trained, measured):
    pretrained = load_trained(trained[0]).state_dict()
    tuned, base = measured.classifier["gpt"].state_dict(), measured.baseline_classifier["gpt"].state_dict()
    assert not torch.equal(pretrained["wte.weight"], tuned["wte.weight"])  # fine-tuning moved every weight
    torch.manual_seed(OPTIONS["seed"])
    fresh = GPT(measured.classifier["gpt"].config).state_dict()
    assert not torch.equal(fresh["wte.weight"], base["wte.weight"])
    untouched = [name for name in fresh if name.startswith("head.")]  # the LM head is not in the classifier's graph
    assert untouched and all(torch.equal(fresh[name], base[name]) for name in untouched)


@pytest.mark.slow
def test_generative_loss_is_the_pretrained_models_on_the_held_out_digits(trained, measured):
    model = load_trained(trained[0]).double()
    tokens = torch.from_numpy(measured.heldout.tokens)
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens[:, :-1]), dim=-1)
    per_image = -logp.gather(2, tokens[:, 1:, None]).squeeze(2).sum(dim=1).numpy()
    assert measured.record["generative_loss_per_image"] == pytest.approx(per_image.mean(), rel=1e-6)
    assert measured.record["generative_loss_per_token"] == pytest.approx(per_image.mean() / 192, rel=1e-6)


def test_digits_among_photos_are_found_in_their_shards_with_their_labels(tmp_path):
    prepare("images", tmp_path / "images")
    finetune, heldout = classify.labelled_digits(tmp_path / "images")
    assert len(finetune.labels) + len(heldout.labels) == 1797
    for digits, split in ((finetune, "train"), (heldout, "val")):
        shard = TokenShard(tmp_path / "images" / split)
        assert len(digits.labels) < len(shard)  # the photo patches are left out
        np.testing.assert_array_equal(digits.tokens, np.stack([shard[int(i)] for i in digits.positions]))
    counts = np.bincount(np.concatenate([finetune.labels, heldout.labels]), minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(load_digits().target, minlength=10))


@pytest.mark.slow
def test_evaluate_refuses_data_without_digit_labels(tmp_path, trained):
    prepare("photos", tmp_path / "photos")
    with pytest.raises(ValueError, match=r"data_dir=.*domain 'photos'.*needs the bundled digits"):
        classify.labelled_digits(tmp_path / "photos")


@pytest.mark.slow
def test_evaluate_refuses_shards_that_are_not_builds_split(tmp_path, trained):
    _, data_dir = trained
    train, val = TokenShard(data_dir / "train"), TokenShard(data_dir / "val")
    docs = [train[i] for i in range(len(train))] + [val[i] for i in range(len(val))]
    shuffled = [docs[i] for i in np.random.default_rng(5).permutation(len(docs))]  # same counts, another split
    for split, part in (("train", shuffled[: len(train)]), ("val", shuffled[len(train) :])):
        write_shard(tmp_path / "data" / split, part, 257, split=split, **{k: train.meta[k] for k in ("domain", "source", "tokenizer", "seed")})
    with pytest.raises(ValueError, match=r"the train shard's documents are not build\(\)'s split"):
        classify.labelled_digits(tmp_path / "data")


# -- report --------------------------------------------------------------------------------------------


def hand_made_runs(rng, sizes, seeds=2, baseline=True):
    """Runs with study records: classification loss on a power law in N with fresh noise, per seed."""
    runs = []
    for n in sizes:
        for seed in range(seeds):
            study = {"classification_loss": 0.1 + (3e3 / n) ** 0.4 * rng.uniform(0.9, 1.1), "error": rng.uniform(0, 0.5),
                     "generative_loss_per_image": 300 + 1e4 / n ** 0.5 * rng.uniform(0.9, 1.1), "seconds": rng.uniform(1, 5),
                     "finetune": {"examples": 1617}, "heldout_examples": 180}
            if baseline:
                study["baseline"] = {"classification_loss": 0.5 + (1e3 / n) ** 0.2 * rng.uniform(0.9, 1.1), "error": rng.uniform(0.2, 0.6), "seconds": rng.uniform(1, 5)}
            runs.append({"name": f"N{n:.3g}_s{seed}", "config": {"n_params": int(n)}, "study": study})
    return runs


def same(a: dict, b: dict) -> bool:
    """Equal, NaN (an open bootstrap bound) equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_report_averages_seeds_and_fits_like_fastscale_fit(rng):
    sizes = np.geomspace(1e4, 4e5, 6).round()
    runs = hand_made_runs(rng, sizes)
    section = classify.report(runs, {}, 50, 4)
    mean = lambda key, n, sub=None: np.mean([(r["study"][sub] if sub else r["study"])[key] for r in runs if r["config"]["n_params"] == int(n)])
    loss = np.array([mean("classification_loss", n) for n in sizes])
    assert [row["N"] for row in section["sizes"]] == sizes.tolist()
    np.testing.assert_allclose([row["classification_loss"] for row in section["sizes"]], loss, rtol=1e-15)
    np.testing.assert_allclose([row["error"] for row in section["sizes"]], [mean("error", n) for n in sizes], rtol=1e-15)
    np.testing.assert_allclose([row["baseline"]["error"] for row in section["sizes"]], [mean("error", n, "baseline") for n in sizes], rtol=1e-15)
    assert same(section["fit"], fit_power_law(sizes, loss, n_bootstrap=50, seed=4).summary())
    base = np.array([mean("classification_loss", n, "baseline") for n in sizes])
    assert same(section["baseline_fit"], fit_power_law(sizes, base, n_bootstrap=50, seed=4).summary())
    assert section["options"] == classify.DEFAULTS
    json.dumps(section)


def test_report_falls_back_to_a_pure_power_law_then_to_an_error_never_crashing(tmp_path, rng):
    sizes = np.array([1e4, 4e4, 1.6e5])  # 3 points: too few for 3 parameters, enough for 2
    three = classify.report(hand_made_runs(rng, sizes, seeds=1), {}, 20, 0)
    loss = np.array([row["classification_loss"] for row in three["sizes"]])
    expected = fit_power_law(sizes, loss, irreducible=False, n_bootstrap=20, seed=0).summary()
    assert same({k: v for k, v in three["fit"].items() if k != "fallback"}, expected)
    assert "pure power law (L_inf = 0): power law: got 3 points" in three["fit"]["fallback"]
    assert any("fallback: pure power law (L_inf = 0)" in line for line in classify.markdown(three))
    one = study_section({"kind": "classify"}, hand_made_runs(rng, [1e4], seeds=1) + [{"name": "N2e4_s0", "config": {"n_params": 20000}}], 20, 0)
    assert "error" in one["fit"] and "pure power law" in one["fit"]["error"]
    assert one["missing"] == ["N2e4_s0"]
    assert any("no fit" in line for line in classify.markdown(one))
    assert classify.plots(one, tmp_path) == ["classify.png", "classify.svg"]


def test_markdown_and_plots(tmp_path, rng):
    section = classify.report(hand_made_runs(rng, np.geomspace(1e4, 4e5, 5).round(), seeds=1), {"steps": 40}, 20, 0)
    text = "\n".join(classify.markdown(section))
    assert "40 steps" in text and f"alpha = {section['fit']['params']['alpha']:.4g}" in text and "(classify.png)" in text
    for row in section["sizes"]:
        assert f"| {row['N']:.3g} | {row['generative_loss_per_image']:.2f} | {row['classification_loss']:.4f} |" in text
    names = classify.plots(section, tmp_path)
    assert names == ["classify.png", "classify.svg"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in names)
    assert math.isfinite(section["fit"]["params"]["alpha"])
