"""The multimodal study: evaluate on a tiny trained run against a direct float64 computation, the report
against fastscale.fit and plain numpy on hand-made runs, the preset, and bad options refused."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

import processes

from fastscale.data import TokenShard, build, prepare
from fastscale.fit import fit_power_law
from fastscale.fit.bootstrap import resample_counts
from fastscale.sweep.evaluation import load_trained
from fastscale.sweep.presets import PRESETS
from fastscale.sweep.report import study_markdown, study_section
from fastscale.sweep.spec import SweepError, SweepSpec
from fastscale.sweep.studies import multimodal

PIXELS, BOS, SEP = 192, 512, 513


def train_tiny(data_dir, out):
    run = {"model": {"n_layer": 1, "d_model": 32, "n_head": 2}, "data": {"path": str(data_dir)}, "seq_len": 227, "packing": "documents",
           "train": {"steps": 12, "lr": 3e-3, "warmup_steps": 2, "eval_interval": 0, "checkpoint_interval": 12, "noise_scale_interval": 0}}
    ds = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}
    return processes.train(out, run, ds)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("multimodal")
    prepare("captions", root / "data", order="both")
    return train_tiny(root / "data", root), root / "data"


def split_pair(doc):
    """(pixels, caption bytes) of a stored document, by its layout: BOS, one part, SEP, the other."""
    body = np.asarray(doc[1:])
    cut = int(np.argmax(body == SEP))
    first, second = body[:cut], body[cut + 1 :]
    return (first, second) if first[0] < 256 else (second, first)


def direct_scores(model, pixels, caption):
    """Per-part sums of -log p in float64 from the model's full logits, one document at a time, and
    the order guess at the first token taken out (from this document's own first logits)."""
    out = {}
    for order in ("image_first", "caption_first"):
        parts = [pixels, caption] if order == "image_first" else [caption, pixels]
        doc = torch.from_numpy(np.concatenate([[BOS], parts[0], [SEP], parts[1]]).astype(np.int64))
        with torch.no_grad():
            log_p = torch.log_softmax(model(doc[None])[0], dim=-1)
        nll = -log_p[:-1].gather(1, doc[1:, None])[:, 0].numpy()
        vocabulary = slice(0, 256) if order == "image_first" else slice(256, 512)
        order_nats = -torch.logsumexp(log_p[0, vocabulary], 0).item()
        a = len(parts[0])
        first_part, second_part = nll[:a].sum() - order_nats, nll[a + 1 :].sum()
        if order == "image_first":
            out["image_alone"], out["caption_given_image"] = first_part, second_part
        else:
            out["caption_alone"], out["image_given_caption"] = first_part, second_part
    return out


@pytest.mark.slow
def test_evaluate_matches_a_direct_float64_computation(trained):
    run_dir, data_dir = trained
    result = multimodal.evaluate(run_dir, data_dir, {"max_pairs": 24})
    shard = TokenShard(data_dir / "val")
    model = load_trained(run_dir).double()
    pairs = [split_pair(shard[i]) for i in range(24)]
    scores = [direct_scores(model, *pair) for pair in pairs]
    # caption use: each image after the next pair's caption
    other = [direct_scores(model, pairs[i][0], pairs[(i + 1) % 24][1])["image_given_caption"] for i in range(24)]
    assert result["pairs"] == 24 and result["tokens_per_image"] == PIXELS and result["bundled_digits"] is True
    for name in multimodal.LOSSES:
        want = np.mean([s[name] for s in scores])
        assert result[name] == pytest.approx(want, rel=1e-6, abs=1e-3), name
    gain = np.array([s["image_alone"] - s["image_given_caption"] for s in scores])
    assert result["information_from_image"] == pytest.approx(gain.mean(), abs=2e-3)
    assert result["information_from_image_se"] == pytest.approx(gain.std(ddof=1) / math.sqrt(24), rel=1e-3)
    gain = np.array([s["caption_alone"] - s["caption_given_image"] for s in scores])
    assert result["information_from_caption"] == pytest.approx(gain.mean(), abs=2e-3)
    use = np.array(other) - np.array([s["image_given_caption"] for s in scores])
    assert result["caption_use"] == pytest.approx(use.mean(), abs=2e-3)
    assert result["caption_use_se"] == pytest.approx(use.std(ddof=1) / math.sqrt(24), rel=1e-3)
    captions = [bytes((split_pair(shard[i])[1] - 256).tolist()).decode() for i in range(24)]
    p = np.array(list(Counter(captions).values())) / 24
    assert result["caption_entropy"] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
    assert result["caption_bytes"] == pytest.approx(np.mean([len(c) for c in captions]))
    # the order is a two-way guess the model learns quickly: its cost at the first token is near ln 2 each way
    assert sum(math.exp(-v) for v in result["order_nats"].values()) <= 1 + 1e-9


class IndependentParts(torch.nn.Module):
    """A causal model under which image and caption are independent, so I = 0 exactly: the next token
    depends on the current one and on the order (told by token 1); after SEP, the second part starts
    as it would after BOS once the order is known. Any slicing error (SEP counted in a part, a token
    lost) or a missing order correction shows as I != 0."""

    def __init__(self, seed):
        super().__init__()
        self.config = type("Config", (), {"seq_len": 300})()
        g = torch.Generator().manual_seed(seed)
        shared = torch.randn(514, 514, generator=g, dtype=torch.float64) * 2
        self.image_first, self.caption_first = shared.clone(), shared.clone()
        self.image_first[SEP] = -torch.inf
        self.image_first[SEP, 256:512] = shared[BOS, 256:512]  # caption bytes only, started as after BOS
        self.caption_first[SEP] = -torch.inf
        self.caption_first[SEP, :256] = shared[BOS, :256]

    def forward(self, idx):
        order = idx[:, 1:2] if idx.shape[1] > 1 else idx[:, :1]  # BOS alone: its row is the same in both
        logits = torch.where((order < 256)[..., None], self.image_first[idx], self.caption_first[idx])
        return logits.float()


def test_information_is_zero_when_image_and_caption_are_independent():
    from fastscale.data import ImageCaptionTokenizer

    rng = np.random.default_rng(7)
    pairs = [(rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8), "x" * int(rng.integers(1, 30))) for _ in range(9)]
    result = multimodal.measure(IndependentParts(7), ImageCaptionTokenizer(8), pairs)
    assert abs(result["information_from_image"]) < 1e-9 * result["image_alone"]
    assert abs(result["information_from_caption"]) < 1e-9 * result["caption_alone"]
    assert abs(result["caption_use"]) < 1e-9 * result["image_alone"]
    assert min(result["order_nats"].values()) > 0.01  # the order guess was there to take out


