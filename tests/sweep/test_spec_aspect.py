"""Several aspect ratios per size (Kaplan et al. 2020, Figure 5): each size and budget is trained at every
d_model / n_layer the sweep lists, and compute budgets count each shape's own FLOPs."""

import pytest

from fastscale.sweep import PRESETS, SweepError, SweepSpec
from fastscale.train import RunConfig
from fastscale.train.launch import model_config

BASE = {
    "data": {"dataset": "digits"}, "seq_len": 129, "sizes": [4e4, 2e4], "tokens": [3e4, 1e4], "model": {"head_dim": 8},
    "aspect_ratios": [2, 16], "deepspeed": {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2},
}


def built_shape(spec: SweepSpec, run):
    """The shape the trainer builds from the run's config (the trainer's own code path)."""
    return model_config(RunConfig.from_dict(spec.run_config(run, {"dataset": "digits"})), 17)


def test_each_size_and_budget_is_trained_at_every_aspect_ratio():
    spec = SweepSpec.from_dict(BASE)
    runs = spec.runs()
    assert [r.name for r in runs] == ["N2e04_t3e04_a2_s0", "N2e04_t1e04_a2_s0", "N2e04_t3e04_a16_s0", "N2e04_t1e04_a16_s0",
                                      "N4e04_t3e04_a2_s0", "N4e04_t1e04_a2_s0", "N4e04_t3e04_a16_s0", "N4e04_t1e04_a16_s0"]
    for size in (2e4, 4e4):
        deep, wide = (built_shape(spec, next(r for r in runs if r.n_target == size and r.aspect_ratio == a)) for a in (2, 16))
        assert deep.n_layer > wide.n_layer and deep.d_model / deep.n_layer < wide.d_model / wide.n_layer
        assert 0.7 < deep.n_params / size < 1.3 and 0.7 < wide.n_params / size < 1.3  # the same size, another shape


def test_a_compute_budget_counts_each_shapes_own_flops():
    raw = {**BASE, "sizes": [4e4], "compute": [2e11]}
    del raw["tokens"]
    spec = SweepSpec.from_dict(raw)
    per_step = 4 * 129
    for run in spec.runs():
        shape = built_shape(spec, run)
        # Kaplan et al. 2020, section 2.1, written out from the shape: 6N + 6 n_layer n_ctx d_attn per token
        per_token = 6 * 12 * shape.n_layer * shape.d_model**2 + 6 * shape.n_layer * 129 * shape.d_model
        assert shape.d_ff == 4 * shape.d_model and shape.d_attn == shape.d_model
        assert run.steps == round(2e11 / per_token / per_step)
        assert abs(per_token * per_step * run.steps / 2e11 - 1) <= 0.01


def test_without_aspect_ratios_runs_keep_their_names_and_model_options():
    raw = {key: value for key, value in BASE.items() if key != "aspect_ratios"}
    spec = SweepSpec.from_dict(raw)
    assert [r.name for r in spec.runs()][:2] == ["N2e04_t3e04_s0", "N2e04_t1e04_s0"]
    assert all(r.aspect_ratio is None for r in spec.runs())
    assert spec.run_config(spec.runs()[0], {})["model"] == {"params": 2e4, "head_dim": 8}


@pytest.mark.parametrize("change, message", [
    ({"aspect_ratios": [2, 2]}, r"aspect_ratios=\[2, 2\]; expected distinct values"),
    ({"aspect_ratios": [0, 4]}, "aspect_ratios=.*a non-empty list of positive numbers"),
    ({"aspect_ratios": []}, "aspect_ratios=.*a non-empty list of positive numbers"),
    ({"model": {"head_dim": 8, "aspect_ratio": 4}}, r"model.aspect_ratio=4; expected no value when aspect_ratios is given"),
])
def test_bad_aspect_ratios_are_refused_with_the_value(change, message):
    with pytest.raises(SweepError, match=message):
        SweepSpec.from_dict({**BASE, **change})


def test_the_text_preset_trains_every_size_at_two_distinct_shapes():
    spec = SweepSpec.from_dict(PRESETS["text"])
    assert len(spec.aspect_ratios) == 2
    for size in spec.sizes:
        shapes = {(s.n_layer, s.d_model) for s in (built_shape(spec, r) for r in spec.runs() if r.n_target == size)}
        assert len(shapes) == 2, (size, shapes)
