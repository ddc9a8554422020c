"""The sweep grid and the results index (no training)."""

import json
import math

import pytest

from fastscale.sweep import PRESETS, ResultsIndex, SweepError, SweepSpec
from fastscale.sweep.spec import kaplan_lr

BASE = {
    "data": {"dataset": "digits"}, "seq_len": 193, "sizes": [1e4, 3e3], "tokens": [3e4], "seeds": [0, 1],
    "deepspeed": {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2},
}


def test_grid_smallest_first_with_steps_from_the_token_budget():
    runs = SweepSpec.from_dict(BASE).runs()
    assert [r.name for r in runs] == ["N3e03_t3e04_s0", "N3e03_t3e04_s1", "N1e04_t3e04_s0", "N1e04_t3e04_s1"]
    assert all(r.steps == 39 for r in runs)  # 30,000 tokens / (4 rows x 193 tokens) = 38.9
    assert runs[0].lr == pytest.approx(0.003239 - 0.0001395 * math.log(3e3))


def test_compute_budget_gives_the_tokens_at_which_the_built_shapes_flops_reach_it():
    raw = {**BASE, "compute": [6e9], "sizes": [1e4], "model": {"head_dim": 8}}
    del raw["tokens"]
    (run, _) = SweepSpec.from_dict(raw).runs()
    # from_params(1e4, head_dim=8): 1 layer of d_model 32 (N = 12 x 32^2 = 12,288), flops_per_token =
    # 6 x 12,288 + 6 x 1 x 193 x 32 = 110,784 (1.85 x 6N_target): D = 6e9 / 110,784 = 54,159 tokens,
    # 70.15 steps of 772
    assert run.tokens == pytest.approx(6e9 / 110784, rel=1e-12) and run.compute == 6e9
    assert run.steps == 70  # C counted: 70 x 772 x 110,784 = 5.987e9, -0.22%; the old rule C = 6 N_target D gave 130 steps: 1.11e10, 1.85x the budget


def test_run_config_is_a_trainer_config():
    spec = SweepSpec.from_dict({**BASE, "model": {"head_dim": 8}, "lr": 2e-3, "train": {"eval_interval": 5}})
    config = spec.run_config(spec.runs()[1], {"path": "/data"})
    assert config == {"model": {"params": 3e3, "head_dim": 8}, "data": {"path": "/data"}, "seq_len": 193,
                      "train": {"eval_interval": 5, "steps": 39, "seed": 1, "lr": 2e-3}}
    from fastscale.train.config import RunConfig

    RunConfig.from_dict(config)  # the trainer accepts it


@pytest.mark.parametrize(
    "change, message",
    [
        ({"compute": [1e12]}, "exactly one of the two budgets"),
        ({"sizes": [1e4, -1]}, "sizes="),
        ({"train": {"steps": 10}}, "train.steps"),
        ({"seeds": []}, "seeds="),
        ({"lr": "fast"}, "lr='fast'"),
        ({"colour": 1}, "unknown keys"),
    ],
)
def test_bad_sweeps_are_refused_with_the_field_named(change, message):
    with pytest.raises(SweepError, match=message):
        SweepSpec.from_dict({**BASE, **change}).runs()


def test_unknown_preset_or_missing_file():
    with pytest.raises(SweepError, match="neither a preset"):
        SweepSpec.load("no-such-preset")


def test_image8_preset_has_at_least_five_sizes_and_lr_from_kaplan():
    spec = SweepSpec.load("image8")
    assert len(spec.sizes) >= 5 and spec.tokens_per_item == 8 * 8 * 3
    assert PRESETS["image8"]["lr"] == "kaplan" and kaplan_lr(1e6) < kaplan_lr(1e4)