@pytest.mark.slow
def test_evaluate_refuses_data_without_captions(tmp_path, trained):
    prepare("digits", tmp_path / "digits")
    with pytest.raises(ValueError, match=r"data_dir=.*digits.*needs image\+caption data.*'image'"):
        multimodal.evaluate(trained[0], tmp_path / "digits", {})


def hand_made_runs(seed=0):
    """Two seeds at each of five sizes, losses from known laws plus noise, as load_runs gives them."""
    rng = np.random.default_rng(seed)
    runs = []
    for n in (1.1e4, 3.2e4, 8.9e4, 2.4e5, 6.1e5):
        for s in range(2):
            alone = 400 + (2e4 / n) ** 0.3 * 250 * np.exp(rng.normal(0, 0.01))
            given = alone - 0.4 * math.log10(n) + rng.normal(0, 0.05)
            caption = 40 + rng.normal(0, 1)
            study = {"pairs": 180, "tokens_per_image": 192, "caption_bytes": 16.3, "caption_entropy": 3.59, "bundled_digits": True,
                     "order_nats": {"image_first": 0.69, "caption_first": 0.69},
                     "image_alone": alone, "image_given_caption": given, "caption_alone": caption,
                     "caption_given_image": caption - 0.3 * math.log10(n) + rng.normal(0, 0.05),
                     "information_from_image_se": float(rng.uniform(0.05, 0.1)), "information_from_caption_se": float(rng.uniform(0.05, 0.1)),
                     "caption_use": float(rng.uniform(0, 2)), "caption_use_se": float(rng.uniform(0.05, 0.1))}
            study["information_from_image"] = study["image_alone"] - study["image_given_caption"]
            study["information_from_caption"] = study["caption_alone"] - study["caption_given_image"]
            runs.append({"name": f"N{n:.3g}_s{s}", "config": {"n_params": int(n)}, "study": study})
    return runs


