"""The video study: per-frame-position losses of a small GPT against a float64 computation written apart
(one clip at a time, log-softmax in float64, frames summed by explicit slices), its report's per-position
fits against an independent float64 least-squares fit, and its option and data checks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from float64_fits import independent_fit, law

import fastscale.sweep.evaluation as evaluation
from fastscale.data.prepare import prepare
from fastscale.model import GPT, GPTConfig
from fastscale.sweep.presets import PRESETS
from fastscale.sweep.report import study_markdown, study_section
from fastscale.sweep.spec import SweepError, SweepSpec
from fastscale.sweep.studies import video as study

FRAMES, RESOLUTION = 4, 3  # 27 tokens a frame, 109 a clip with BOS
TOKENS = 3 * RESOLUTION**2
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    prepare("video", root / "data", frames=FRAMES, resolution=RESOLUTION, count=60, seed=5)  # 6 held-out clips
    return root / "data"


def tiny_gpt() -> GPT:
    torch.manual_seed(7)
    model = GPT(GPTConfig(vocab_size=257, seq_len=1 + FRAMES * TOKENS, n_layer=1, d_model=16, n_head=2, init_std=0.3))
    return model.eval()


def reference_frames(model, clips) -> np.ndarray:
    """[clips, frames] nats from float64 logits, one clip at a time; frame f is tokens 1 + f T .. (f + 1) T."""
    model = model.double()
    out = []
    for clip in clips:
        tokens = torch.as_tensor(clip)
        with torch.no_grad():
            logp = torch.log_softmax(model(tokens[None, :-1])[0], dim=-1)
        out.append([sum(-logp[t - 1, tokens[t]].item() for t in range(1 + f * TOKENS, 1 + (f + 1) * TOKENS)) for f in range(FRAMES)])
    model.float()
    return np.array(out)


def test_evaluate_matches_an_independent_float64_computation(data_dir, monkeypatch):
    model = tiny_gpt()
    monkeypatch.setattr(evaluation, "load_trained", lambda run_dir: model)
    result = study.evaluate(data_dir / "no-run", data_dir, {"max_clips": 5})
    clips, frames, tokens = study.held_out_clips(data_dir, 5)
    assert (result["clips"], result["frames"], result["tokens_per_frame"], frames, tokens) == (5, FRAMES, TOKENS, FRAMES, TOKENS)
    want = reference_frames(model, clips)
    assert result["frame_loss"] == pytest.approx(want.mean(axis=0), rel=1e-6)
    assert result["frame_loss_se"] == pytest.approx(want.std(axis=0, ddof=1) / np.sqrt(5), rel=1e-5)
    # the saved per-position losses, summed over each frame's positions in float64, give the frame losses
    position = np.array(result["position_loss"], dtype=np.float64)
    assert position.shape == (FRAMES * TOKENS,)
    assert [position[f * TOKENS : (f + 1) * TOKENS].sum() for f in range(FRAMES)] == pytest.approx(result["frame_loss"], rel=1e-12)
    assert min(result["frame_loss"]) > 0.5 * TOKENS  # init_std 0.3: far from uniform (ln 257 = 5.5 a token) but not a trained model


def test_frame_losses_sums_each_frames_positions(rng):
    losses = rng.exponential(size=(3, FRAMES * 5))
    want = [[losses[c, f * 5 : (f + 1) * 5].sum() for f in range(FRAMES)] for c in range(3)]
    np.testing.assert_allclose(study.frame_losses(losses, FRAMES, 5), want, rtol=1e-14)


def fake_runs(rng, laws, sizes, seeds=(0,)):
    runs = []
    for n in sizes:
        for seed in seeds:
            frame = [law(n, *p) * np.exp(rng.normal(0, 0.01)) for p in laws]
            runs.append({"name": f"N{n:g}_s{seed}", "config": {"n_params": n},
                         "study": {"clips": 50, "frames": len(laws), "tokens_per_frame": 192, "position_loss": [],
                                   "frame_loss": frame, "frame_loss_se": [1.0] * len(laws)}})
    return runs


def test_report_fits_each_frame_position_as_an_independent_float64_fit(rng):
    # frame 1 alone; later frames lower (the earlier frames predict part of them)
    laws = [(100.0, 1.5e10, 0.4), (60.0, 3e9, 0.5), (50.0, 1e9, 0.55)]  # reducible losses of 40-500 nats a frame
    sizes = [1e4, 3e4, 1e5, 3e5, 1e6]
    runs = fake_runs(rng, laws, sizes, seeds=(0, 1))
    section = study.report(runs, {}, n_bootstrap=20, seed=3)
    n = np.array(sizes)
    means = np.array([[np.mean([r["study"]["frame_loss"][k] for r in runs if r["config"]["n_params"] == size]) for k in range(3)] for size in sizes])
    for s, row in zip(section["sizes"], means):
        assert s["frame_loss"] == pytest.approx(row, rel=1e-12)
        assert s["later_frames"] == pytest.approx(row[1:].mean(), rel=1e-12)
        assert s["predicted_share"] == pytest.approx(1 - row[1:] / row[0], rel=1e-12)
        assert s["frame_loss_se"] == pytest.approx([np.sqrt(2) / 2] * 3, rel=1e-12)
    for k, fit in enumerate(section["frame_fits"]):
        want = independent_fit(n, means[:, k])
        got = fit["params"]
        assert [got["L_inf"], got["alpha"]] == pytest.approx([want[0], want[2]], rel=2e-3)
        assert got["x0"] == pytest.approx(want[1], rel=2e-2)
        assert got["L_inf"] == pytest.approx(laws[k][0], rel=0.1)  # 1% noise: near the law the data were drawn from
    later = independent_fit(n, means[:, 1:].mean(axis=1))
    assert section["later_frames_fit"]["params"]["alpha"] == pytest.approx(later[2], rel=2e-3)


def test_report_markdown_and_plot(tmp_path, rng):
    section = study.report(fake_runs(rng, [(100.0, 1.5e10, 0.4), (60.0, 3e9, 0.5)], [1e4, 3e4, 1e5, 3e5]), {}, n_bootstrap=10, seed=0)
    text = "\n".join(study.markdown(section))
    assert "| frame | alpha | L_inf (nats/frame)" in text and "| 2 |" in text and "later (mean of 2..)" in text
    assert study.plots(section, tmp_path) == ["video_frames.png", "video_frames.svg"]
    assert (tmp_path / "video_frames.png").stat().st_size > 0
    assert "No video study results" in "\n".join(study_markdown(study_section({"kind": "video"}, [{"name": "a", "config": {"n_params": 1e4}}], 10, 0)))


def test_too_few_sizes_fall_back_with_the_reason(rng):
    section = study.report(fake_runs(rng, [(400.0, 2e5, 0.4)], [1e4, 1e5, 1e6]), {}, n_bootstrap=20, seed=0)
    assert "pure power law" in section["frame_fits"][0]["fallback"] and section["later_frames_fit"] is None


@pytest.mark.parametrize("options, message", [({"max_clip": 3}, "study.options=.*only"), ({"max_clips": 0}, r"study.max_clips=0; expected a positive")])
def test_bad_options_are_refused(options, message):
    with pytest.raises(SweepError, match=message):
        study.check(options)


def test_evaluate_refuses_data_that_is_not_video(tmp_path, monkeypatch):
    prepare("digits", tmp_path / "digits")
    monkeypatch.setattr(evaluation, "load_trained", lambda run_dir: tiny_gpt())
    with pytest.raises(ValueError, match="needs video clips"):
        study.evaluate(tmp_path, tmp_path / "digits", {})


def test_preset_rows_are_whole_clips_and_no_clip_repeats():
    preset = PRESETS["video"]
    spec = SweepSpec.from_dict(preset)
    frames, r = preset["data"]["frames"], preset["data"]["resolution"]
    assert frames >= 4 and spec.seq_len == 1 + frames * 3 * r * r == preset["tokens_per_item"] + 1 and spec.packing == "documents"
    train_clips = preset["data"]["count"] * 0.9
    assert max(spec.budgets) / spec.seq_len < train_clips  # under one epoch
    assert len(spec.sizes) >= 4  # L_inf + (N0/N)^alpha per frame position needs four


def test_committed_video_results_refit_independently():
    """benchmarks/results/video: each frame position's fit, refitted in float64 by scipy from the report's saved per-size frame losses."""
    section = json.loads((RESULTS / "video" / "report.json").read_text())["study"]
    n = np.array([s["N"] for s in section["sizes"]])
    for k, fit in enumerate(section["frame_fits"]):
        want = independent_fit(n, np.array([s["frame_loss"][k] for s in section["sizes"]]))
        assert [fit["params"][p] for p in ("L_inf", "x0", "alpha")] == pytest.approx(want, rel=1e-4)
