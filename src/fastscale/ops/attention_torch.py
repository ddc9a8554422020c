"""The torch backend of fastscale.ops.attention: the CPU path and the readable reference.

Batched input goes to torch's scaled_dot_product_attention; packed input ([total_tokens, H, D] with
cu_seqlens) is a plain loop over documents, each one a batch of one. A sliding window becomes an
explicit boolean mask, since SDPA has no window argument. Autograd differentiates all of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_mask(length: int, window: int, causal: bool, device) -> torch.Tensor:
    """[length, length] bool, True where query i may see key j: i - window < j (and j <= i when
    causal, j < i + window when not): each query sees at most `window` keys on its left, itself included."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    visible = i - j < window
    return visible & (j <= i) if causal else visible & (j - i < window)


def _sdpa(q, k, v, causal: bool, window: int | None, scale: float | None) -> torch.Tensor:
    """q [B, T, Hq, D], k/v [B, T, Hkv, D] -> [B, T, Hq, D] (a transposed view)."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # SDPA wants [B, H, T, D]
    mask = None if window is None else window_mask(q.shape[2], window, causal, q.device)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.transpose(1, 2)


def attention_dense(q, k, v, *, causal: bool, window: int | None, scale: float | None) -> torch.Tensor:
    """q [B, T, Hq, D], k/v [B, T, Hkv, D] -> [B, T, Hq, D]."""
    return _sdpa(q, k, v, causal, window, scale).contiguous()


def attention_packed(q, k, v, cu_seqlens: torch.Tensor, *, causal: bool, window: int | None, scale: float | None) -> torch.Tensor:
    """q [total, Hq, D], k/v [total, Hkv, D], documents q[cu_seqlens[i]:cu_seqlens[i+1]] -> [total, Hq, D]."""
    # split, not slicing: its backward writes each gradient once, where a slice's writes a full-size zero tensor.
    lengths = cu_seqlens.diff().tolist()
    pieces = [
        _sdpa(q_doc[None], k_doc[None], v_doc[None], causal, window, scale)[0]
        for q_doc, k_doc, v_doc in zip(q.split(lengths), k.split(lengths), v.split(lengths))
        if q_doc.shape[0]  # empty documents hold no tokens
    ]
    return torch.cat(pieces)


def unsupported(q: torch.Tensor) -> str | None:
    """The reference serves every dtype the op accepts, on every device."""
    return None


def attention(q, k, v, *, causal: bool, cu_seqlens, max_seqlen: int | None, window: int | None,
              scale: float | None) -> torch.Tensor:
    """The backend contract (ops/attention.py); max_seqlen goes unused: the loop reads each length."""
    if cu_seqlens is None:
        return attention_dense(q, k, v, causal=causal, window=window, scale=scale)
    return attention_packed(q, k, v, cu_seqlens, causal=causal, window=window, scale=scale)