def test_report_numbers_against_fastscale_fit_and_numpy():
    runs = hand_made_runs()
    section = multimodal.report(runs, {}, n_bootstrap=200, seed=3)
    n = np.array([r["config"]["n_params"] for r in runs], dtype=float)
    for name in ("image_alone", "image_given_caption"):
        y = np.array([r["study"][name] for r in runs])
        want = fit_power_law(n, y, n_bootstrap=200, seed=3, groups=n, resampling="rows").summary()
        got = section["L_of_N"][name]
        assert got["params"] == pytest.approx(want["params"], rel=1e-12) and got["ci"] == want["ci"]
    for row, size in zip(section["sizes"], sorted(set(n))):
        mine = [r["study"] for r in runs if r["config"]["n_params"] == size]
        assert row["N"] == size and len(row["runs"]) == 2
        for name in multimodal.LOSSES + multimodal.DIFFERENCES:
            assert row[name] == pytest.approx(sum(m[name] for m in mine) / 2, rel=1e-12)
        for name in multimodal.DIFFERENCES:  # two independent seeds: the standard error of their mean
            assert row[f"{name}_se"] == pytest.approx(math.hypot(*(m[f"{name}_se"] for m in mine)) / 2, rel=1e-12)
        assert row["infogain"] == pytest.approx(row["information_from_image"] / row["image_alone"], rel=1e-12)
        assert row["information_over_caption"] == pytest.approx(row["information_from_image"] / row["caption_alone"], rel=1e-12)
        assert row["information_gap"] == pytest.approx(row["information_from_image"] - row["information_from_caption"], abs=1e-12)
    info = np.array([r["study"]["information_from_image"] for r in runs])
    line = stats.linregress(np.log10(n), info)
    assert section["I_of_N"]["slope_per_decade"]["value"] == pytest.approx(line.slope, rel=1e-9)
    assert section["I_of_N"]["intercept"]["value"] == pytest.approx(line.intercept, rel=1e-9)
    # the bootstrap: each draw's line is least squares on the resampled runs, written out as repeated points
    slopes = []
    for counts in resample_counts(len(n), 200, 3, groups=n):
        x, y = np.repeat(np.log10(n), counts), np.repeat(info, counts)
        if len(np.unique(x)) >= 2:
            slopes.append(stats.linregress(x, y).slope)
    low, high = np.percentile(slopes, [2.5, 97.5])
    assert section["I_of_N"]["slope_per_decade"]["low"] == pytest.approx(low, rel=1e-9)
    assert section["I_of_N"]["slope_per_decade"]["high"] == pytest.approx(high, rel=1e-9)
    assert section["I_of_N"]["n_bootstrap"] + section["I_of_N"]["dropped_draws"] == 200
    fits = section["L_of_N"]
    assert section["I_asymptote_from_fits"] == pytest.approx(fits["image_alone"]["params"]["L_inf"] - fits["image_given_caption"]["params"]["L_inf"])
    json.dumps(section)  # JSON-ready


