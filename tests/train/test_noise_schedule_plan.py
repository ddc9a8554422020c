"""Gradient noise scale on a synthetic problem with a known answer, the LR schedule against its closed
form, config checks and the memory planner."""

import math

import numpy as np
import pytest

from fastscale.model import GPTConfig, preset
from fastscale.train import ConfigError, GradientNoiseScale, RunConfig, check_deepspeed_config, lr_multiplier, resolve_batch, two_batch_estimates
from fastscale.train.plan import CHOICES, Choice, deepspeed_config, estimate, parse_bytes, plan


def quadratic_problem(rng, dim=40, b_true=250.0):
    """Per-example loss 0.5 * |theta - x|^2 with x ~ N(mu, diag(var)): the per-example gradient is
    theta - x, so the true gradient is G = theta - mu and the per-example covariance is diag(var).
    theta is placed so that B_simple = sum(var) / |G|^2 = b_true."""
    var = rng.uniform(0.5, 2.0, dim)
    direction = rng.normal(size=dim)
    G = direction / np.linalg.norm(direction) * math.sqrt(var.sum() / b_true)
    return var, G


def batch_gradient(rng, var, G, batch):
    x_minus_mu = rng.normal(size=(batch, len(var))) * np.sqrt(var)
    return (G - x_minus_mu).mean(0)  # mean of per-example gradients theta - x


def test_two_batch_estimates_are_unbiased():
    rng = np.random.default_rng(0)
    var, G = quadratic_problem(rng)
    g2s, traces = [], []
    for _ in range(4000):
        small, big = batch_gradient(rng, var, G, 8), batch_gradient(rng, var, G, 64)
        g2, trace = two_batch_estimates(small @ small, big @ big, 8, 64)
        g2s.append(g2)
        traces.append(trace)
    assert np.mean(traces) == pytest.approx(var.sum(), rel=0.03)
    assert np.mean(g2s) == pytest.approx(G @ G, rel=0.05)


def test_ema_noise_scale_recovers_the_known_value():
    """Like the trainer with 8 ranks: each rank's batch of 64 is a small batch, their mean the big one."""
    rng = np.random.default_rng(1)
    for b_true in (30.0, 1000.0):
        var, G = quadratic_problem(rng, b_true=b_true)
        noise = GradientNoiseScale(ema=0.998)
        for _ in range(2500):
            smalls = np.stack([batch_gradient(rng, var, G, 64) for _ in range(8)])
            big = smalls.mean(0)
            noise.update(float((smalls**2).sum(1).mean()), float(big @ big), 64, 512)
        assert noise.b_simple == pytest.approx(b_true, rel=0.1)


def test_noise_scale_state_round_trip_and_errors():
    noise = GradientNoiseScale(0.9)
    assert noise.b_simple is None
    noise.update(2.0, 1.0, 1, 4)
    other = GradientNoiseScale(0.5)
    other.load_state_dict(noise.state_dict())
    assert other.b_simple == noise.b_simple and other.ema == 0.9
    with pytest.raises(ValueError, match="b_small=4"):
        two_batch_estimates(1.0, 1.0, 4, 4)


