"""The resolutions study: per-image losses of a small GPT against a float64 computation written apart, the
per-resolution fits and forecasts against an independent float64 least-squares fit and the closed form
N = N0 (eps / T)^(-1/alpha), the grids `fastscale resolutions` derives, and the comparison's files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from float64_fits import independent_fit, law

import fastscale.sweep.evaluation as evaluation
import fastscale.sweep.report as sweep_report
from fastscale.data.prepare import prepare
from fastscale.model import GPT, GPTConfig
from fastscale.sweep.domains import resolution_specs, write_comparison
from fastscale.sweep.presets import PRESETS
from fastscale.sweep.spec import SweepError, SweepSpec
from fastscale.sweep.studies import resolutions as study


@pytest.mark.parametrize("resolution", [2, 3])
def test_evaluate_matches_an_independent_float64_computation(tmp_path, monkeypatch, resolution):
    prepare("photos", tmp_path / "data", resolution=resolution, val_fraction=0.01)  # 20 held-out patches
    tokens = 3 * resolution**2
    torch.manual_seed(resolution)
    model = GPT(GPTConfig(vocab_size=257, seq_len=tokens + 1, n_layer=1, d_model=16, n_head=2, init_std=0.3)).eval()
    monkeypatch.setattr(evaluation, "load_trained", lambda run_dir: model)
    result = study.evaluate(tmp_path, tmp_path / "data", {"max_images": 7})
    images, t = study.held_out_images(tmp_path / "data", 7)
    assert (result["images"], result["tokens_per_image"], result["resolution"], t) == (7, tokens, resolution, tokens)
    model = model.double()
    per_image, per_position = [], []
    for image in images:
        x = torch.as_tensor(image)
        with torch.no_grad():
            logp = torch.log_softmax(model(x[None, :-1])[0], dim=-1)
        nll = [-logp[j, x[j + 1]].item() for j in range(tokens)]
        per_position.append(nll)
        per_image.append(sum(nll))
    assert result["image_loss"] == pytest.approx(np.mean(per_image), rel=1e-6)
    assert result["image_loss_se"] == pytest.approx(np.std(per_image, ddof=1) / np.sqrt(7), rel=1e-5)
    assert result["position_loss"] == pytest.approx(np.mean(per_position, axis=0), rel=1e-6)
    assert sum(result["position_loss"]) == pytest.approx(result["image_loss"], rel=1e-12)


def fake_runs(rng, resolution, params, sizes, noise=0.005):
    """Runs whose per-token loss follows L_inf + (x0/N)^alpha (params per token) with lognormal noise."""
    t = 3 * resolution**2
    return [{"name": f"N{n:g}", "config": {"n_params": n, "data": {"train_rows": 1000}, "model": {"seq_len": t + 1}},
             "summary": {"tokens": 1000 * (t + 1)},
             "study": {"images": 40, "tokens_per_image": t, "resolution": resolution, "position_loss": [],
                       "image_loss": t * law(n, *params) * np.exp(rng.normal(0, noise)), "image_loss_se": 0.5}} for n in sizes]


SIZES = [1e4, 3e4, 1e5, 3e5, 1e6]


def test_per_resolution_fit_and_forecast_against_float64(rng):
    for resolution, params in ((8, (2.0, 3e4, 0.45)), (16, (1.5, 3e5, 0.35))):
        t = 3 * resolution**2
        section = study.report(fake_runs(rng, resolution, params, SIZES), {}, n_bootstrap=20, seed=1)
        token_loss = np.array([s["token_loss"] for s in section["sizes"]])
        image_loss = np.array([s["image_loss"] for s in section["sizes"]])
        np.testing.assert_allclose(token_loss, image_loss / t, rtol=1e-14)
        want = independent_fit(np.array(SIZES), token_loss)
        got = section["L_of_N"]["params"]
        assert [got["L_inf"], got["alpha"]] == pytest.approx([want[0], want[2]], rel=2e-3)
        assert got["x0"] == pytest.approx(want[1], rel=2e-2)
        exact = study.report(fake_runs(rng, resolution, params, SIZES, noise=0.0), {}, n_bootstrap=10, seed=1)["L_of_N"]["params"]
        assert [exact["L_inf"], exact["x0"], exact["alpha"]] == pytest.approx(params, rel=1e-3)  # noise-free: the law itself
        per_image = section["L_of_N"]["per_image"]
        assert per_image["params"]["L_inf"] == pytest.approx(t * got["L_inf"], rel=1e-12)
        assert per_image["ci"]["L_inf"] == pytest.approx([t * v for v in section["L_of_N"]["ci"]["L_inf"]], rel=1e-12)
        # per image the law is T L_inf + (x0 T^(1/alpha) / N)^alpha: the same loss at every N
        p_img = per_image["params"]
        assert law(1e5, *(p_img[k] for k in ("L_inf", "x0", "alpha"))) == pytest.approx(t * law(1e5, got["L_inf"], got["x0"], got["alpha"]), rel=1e-9)
        assert [row["reducible_per_image"] for row in section["forecast"]] == [1.0, 0.1, 0.01]
        for row in section["forecast"]:
            closed_form = got["x0"] * (row["reducible_per_image"] / t) ** (-1 / got["alpha"])
            assert row["N"]["value"] == pytest.approx(closed_form, rel=1e-9)
            assert row["N"]["low"] <= row["N"]["value"] <= row["N"]["high"]
            assert any("largest size trained" in c for c in row["caveats"])  # 0.01 nats/image is far past 1e6 parameters
            assert any("epoch(s) of 1,000 training images" in c for c in row["caveats"])


def test_too_few_sizes_give_an_error_not_a_forecast(rng):
    section = study.report(fake_runs(rng, 8, (2.0, 3e4, 0.45), SIZES[:3]), {}, n_bootstrap=10, seed=0)
    assert "needs at least 4" in section["L_of_N"]["error"] and section["forecast"] == []
    assert "no fit" in "\n".join(study.markdown(section))


def test_resolution_specs_share_sizes_images_and_steps():
    specs = resolution_specs(PRESETS["resolutions"], [8, 16])
    grids = {r: SweepSpec.from_dict(spec) for r, spec in specs.items()}
    assert grids[16].seq_len == 769 and grids[16].tokens_per_item == 768 and grids[16].data["resolution"] == 16
    assert grids[8].sizes == grids[16].sizes and grids[8].data["dataset"] == grids[16].data["dataset"] == "photos"
    assert [r.steps for r in grids[8].runs()] == [r.steps for r in grids[16].runs()]
    assert specs[16]["study"]["resolutions"] == [16] and PRESETS["resolutions"]["study"]["resolutions"] == [8, 16]  # the preset untouched


@pytest.mark.parametrize("value", [[], [8, 8], [0], ["16"], 16])
def test_bad_resolutions_are_refused_naming_the_value(value):
    with pytest.raises(SweepError, match=r"study.resolutions=.*distinct positive integers"):
        resolution_specs(PRESETS["resolutions"], value)


def test_a_preset_without_a_resolutions_study_is_refused():
    with pytest.raises(SweepError, match="expected a resolutions study"):
        resolution_specs(PRESETS["image8"])


def test_write_comparison_puts_the_resolutions_side_by_side(tmp_path, rng, monkeypatch):
    runs = {"r8": fake_runs(rng, 8, (2.0, 3e4, 0.45), SIZES), "r16": fake_runs(rng, 16, (1.5, 3e5, 0.35), SIZES)}
    monkeypatch.setattr(sweep_report, "load_runs", lambda sweep_dir: runs[sweep_dir.name])
    comparison = write_comparison([tmp_path / "r16", tmp_path / "r8"], tmp_path / "out", n_bootstrap=10)
    assert [s["resolution"] for s in comparison["resolutions"]] == [8, 16]
    assert comparison["plots"] == ["resolutions_L_of_N.png", "resolutions_L_of_N.svg"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| 8x8 | 192 | 5 |" in text and "| 16x16 | 768 | 5 |" in text and "| 16x16 | 0.01 |" in text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["resolutions"][1]["tokens_per_image"] == 768


def test_committed_resolutions_results_refit_independently():
    """benchmarks/results/resolutions: each resolution's fit, refitted in float64 by scipy from the report's saved per-size losses."""
    comparison = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "resolutions" / "report.json").read_text())
    assert [s["resolution"] for s in comparison["resolutions"]] == [8, 16]
    for section in comparison["resolutions"]:
        t = section["tokens_per_image"]
        assert t == 3 * section["resolution"] ** 2
        token_loss = np.array([s["token_loss"] for s in section["sizes"]])
        np.testing.assert_allclose(token_loss, [s["image_loss"] / t for s in section["sizes"]], rtol=1e-12)
        fit = section["L_of_N"]
        want = independent_fit(np.array([s["N"] for s in section["sizes"]]), token_loss)
        assert [fit["params"][p] for p in ("L_inf", "x0", "alpha")] == pytest.approx(want, rel=1e-4)
        assert fit["per_image"]["params"]["L_inf"] == pytest.approx(t * want[0], rel=1e-4)
