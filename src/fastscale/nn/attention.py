"""`Attention`: multi-head (or grouped-query) causal self-attention as a module, around
fastscale.ops.attention. For users' own models and for fastscale.model.GPT."""

from __future__ import annotations

import torch
from torch import nn


def rotary(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + D/2]) of x [..., T, H, D] by positions[..., T] * inv_freq[i]
    (RoPE, Su et al. 2021, in the rotate-half layout of GPT-NeoX)."""
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [..., T, D/2]
    cos = torch.cat([angles.cos(), angles.cos()], -1)[..., None, :].to(x.dtype)  # [..., T, 1, D]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[..., None, :].to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Causal self-attention: q, k, v projections (k and v with n_kv_head heads: GQA when fewer than
    n_head, MQA at 1), optional rotary positions, fastscale.ops.attention, output projection.

    forward(x [B, T, d_model], *, cu_seqlens=None, max_seqlen=None, positions=None) -> [B, T, d_model].
    With cu_seqlens (int32, offsets into the B*T flattened tokens) the rows are packed documents and no
    token attends across a boundary; positions [B, T] (the index of each token inside its document)
    are then needed for rotary.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_head: int | None = None,
        *,
        bias: bool = True,
        rotary: bool = False,
        rope_theta: float = 10000.0,
        window: int | None = None,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if d_model % n_head:
            raise ValueError(f"Attention: n_head={n_head} must divide d_model={d_model}")
        if n_head % n_kv_head:
            raise ValueError(f"Attention: n_kv_head={n_kv_head} must divide n_head={n_head}")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, d_model // n_head
        if rotary and self.head_dim % 2:
            raise ValueError(f"Attention: rotary needs an even head_dim, got {self.head_dim}")
        self.window, self.dropout, self.backend = window, dropout, backend
        self.qkv = nn.Linear(d_model, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.out = nn.Linear(n_head * self.head_dim, d_model, bias=bias)
        self.rotary = rotary
        if rotary:
            inv_freq = rope_theta ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
            self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, *, cu_seqlens=None, max_seqlen=None, positions=None) -> torch.Tensor:
        from fastscale import ops  # imported late: the op lives in a sibling package

        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim)
        v = v.view(B, T, self.n_kv_head, self.head_dim)
        if self.rotary:
            if positions is None:
                if cu_seqlens is not None:
                    raise ValueError("Attention: rotary positions with cu_seqlens need `positions` (index within each document)")
                positions = torch.arange(T, device=x.device).expand(B, T)
            q, k = rotary(q, positions, self.inv_freq), rotary(k, positions, self.inv_freq)
        if cu_seqlens is None:
            y = ops.attention(q, k, v, causal=True, window=self.window, backend=self.backend)
        else:
            flat = [t.reshape(B * T, t.shape[2], self.head_dim) for t in (q, k, v)]
            y = ops.attention(*flat, causal=True, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, window=self.window, backend=self.backend)
        y = self.out(y.reshape(B, T, self.n_head * self.head_dim))
        if self.dropout and self.training:
            y = nn.functional.dropout(y, self.dropout)
        return y

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, head_dim={self.head_dim}, rotary={self.rotary}, window={self.window}"