def test_lr_schedule_closed_form():
    kw = dict(total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, **kw) == pytest.approx(0.1)
    assert lr_multiplier(9, **kw) == pytest.approx(1.0)
    assert lr_multiplier(10, **kw) == pytest.approx(1.0)
    assert lr_multiplier(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert lr_multiplier(110, **kw) == pytest.approx(0.1)
    assert lr_multiplier(500, **kw) == pytest.approx(0.1)  # held at the floor
    assert lr_multiplier(35, decay="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.75)
    assert lr_multiplier(50, decay="constant", **kw) == 1.0


def test_batch_resolution_like_deepspeed():
    assert resolve_batch({"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2}, 2)["gradient_accumulation_steps"] == 4
    assert resolve_batch({"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 2}, 2)["train_batch_size"] == 12
    assert resolve_batch({"train_batch_size": 8}, 2)["train_micro_batch_size_per_gpu"] == 4
    with pytest.raises(ConfigError, match=r"train_batch_size=7 is not divisible by train_micro_batch_size_per_gpu=2 x world_size=2"):
        resolve_batch({"train_batch_size": 7, "train_micro_batch_size_per_gpu": 2}, 2)
    with pytest.raises(ConfigError, match=r"train_batch_size=8 must equal .* = 12"):
        resolve_batch({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3}, 2)


@pytest.mark.parametrize(
    "ds, match",
    [
        ({"train_batch_size": 4, "fp16": {"enabled": True}}, "fp16.enabled=true is not supported on CPU"),
        ({"train_batch_size": 4, "zero_optimization": {"stage": 4}}, "zero_optimization.stage=4"),
        ({"train_batch_size": 4, "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, "offload_param needs stage 3"),
        ({"train_batch_size": 4, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "needs an \"optimizer\" section"),
        ({"train_batch_size": 4, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}, "nvme_path"),
        ({"gradient_accumulation_steps": 2}, "set train_batch_size or train_micro_batch_size_per_gpu"),
    ],
)
def test_bad_deepspeed_configs(ds, match):
    with pytest.raises(ConfigError, match=match):
        check_deepspeed_config(ds, 2, device_type="cpu")


def test_bad_run_configs():
    good = {"model": {"n_layer": 1, "d_model": 32, "n_head": 2}, "data": {"dataset": "digits"}, "seq_len": 64}
    RunConfig.from_dict(good)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lr'\]"):
        RunConfig.from_dict({**good, "lr": 1})
    with pytest.raises(ConfigError, match="unknown train key"):
        RunConfig.from_dict({**good, "train": {"stepz": 3}})
    with pytest.raises(ConfigError, match="steps=0"):
        RunConfig.from_dict({**good, "train": {"steps": 0}})
    with pytest.raises(ConfigError, match="decay='exp'"):
        RunConfig.from_dict({**good, "train": {"decay": "exp"}})
    with pytest.raises(ConfigError, match="missing key 'seq_len'"):
        RunConfig.from_dict({k: v for k, v in good.items() if k != "seq_len"})


def test_planner_hand_count_of_model_states():
    config = GPTConfig(vocab_size=256, seq_len=128, n_layer=4, d_model=256, n_head=4)
    P = config.n_params_total
    zero0 = estimate(config, Choice(0), world_size=4, bf16=True)["components"]
    # ZeRO paper, K = 12, plus DeepSpeed's fp32 gradients beside the master weights
    assert (zero0["params"], zero0["grads"], zero0["optimizer"], zero0["grads_fp32"]) == (2 * P, 2 * P, 12 * P, 4 * P)
    zero1 = estimate(config, Choice(1), world_size=4)["components"]
    assert (zero1["optimizer"], zero1["grads_fp32"], zero1["grads"]) == (3 * P, P, 2 * P)
    zero3 = estimate(config, Choice(3), world_size=4)["components"]
    assert (zero3["params"], zero3["grads"], zero3["optimizer"]) == (P // 2, P // 2, 3 * P)
    fp32 = estimate(config, Choice(0), bf16=False)["components"]
    assert fp32["params"] + fp32["grads"] + fp32["optimizer"] + fp32["grads_fp32"] == 16 * P
    # activations: Korthikanti's 34 s b h + 5 a s^2 b per layer in 16 bit
    s, b, h, a = 128, 1, 256, 4
    assert zero0["activations"] == int(4 * (s * b * h * 34 + 5 * a * s * s * b))
    ckpt = estimate(config, Choice(0, checkpointing=True))["components"]["activations"]
    assert ckpt == int(4 * 2 * s * b * h + s * b * h * 34 + 5 * a * s * s * b)


def test_planner_picks_the_fastest_choice_that_fits():
    big = preset(1.3e9, seq_len=1024)
    # 1.3e9 x 20 B of model states = 24 GiB: on a 16 GiB GPU only offloading the optimizer fits
    rows = plan(big, memory=parse_bytes("16GiB"), gpus=1, host=parse_bytes("256GiB"))
    assert next(r for r in rows if r["fits"])["choice"] == Choice(2, "cpu", checkpointing=True)
    assert not any(r["fits"] for r in rows if r["choice"].offload_optimizer == "none")
    # 8 x 80 GiB: plain data parallelism fits, and it is the fastest
    rows = plan(big, memory=parse_bytes("80GiB"), gpus=8, host=parse_bytes("1TiB"))
    assert next(r for r in rows if r["fits"])["choice"] == Choice(0)
    # on this kind of machine (no GPU, 24 GiB) 3e9 parameters only fit with their states on disk
    rows = plan(preset(3e9, seq_len=64), memory=0, gpus=0, host=parse_bytes("24GiB"))
    pick = next(r for r in rows if r["fits"])["choice"]
    assert pick.stage == 3 and pick.offload_optimizer == "nvme"
    assert not any(r["fits"] for r in rows if r["choice"].offload_optimizer == "none")


def test_planner_writes_a_valid_deepspeed_config():
    for choice in CHOICES:
        ds = deepspeed_config(choice, micro_batch=2, nvme_path="/tmp/x")
        check_deepspeed_config(ds, 1, device_type="cpu")
    assert parse_bytes("24GiB") == 24 * 2**30 and parse_bytes("80GB") == 80e9
    with pytest.raises(ValueError, match="memory='lots'"):
        parse_bytes("lots")