def test_index_round_trip_keeps_states_and_leaves_no_temporary_files(tmp_path):
    index = ResultsIndex(tmp_path / "results.json")
    index.add("a", n_target=1e4)
    index.add("b", n_target=2e4)
    index.update("a", "running", attempts=1, run_dir="runs/a")
    summary = {"tokens": 1000, "flops": 6e7, "final_loss": 2.5, "final_eval_loss": None, "tokens_per_s": 10.0}
    index.update("a", "done", summary=summary)
    index.add("a", n_target=1e4)  # a rerun registers the grid again: a known run keeps its state
    again = ResultsIndex(tmp_path / "results.json")
    assert again.runs["a"]["state"] == "done" and again.runs["a"]["summary"] == summary
    assert again.state("b") == "pending" and again.count("done") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.json.prev"]  # and the version before the last write
    assert json.loads((tmp_path / "results.json.prev").read_text())["runs"]["a"]["state"] == "running"
    assert json.loads((tmp_path / "results.json").read_text())["runs"]["a"]["attempts"] == 1


def test_index_refuses_unknown_states_and_runs(tmp_path):
    index = ResultsIndex(tmp_path / "results.json")
    index.add("a")
    with pytest.raises(ValueError, match="state='finished'"):
        index.update("a", "finished")
    with pytest.raises(KeyError, match="'zz'"):
        index.update("zz", "done")


def test_a_config_the_trainer_refuses_stops_the_sweep_before_any_work(tmp_path):
    from fastscale.sweep import run_sweep

    spec = SweepSpec.from_dict({**BASE, "train": {"warmup": 3}})
    with pytest.raises(SweepError, match=r"unknown train key\(s\) \['warmup'\]"):
        run_sweep(spec, tmp_path / "out")
    spec = SweepSpec.from_dict({**BASE, "deepspeed": {"train_batch_size": 5, "train_micro_batch_size_per_gpu": 2}})
    with pytest.raises(SweepError, match="train_batch_size=5 is not divisible"):
        run_sweep(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "data").exists() and not (tmp_path / "out" / "results.json").exists()


def test_documents_longer_than_seq_len_stop_the_sweep_before_any_run(tmp_path):
    from fastscale.sweep import run_sweep

    spec = SweepSpec.from_dict({**BASE, "seq_len": 150, "packing": "documents"})  # digits: 193 tokens each
    with pytest.raises(SweepError, match=r"seq_len=150, packing='documents': .*193"):
        run_sweep(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "runs").exists() and not (tmp_path / "out" / "results.json").exists()


def test_a_different_sweep_in_the_same_directory_is_refused(tmp_path):
    from fastscale.sweep.runner import _check_same_sweep

    _check_same_sweep(tmp_path, SweepSpec.from_dict(BASE))
    _check_same_sweep(tmp_path, SweepSpec.from_dict(BASE))  # the same sweep again: a resume
    with pytest.raises(SweepError, match="holds a different sweep"):
        _check_same_sweep(tmp_path, SweepSpec.from_dict({**BASE, "sizes": [1e4]}))


@pytest.mark.parametrize("kind, data", [("math", {"dataset": "digits"}), ("classify", {"dataset": "captions"}), ("multimodal", {"dataset": "images"})])
def test_a_study_on_data_it_cannot_measure_is_refused_at_load(kind, data):
    with pytest.raises(SweepError, match=rf"data={data!r}.*for a {kind} study".replace("{", r"\{").replace("}", r"\}")):
        SweepSpec.from_dict({**BASE, "data": data, "study": {"kind": kind}})


def test_a_prepared_path_is_checked_by_the_domain_it_records(tmp_path):
    from fastscale.data import prepare

    prepare("digits", tmp_path / "digits")
    SweepSpec.from_dict({**BASE, "data": {"path": str(tmp_path / "digits")}, "study": {"kind": "classify"}})
    with pytest.raises(SweepError, match="for a math study"):
        SweepSpec.from_dict({**BASE, "data": {"path": str(tmp_path / "digits")}, "study": {"kind": "math"}})
