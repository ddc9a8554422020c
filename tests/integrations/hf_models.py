"""Tiny random transformers causal LMs for the integration tests: built from configs in code, no
download. Weights are drawn wider than transformers' default (std 0.02) so attention is far from
uniform and a wrong mask, window or document boundary changes the outputs."""

from __future__ import annotations

import copy

import torch

VOCAB = 97
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
               initializer_range=0.3)


def config(kind: str, **overrides):
    """A tiny config of each supported architecture; sliding windows of 3 tokens where the model has
    them, so sequences of 5+ tokens exercise them."""
    import transformers

    if kind == "llama":
        cfg = transformers.LlamaConfig(**_COMMON)
    elif kind == "mistral":
        cfg = transformers.MistralConfig(**_COMMON, sliding_window=3)
    elif kind == "qwen2":  # layer 1 slides, layer 0 sees everything
        cfg = transformers.Qwen2Config(**_COMMON, use_sliding_window=True, sliding_window=3, max_window_layers=1)
    elif kind == "qwen3":
        cfg = transformers.Qwen3Config(**_COMMON, use_sliding_window=True, sliding_window=3, max_window_layers=1)
    elif kind == "gemma2":  # layer 0 slides, layer 1 sees everything; final logits softcapped
        cfg = transformers.Gemma2Config(**_COMMON, sliding_window=3, query_pre_attn_scalar=8,
                                        attn_logit_softcapping=None, final_logit_softcapping=3.0)
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, initializer_range=0.3)
    else:
        raise ValueError(kind)
    for name, value in overrides.items():
        setattr(cfg, name, value)
    return cfg


KINDS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2")


def model_pair(cfg, reference: str, candidate: str = "fastscale"):
    """(stock model with attn_implementation=reference, a copy with candidate), same weights, float32."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=reference, dtype=torch.float32)
    other = copy.deepcopy(ref)
    other.set_attn_implementation(candidate)
    return ref, other


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_close(actual, expected, name="", relative=1e-4):
    """float32 on CPU: the kernel path (SDPA or a per-document loop) and stock differ by reassociation
    only, so every element within 1e-4 of the tensor's largest magnitude (a wrong mask, window or
    document boundary is off by O(1) of it)."""
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=relative * max(scale, 1e-6),
                               msg=lambda m: f"{name}: {m} (scale {scale:.3g})")


def assert_same_gradients(expected, actual):
    ref, got = gradients(expected), gradients(actual)
    assert ref.keys() == got.keys() and ref
    for name in ref:
        assert_close(got[name], ref[name], name)
