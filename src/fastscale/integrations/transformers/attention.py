"""The "fastscale" attention implementation of Hugging Face transformers.

transformers looks an attention implementation up twice per forward: its mask function once per
model forward (AttentionMaskInterface, by config._attn_implementation) and its attention function
once per layer (AttentionInterface). Both are registered here under "fastscale".

The mask function returns what fastscale.ops.attention can serve from shapes and flags alone, when
there is no cache offset and the model's pattern is its plain causal or sliding-window one: None
for a batch without padding, and the [B, T] padding mask itself when each row's real tokens are one
contiguous run (left or right padding). Each layer then calls the kernel with
causal=module.is_causal, window=sliding_window (the model passes its own: transformers' sliding
masks and the kernel both let query i see key j when i - W < j <= i) and the GQA heads as they are:
- a padded batch runs as packed documents of its real tokens (cu_seqlens from the rows' lengths),
  padded positions' outputs 0, as transformers' flash-attention path unpads;
- a padding-free batch is packed where position_ids do not step by one (as transformers' own
  packed-sequence masks read them), so a batch from DataCollatorWithFlattening never attends across
  documents; a collator's precomputed cu_seq_lens_q / max_length_q are used as given.
What is derived from position_ids or the padding mask is computed on the first layer of a forward
and reused by the others.

Everything else gets the exact mask transformers' SDPA path would build (a KV cache, padding inside
a row, custom mask patterns) and runs transformers' SDPA function, or the model's own eager
attention where SDPA cannot (softcapped scores, returned attention weights). Each reason is logged
once.
"""

from __future__ import annotations

import logging
import sys
import weakref

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from fastscale.ops import attention as fused_attention

log = logging.getLogger(__name__)

NAME = "fastscale"
_warned: set[str] = set()


def register() -> None:
    """Registers "fastscale" with transformers' attention and mask interfaces (idempotent; runs when
    fastscale.integrations.transformers is imported)."""
    AttentionInterface.register(NAME, fastscale_attention_forward)
    AttentionMaskInterface.register(NAME, fastscale_mask)


# ---------------------------------------------------------------------------------------------- mask


def fastscale_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                   attention_mask=None, use_vmap=False, **kwargs):
    """What the layers receive as attention_mask: None or the [B, T] padding mask when the kernel
    can serve the batch (see the module docstring), else the boolean [B, 1, q, kv] mask of
    transformers' SDPA path. create_causal_mask sets use_vmap exactly when the model adds its own
    pattern (or_mask_function / and_mask_function) to the causal one."""
    plain = not use_vmap and q_length == kv_length and _is_zero(q_offset) and _is_zero(kv_offset)
    if plain and (attention_mask is None or attention_mask.shape[-1] == kv_length):
        if attention_mask is None or bool(attention_mask.all()):
            return None
        if _one_run_per_row(attention_mask):
            return attention_mask
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                     use_vmap=use_vmap, **kwargs)


def _is_zero(offset) -> bool:
    return int(offset) == 0


def _one_run_per_row(padding: torch.Tensor) -> bool:
    """Whether each row's real tokens are contiguous (at most one False -> True step), with at least
    one real token in the batch."""
    starts = padding & ~torch.nn.functional.pad(padding, (1, 0))[:, :-1]
    return bool((starts.sum(-1) <= 1).all()) and bool(starts.any())


# ---------------------------------------------------------------------------------------------- attention


def fastscale_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                sliding_window=None, softcap=None, is_causal=None, **kwargs):
    """transformers' attention-function contract: query [B, Hq, Tq, D], key/value [B, Hkv, Tk, D] ->
    ([B, Tq, Hq, D], None)."""
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    reason = _fallback_reason(query, key, value, attention_mask, dropout, softcap, kwargs)
    if reason is not None:
        _warn_once(reason)
        return _fallback(module, query, key, value, attention_mask, dropout, scaling, sliding_window, softcap,
                         causal, kwargs)
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # the kernel's [B, T, H, D]
    if attention_mask is not None:
        return _unpadded(q, k, v, attention_mask, causal, sliding_window, scaling), None
    documents = _documents(kwargs, q.shape[0], q.shape[1], q.device)
    if documents is None:
        out = fused_attention(q, k, v, causal=causal, window=sliding_window, scale=scaling)
        return out, None
    cu_seqlens, max_seqlen = documents
    packed = [x.reshape(-1, *x.shape[2:]) for x in (q, k, v)]
    out = fused_attention(*packed, causal=causal, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                          window=sliding_window, scale=scaling)
    return out.view(q.shape), None


def _fallback_reason(query, key, value, attention_mask, dropout, softcap, kwargs) -> str | None:
    if kwargs.get("output_attentions"):
        return "output_attentions=True (the kernel returns no attention weights): eager attention"
    if softcap is not None:
        return "softcapped attention scores (the kernel has no softcap): the model's eager attention"
    if dropout:
        return f"attention dropout {dropout} in training (the kernel has no dropout): SDPA"
    if attention_mask is not None and attention_mask.ndim != 2:
        return "a KV cache, padding in the middle of a row or a custom mask pattern: SDPA with transformers' mask"
    if key.shape != value.shape or query.shape[-1] != key.shape[-1] or query.shape[2] != key.shape[2]:
        return f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)} (the kernel " \
               "needs one head dim and as many keys as queries): SDPA"
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and position_ids.ndim != 2:
        return f"position_ids with {position_ids.ndim} dimensions (multimodal rotary positions): SDPA"
    return None


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("fastscale attention falls back for %s", reason)