def test_report_markdown_and_plots(tmp_path):
    runs = hand_made_runs(1)
    runs[0] = {**runs[0], "study": None}
    section = study_section({"kind": "multimodal"}, runs, n_bootstrap=50, seed=0)
    assert section["missing"] == [runs[0]["name"]]
    text = "\n".join(study_markdown(section))
    slope = section["I_of_N"]["slope_per_decade"]
    assert f"b = {slope['value']:.3g} [{slope['low']:.3g}, {slope['high']:.3g}]" in text
    assert f"{section['sizes'][-1]['infogain']:.4f}" in text and runs[0]["name"] in text and "ln 10" in text
    assert section["positions"] == ["learned"] and "Caveat: these models use learned absolute positions" in text
    assert "below zero" not in text  # every hand-made I is positive
    runs[1]["study"] = {**runs[1]["study"], "information_from_caption": -1.0, "information_from_caption_se": 0.1}  # the only run of its N
    text = "\n".join(multimodal.markdown(multimodal.report(runs[1:], {}, n_bootstrap=10, seed=0)))
    assert f"below zero by more than two standard errors at N = {runs[1]['config']['n_params']:.3g}:" in text
    rotary = [{**r, "config": {**r["config"], "model": {"positions": "rotary"}}} for r in runs[1:]]
    assert "Caveat" not in "\n".join(multimodal.markdown(multimodal.report(rotary, {}, n_bootstrap=10, seed=0)))
    names = multimodal.plots(section, tmp_path)
    assert sorted(names) == sorted(f"multimodal_{k}{s}" for k in ("information", "losses") for s in (".png", ".svg"))
    assert all((tmp_path / name).stat().st_size > 1000 for name in names)


def test_report_with_too_few_sizes_says_why():
    runs = [r for r in hand_made_runs() if r["config"]["n_params"] < 5e4]  # two sizes
    section = multimodal.report(runs, {}, n_bootstrap=20, seed=0)
    assert "2 model sizes; L(N) has 3 parameters and needs at least 3" in section["L_of_N"]["image_alone"]["error"]
    assert "2 model sizes" in section["I_of_N"]["error"] and section["I_asymptote_from_fits"] is None
    assert "not fitted" in "\n".join(multimodal.markdown(section))
    unevaluated = study_section({"kind": "multimodal"}, [{**runs[0], "study": None}], 20, 0)
    assert "no run has a multimodal study" in unevaluated["error"]
    assert f"No multimodal study results: {unevaluated['error']}." in study_markdown(unevaluated)


@pytest.mark.parametrize("options, message", [
    ({"max_pairs": 0}, r"study.max_pairs=0; expected a positive integer"),
    ({"max_pairs": True}, r"study.max_pairs=True; expected a positive integer"),
    ({"max_pairs": 2.5}, r"study.max_pairs=2.5; expected a positive integer"),
    ({"pairs": 10}, r"study.options=\['pairs'\]; expected only \['max_pairs'\]"),
])
def test_bad_options_are_refused_before_any_run(options, message):
    with pytest.raises(SweepError, match=message):
        multimodal.check(options)
    with pytest.raises(SweepError, match=message):
        SweepSpec.from_dict({**PRESETS["multimodal"], "study": {"kind": "multimodal", **options}})


def test_preset_keeps_every_pair_whole_in_a_row():
    spec = SweepSpec.from_dict(json.loads(json.dumps(PRESETS["multimodal"])))
    multimodal.check({k: v for k, v in PRESETS["multimodal"]["study"].items() if k != "kind"})
    _, train, val, _ = build("captions", **{k: v for k, v in PRESETS["multimodal"]["data"].items() if k != "dataset"})
    assert max(len(d) for d in train + val) <= spec.seq_len
    assert PRESETS["multimodal"]["packing"] == "documents"
    runs = spec.runs()
    assert len({r.n_target for r in runs}) >= 5 and all(r.steps == 400 for r in runs)
    rows_per_eval = PRESETS["multimodal"]["train"]["eval_batches"] * PRESETS["multimodal"]["deepspeed"]["train_micro_batch_size_per_gpu"]
    assert rows_per_eval >= len(val)  # every held-out pair (one per row) in the eval loss
