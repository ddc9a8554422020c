"""A pre-norm decoder-only GPT in plain torch.nn, read top to bottom like nanoGPT.

Attention goes through fastscale.nn.Attention (fastscale.ops.attention underneath) and the loss through
fastscale.nn.LinearCrossEntropyLoss (fastscale.ops.linear_cross_entropy), so training never materializes the [tokens, vocab] logits. Rows may
be packed documents: pass cu_seqlens (boundaries in the flattened batch) and positions (index of each
token inside its document); no token then attends across a boundary. Nothing here knows about
DeepSpeed, ZeRO or activation checkpointing: train/ applies them. torch.compile(GPT(config),
fullgraph=True) traces it whole (both ops are torch.library custom ops; tests/model/test_compile.py);
packed rows then need max_seqlen, and attention_backend="triton" (the torch backend splits documents
on the host).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fastscale.nn.attention import Attention
from fastscale.nn.cross_entropy import LinearCrossEntropyLoss

from .config import GPTConfig


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(F.gelu(self.fc(x), approximate="tanh"))
        return F.dropout(x, self.dropout, self.training) if self.dropout else x


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = Attention(
            config.d_model,
            config.n_head,
            config.n_kv_head,
            bias=config.bias,
            rotary=config.positions == "rotary",
            rope_theta=config.rope_theta,
            window=config.window,
            dropout=config.dropout,
            backend=config.attention_backend,
        )
        self.ln_2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cu_seqlens=None, max_seqlen=None, positions=None):
        x = x + self.attn(self.ln_1(x), cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, positions=positions)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.seq_len, config.d_model) if config.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, bias=config.bias)
        # the output projection lives in the loss module that consumes it (what ZeRO-3 needs); tied,
        # it is the token embedding's Parameter
        self.head = LinearCrossEntropyLoss(
            config.d_model, config.vocab_size, weight=self.wte.weight if config.tie_embeddings else None, backend=config.loss_backend
        )
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.proj.weight")):
                nn.init.normal_(p, 0.0, config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, LinearCrossEntropyLoss) and not self.config.tie_embeddings:
            nn.init.normal_(module.weight, 0.0, std)

    def forward(self, idx, targets=None, *, cu_seqlens=None, max_seqlen=None, positions=None):
        """idx [B, T] token ids. With targets [B, T] (ignore_index -100 where there is nothing to
        predict), returns the mean cross-entropy over the predicted tokens; without, the logits
        [B, T, vocab]. cu_seqlens / max_seqlen / positions describe packed rows (see the module doc)."""
        x = self.hidden_states(idx, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, positions=positions)
        if targets is None:
            return x @ self.head.weight.t()  # full logits, for sampling and inspection only
        return self.head(x, targets)

    def hidden_states(self, idx, *, cu_seqlens=None, max_seqlen=None, positions=None):
        """The final layer-normed hidden states [B, T, d_model] that the output projection reads (what a
        classifier fine-tuned on the model reads too)."""
        B, T = idx.shape
        if T > self.config.seq_len:
            raise ValueError(f"GPT: sequence length {T} exceeds config.seq_len={self.config.seq_len}")
        if positions is None and cu_seqlens is None:
            positions = torch.arange(T, device=idx.device).expand(B, T)
        x = self.wte(idx)
        if self.wpe is not None:
            if positions is None:
                raise ValueError("GPT: learned positions with cu_seqlens need `positions` (index within each document)")
            x = x + self.wpe(positions)
        if self.config.dropout:
            x = F.dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, positions=positions)
        return self.ln_f(x)

    def num_params(self, non_embedding: bool = True) -> int:
        """Exact count of trainable scalars; non_embedding drops the token and position embeddings and
        the output projection (Kaplan's convention), which equals config.n_params_exact."""
        params = {id(p): p for p in self.parameters()}  # a tied weight counts once
        if non_embedding:
            for p in (self.wte.weight, self.head.weight, None if self.wpe is None else self.wpe.weight):
                if p is not None:
                    params.pop(id(p), None)
        return sum(p.numel() for p in params.values())

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
        """Sample continuations of idx [B, T] (no KV cache: for small demos)."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.seq_len :]
            logits = self(context)[:, -1, :] / max(temperature, 1e-8)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1, None]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits, -1), 1)], dim=1)
        return idx