def _fallback(module, query, key, value, attention_mask, dropout, scaling, sliding_window, softcap, causal, kwargs):
    """transformers' SDPA, or the model's eager attention for softcap and returned weights, with an
    explicit mask: transformers' when it built one, else the causal / window / document mask that
    the kernel would have applied."""
    if attention_mask is None or attention_mask.ndim == 2:  # packed documents only without padding, as transformers
        documents = _document_ids(kwargs, query.shape[0], key.shape[2]) if attention_mask is None else None
        attention_mask = _dense_mask(query.shape[0], query.shape[2], key.shape[2], causal, sliding_window,
                                     documents, attention_mask, query.device)
    if softcap is None and not kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=False, **kwargs)
    eager = sys.modules[type(module).__module__].eager_attention_forward
    additive = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
    additive.masked_fill_(~attention_mask, torch.finfo(query.dtype).min)
    return eager(module, query, key, value, additive, dropout=dropout, scaling=scaling, softcap=softcap, **kwargs)


def _dense_mask(batch, q_len, kv_len, causal, window, document_ids, padding, device) -> torch.Tensor:
    """[B, 1, q_len, kv_len] bool, True where a query sees a key; the queries are the last q_len keys.
    A padded query that sees no key sees itself, so its (unused) output stays finite."""
    i = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    visible = (j <= i) if causal else torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if window is not None:
        visible = visible & (i - j < window) & (causal | (j - i < window))
    visible = visible.expand(batch, 1, q_len, kv_len)
    if document_ids is not None:
        same = document_ids[:, kv_len - q_len:, None] == document_ids[:, None, :]
        visible = visible & same[:, None]
    if padding is not None:
        visible = visible & padding[:, None, None, :].bool()
        blind = ~visible.any(-1, keepdim=True)
        visible = visible | (blind & (i == j))
    return visible


# ---------------------------------------------------------------------------------------------- documents


class _PerForward:
    """The last result of a function of one tensor: one model forward hands the same position_ids
    and padding mask to every layer, so what is derived from them is computed on the first layer
    only. The tensor is held by weak reference and the key includes its version and the batch size,
    so a new batch (or an in-place write) recomputes."""

    def __init__(self, compute):
        self.compute = compute
        self.key = None
        self.value = None

    def get(self, tensor: torch.Tensor, batch: int):
        key = (tensor._version, batch)
        if self.key is not None and self.key[0]() is tensor and self.key[1:] == key:
            return self.value
        self.value = self.compute(tensor, batch)
        self.key = (weakref.ref(tensor), *key)
        return self.value


def _document_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True at every row start and wherever the position does not step by one."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids.diff(dim=-1) != 1
    return starts


def _starts_to_offsets(starts: torch.Tensor):
    """(cu_seqlens int32, max_seqlen) of the flattened batch, or None when every row is one document."""
    if not starts[:, 1:].any():
        return None
    begins = starts.reshape(-1).nonzero().squeeze(1)
    cu_seqlens = torch.cat([begins, begins.new_tensor([starts.numel()])]).to(torch.int32)
    return cu_seqlens, int(cu_seqlens.diff().max())


def _documents(kwargs, batch: int, length: int, device):
    """(cu_seqlens, max_seqlen) of a packed batch, or None when it holds one document per row."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is not None and kwargs.get("max_length_q") is not None:
        if kwargs.get("cu_seq_lens_k") is not None and not torch.equal(kwargs["cu_seq_lens_k"], cu_seqlens):
            raise ValueError("cu_seq_lens_k differs from cu_seq_lens_q: fastscale attention serves self-attention "
                             "over packed documents, where both are the same offsets")
        return cu_seqlens.to(device=device, dtype=torch.int32), int(kwargs["max_length_q"])
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        return None
    if position_ids.shape[-1] != length:
        raise ValueError(f"position_ids: shape {tuple(position_ids.shape)}; expected [batch, {length}], one position "
                         "per query token")
    return _documents_cache.get(position_ids, batch)


def _offsets_of_positions(position_ids: torch.Tensor, batch: int):
    return _starts_to_offsets(_document_starts(position_ids.expand(batch, -1)))


def _real_tokens(padding: torch.Tensor, batch: int):
    """(indices of the real tokens in the flattened [B * T] batch, cu_seqlens, max_seqlen): each row's
    one run of real tokens is a document."""
    lengths = padding.sum(-1)
    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    return padding.reshape(-1).nonzero().squeeze(1), cu_seqlens, int(lengths.max())


_documents_cache = _PerForward(_offsets_of_positions)
_padding_cache = _PerForward(_real_tokens)


def _unpadded(q, k, v, padding, causal, window, scale):
    """Attention of the real tokens of a left- or right-padded batch [B, T, H, D], as packed
    documents; padded positions get 0."""
    batch, length = q.shape[:2]
    tokens, cu_seqlens, max_seqlen = _padding_cache.get(padding, batch)
    packed = [x.reshape(batch * length, *x.shape[2:])[tokens] for x in (q, k, v)]
    out = fused_attention(*packed, causal=causal, cu_seqlens=cu_seqlens, max_seqlen=max(max_seqlen, 1),
                          window=window, scale=scale)
    return out.new_zeros(batch * length, *out.shape[1:]).index_copy(0, tokens, out).view(q.shape)


def _document_ids(kwargs, batch: int, length: int) -> torch.Tensor | None:
    """[B, T] document index of every token, for a fallback's mask; None for one document per row."""
    position_ids = kwargs.get("position_ids")
    if position_ids is None or position_ids.ndim != 2 or position_ids.shape[-1] != length:
        return None
    return _document_starts(position_ids.expand(batch, -1)).cumsum(-1)
