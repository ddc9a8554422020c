"""Shapes, parameter counts and FLOP counts of the GPT family, against hand counts. The ladder up to
1e10 is checked without allocating a tensor."""

import math

import pytest
import torch

from fastscale.model import LADDER, GPT, GPTConfig, mfu, peak_flops, preset
from fastscale.units import flops_to_pf_days


def hand_count(L, d, V, T, ff, bias=True, learned=True, tied=False, kv=None):
    """Every parameter of the model written out by hand, split as (non-embedding, embedding)."""
    kv = d if kv is None else kv
    per_layer = (
        d * (d + 2 * kv) + (d + 2 * kv) * bias  # qkv
        + d * d + d * bias  # attention output
        + d * ff + ff * bias  # fc
        + ff * d + d * bias  # proj
        + 2 * (d + d * bias)  # two LayerNorms
    )
    non_embedding = L * per_layer + d + d * bias
    embedding = V * d + (T * d if learned else 0) + (0 if tied else V * d)
    return non_embedding, embedding


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(bias=False, positions="rotary", tie_embeddings=True),
        dict(n_kv_head=2),
        dict(n_kv_head=1, d_ff=40),
    ],
)
def test_exact_counts_match_hand_count_and_module(options):
    config = GPTConfig(vocab_size=37, seq_len=16, n_layer=3, d_model=32, n_head=4, **options)
    kv = 32 // 4 * config.n_kv_head
    non_emb, emb = hand_count(3, 32, 37, 16, config.d_ff, config.bias, config.positions == "learned", config.tie_embeddings, kv)
    assert config.n_params_exact == non_emb
    assert config.n_embedding_params == emb
    model = GPT(config)
    assert model.num_params() == non_emb
    assert model.num_params(non_embedding=False) == non_emb + emb == sum(p.numel() for p in model.parameters())
    # Kaplan's approximation: only the weight matrices
    assert config.n_params == 3 * (32 * (32 + 2 * kv) + 32 * 32 + 2 * 32 * config.d_ff)


def test_kaplan_n_is_12_l_d_squared_for_mha():
    config = GPTConfig(vocab_size=50257, seq_len=1024, n_layer=12, d_model=768, n_head=12)
    assert config.n_params == 12 * 12 * 768**2 == 84_934_656  # GPT-2 small's non-embedding N


def test_flops_per_token_hand_count():
    config = GPTConfig(vocab_size=100, seq_len=64, n_layer=2, d_model=32, n_head=4)
    n = 12 * 2 * 32**2
    # forward: 2 FLOPs per weight (multiply + add) and 2 * n_layer * n_ctx * d_attn for QK^T and AV;
    # backward twice the forward
    assert config.flops_per_token() == 3 * (2 * n + 2 * 2 * 64 * 32) == 6 * n + 6 * 2 * 64 * 32
    assert config.flops_per_token(context=10) == 6 * n + 6 * 2 * 10 * 32
    assert flops_to_pf_days(8.64e19) == pytest.approx(1.0)


def test_forward_flops_agree_with_counted_matmuls():
    """Count the multiply-adds of the weight matmuls of one forward with torch's FLOP counter: they must
    be 2N per token (the attention-score matmuls are separate and counted by the attention term)."""
    from torch.utils.flop_counter import FlopCounterMode

    config = GPTConfig(vocab_size=50, seq_len=16, n_layer=2, d_model=32, n_head=4, bias=False)
    model = GPT(config)
    linear_flops = 0
    idx = torch.randint(0, 50, (2, 16))
    with FlopCounterMode(display=False) as counter:
        for block in model.blocks:
            x = torch.randn(2, 16, 32)
            block.attn.qkv(x), block.attn.out(x), block.mlp.proj(block.mlp.fc(x))
    linear_flops = counter.get_total_flops()
    assert linear_flops == 2 * config.n_params * idx.numel()


@pytest.mark.parametrize("n", LADDER)
def test_preset_ladder_shapes(n):
    config = preset(n)
    assert config.n_params == 12 * config.n_layer * config.d_model**2
    assert abs(math.log(config.n_params / n)) < math.log(1.1), (n, config.n_params)
    assert 16 <= config.d_model / config.n_layer <= 256
    assert config.d_model % config.n_head == 0 and config.head_dim in (32, 64, 128)


def test_ladder_is_monotone_and_spans_1e5_to_1e10():
    sizes = [preset(n).n_params for n in LADDER]
    assert sizes == sorted(sizes) and sizes[0] < 1.1e5 and sizes[-1] > 0.9e10


def test_from_params_holds_aspect_ratio():
    for aspect in (32, 64, 128):
        config = GPTConfig.from_params(1e9, 256, 2048, aspect_ratio=aspect)
        assert 0.75 < (config.d_model / config.n_layer) / aspect < 1.33
        assert abs(config.n_params / 1e9 - 1) < 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_head=5), "n_head=5"),
        (dict(n_kv_head=3), "n_kv_head=3"),
        (dict(positions="alibi"), "positions='alibi'"),
        (dict(n_layer=0), "n_layer=0"),
        (dict(dropout=1.5), "dropout=1.5"),
    ],
)
def test_bad_config_names_the_argument(kwargs, match):
    base = dict(vocab_size=10, seq_len=8, n_layer=1, d_model=32, n_head=4)
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**base, **kwargs})


def test_from_params_rejects_bad_budget():
    with pytest.raises(ValueError, match="n=-1"):
        GPTConfig.from_params(-1, 10, 8)
    with pytest.raises(ValueError, match="head_dim"):
        GPTConfig.from_params(1000, 10, 8)


def test_config_round_trips_through_dict():
    config = preset(1e6, positions="rotary")
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown field"):
        GPTConfig.from_dict({**config.to_dict(), "n_layers": 3})


def test_peak_and_mfu():
    peak, description = peak_flops("cpu")
    assert peak > 0 and "CPU estimate" in description
    assert mfu(peak / 4, peak) == pytest.approx(0.25)
    assert mfu(1.0, float("nan")) is None
