"""fastscale.ops.attention: scaled dot-product attention for training, causal or not, on batched or
packed (cu_seqlens) sequences, with grouped-query heads and a sliding window. Validation, the
autograd Function and backend dispatch live here; the math lives in the backends:

- "torch":      ops/attention_torch.py, SDPA or a per-document loop (the CPU path and the reference)
- "triton":     kernels/attention.py, FlashAttention-2-style forward and deterministic backward
- "flash_attn": the flash-attn package, when it is installed and supports the inputs
"""

from __future__ import annotations

import importlib
import logging
import os

import torch

from . import attention_torch
from ._checks import FLOAT_DTYPES, check_choice, check_number, check_same, check_tensor

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "flash_attn", "torch")


def attention(q, k, v, *, causal=True, cu_seqlens=None, max_seqlen=None, window=None, scale=None, backend="auto"):
    """softmax(q k^T * scale + mask) v for every query head, as flash-attn's flash_attn_func /
    flash_attn_varlen_func compute it.

    q [B, T, Hq, D] and k, v [B, T, Hkv, D] share dtype (float32, bfloat16, float16; float64 on the
    torch backend) and device; Hq is a multiple of Hkv (GQA/MQA: query head h reads key/value head
    h // (Hq // Hkv)). With cu_seqlens (int32 [n_docs + 1], 0 first, non-decreasing, total_tokens
    last) q/k/v are packed [total_tokens, H, D] and no token attends across a document boundary;
    max_seqlen (at least the longest document) is computed from cu_seqlens when not given. cu_seqlens
    is validated on every call that reads it on the host: always on CPU; on CUDA unless max_seqlen
    is given and the backend is triton, whose kernels stay inside the tensors whatever the offsets
    (see _reads_offsets: pass max_seqlen to keep the step free of device synchronizations).
    causal: query i sees keys j <= i. window=W: query i sees key j only if i - W < j (and j < i + W
    when not causal), so at most W keys on its left, itself included (flash-attn's
    window_size=(W-1, 0) when causal, (W-1, W-1) when not). scale defaults to 1/sqrt(D).
    backend: "auto" (on CUDA tensors, of triton (bfloat16/float16, any head dim up to 256) and
    flash_attn (if installed and able), the one with the best estimate from the compiled code for the
    shape, see ops/_auto.py; torch when neither can serve the inputs, and on CPU), "triton",
    "flash_attn" or "torch". Returns a tensor shaped and typed like q.
    """
    check_choice("backend", backend, BACKENDS)
    _check_tensors(q, k, v, packed=cu_seqlens is not None)
    _check_options(causal, window, scale)
    if cu_seqlens is not None:
        _check_cu_seqlens_form(cu_seqlens, max_seqlen, q)
    elif max_seqlen is not None:
        raise ValueError(f"max_seqlen={max_seqlen!r}: only meaningful with cu_seqlens (packed input); pass None")
    validated = cu_seqlens is not None and max_seqlen is None
    if validated:  # the backend choice and the launch grid need the longest document
        max_seqlen = _check_cu_seqlens(cu_seqlens, q.shape[0], None)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    backend = _choose_backend(backend, q, k, v, causal, cu_seqlens, max_seqlen)
    if cu_seqlens is not None and not validated and _reads_offsets(cu_seqlens, backend):
        _check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen)
    if backend == "torch":
        return attention_torch.attention(q, k, v, causal=causal, cu_seqlens=cu_seqlens, window=window, scale=scale)
    if backend == "flash_attn":
        return _flash_attn(q, k, v, causal, cu_seqlens, max_seqlen, window, scale)
    return _triton(q, k, v, causal, cu_seqlens, max_seqlen, window, scale)


# ---------------------------------------------------------------------------------------------- checks


def _check_tensors(q, k, v, *, packed: bool) -> None:
    ndim = 3 if packed else 4
    layout = "[total_tokens, H, D] (packed, cu_seqlens given)" if packed else "[B, T, H, D]"
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, dtypes=(*FLOAT_DTYPES, torch.float64))
        if x.ndim != ndim:
            raise ValueError(f"{name}: shape {tuple(x.shape)} has {x.ndim} dimensions; expected {layout}")
    check_same("dtype", "q", q, k=k, v=v)
    check_same("device", "q", q, k=k, v=v)
    if v.shape != k.shape:
        raise ValueError(f"v: shape {tuple(v.shape)} differs from k's {tuple(k.shape)}")
    if k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"k: shape {tuple(k.shape)} does not match q's {tuple(q.shape)}; expected the same batch, "
            "tokens and head dim (only the number of heads may differ)"
        )
    heads_q, heads_kv = q.shape[-2], k.shape[-2]
    if q.numel() == 0 or heads_kv == 0:
        raise ValueError(f"q: shape {tuple(q.shape)} and k: shape {tuple(k.shape)}: expected no empty dimension")
    if heads_q % heads_kv:
        raise ValueError(f"q: {heads_q} heads is not a multiple of k's {heads_kv} heads (GQA needs Hq % Hkv == 0)")


def _check_options(causal, window, scale) -> None:
    if not isinstance(causal, bool):
        raise TypeError(f"causal={causal!r}: expected True or False")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"window={window!r}: expected None or an int >= 1 (keys each query sees on its left, itself included)")
        if window < 1:
            raise ValueError(f"window={window!r}: expected None or an int >= 1 (keys each query sees on its left, itself included)")
    if scale is not None:
        check_number("scale", scale, low=0.0, low_open=True)


def _check_cu_seqlens_form(cu_seqlens, max_seqlen, q) -> None:
    """What can be checked without reading the offsets: type, shape, device, and max_seqlen's type."""
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32,))
    check_same("device", "q", q, cu_seqlens=cu_seqlens)
    if cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens: shape {tuple(cu_seqlens.shape)}; expected [n_docs + 1] with n_docs >= 1")
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int)):
        raise TypeError(f"max_seqlen={max_seqlen!r}: expected None or an int (the longest document's length)")
    if max_seqlen is not None and max_seqlen < 1:
        raise ValueError(f"max_seqlen={max_seqlen}: expected None or an int >= 1 (the longest document's length)")


def _reads_offsets(cu_seqlens, backend: str) -> bool:
    """Whether a call given max_seqlen validates cu_seqlens anyway (one without it always does).

    Validation is O(documents) and runs on every call that reads the offsets: a cache cannot know
    that they have not changed since (a numpy array shared through torch.from_numpy, a `.data` write
    or another view changes them behind the tensor's version counter) short of reading them again.
    Reading costs nothing on CPU. On CUDA it is a device synchronization, paid only where the call
    needs the offsets on the host anyway: max_seqlen not given (the launch grid needs the longest
    document), the torch backend (it splits q, k, v by document) and flash-attn (its kernels trust
    their offsets). The triton backend on CUDA with max_seqlen given launches without reading them:
    its kernels clamp every document into the packed tokens, so offsets validation would have
    refused give wrong values for that batch, never an access outside the tensors. A model that
    passes the max_seqlen its data pipeline computed on the CPU (data/packing.py) runs sync-free."""
    return cu_seqlens.device.type == "cpu" or backend != "triton"


def _check_cu_seqlens(cu_seqlens, total: int, max_seqlen: int | None) -> int:
    """Validates the offsets' values and returns max_seqlen: a few O(documents) tensor ops on the
    offsets' device and one host read of four scalars; a refusal reads more to name the first bad
    offset and its values."""
    lengths = cu_seqlens.long().diff()  # int32 differences wrap around: [0, 2**31 - 1, -2, 10] would pass
    shortest, longest = torch.aminmax(lengths)
    first, last, shortest, longest = torch.stack([cu_seqlens[0], cu_seqlens[-1], shortest, longest]).tolist()
    if first != 0:
        raise ValueError(f"cu_seqlens[0] = {first}: expected 0 (the offset of the first packed token)")
    if shortest < 0:
        at = int((lengths < 0).nonzero()[0])
        raise ValueError(f"cu_seqlens: not sorted, cu_seqlens[{at + 1}] = {int(cu_seqlens[at + 1])} < "
                         f"cu_seqlens[{at}] = {int(cu_seqlens[at])}; expected non-decreasing offsets")
    if last != total:
        raise ValueError(f"cu_seqlens[{cu_seqlens.shape[0] - 1}] = {last} (the last offset): expected the number of "
                         f"packed tokens, total_tokens = {total} (q.shape[0])")
    if max_seqlen is None:
        return longest
    if max_seqlen < longest:
        at = int(lengths.argmax())
        raise ValueError(f"max_seqlen={max_seqlen}: shorter than the longest document, cu_seqlens[{at + 1}] - "
                         f"cu_seqlens[{at}] = {longest} tokens; expected max_seqlen >= {longest}")
    return max_seqlen


# ---------------------------------------------------------------------------------------------- backends


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_unsupported(q) -> str | None:
    if q.device.type != "cuda" and not _interpreting():
        return f"needs CUDA tensors (q is on {q.device}; set TRITON_INTERPRET=1 before import to interpret on CPU)"
    from fastscale.kernels import attention as kernels

    return kernels.unsupported(q.dtype, q.shape[-1])


def _flash_attn_unsupported(q) -> str | None:
    try:
        importlib.import_module("flash_attn")
    except ImportError:
        return "the flash-attn package is not installed (pip install 'fastscale[flash]' on a CUDA machine)"
    if q.device.type != "cuda":
        return f"needs CUDA tensors (q is on {q.device})"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"supports float16 and bfloat16 only (got {q.dtype})"
    if q.shape[-1] > 256 or q.shape[-1] % 8:
        return f"supports head dims that are multiples of 8 up to 256 (got {q.shape[-1]})"
    return None


_UNSUPPORTED = {"triton": _triton_unsupported, "flash_attn": _flash_attn_unsupported}


def _choose_backend(backend: str, q, k, v, causal, cu_seqlens, max_seqlen) -> str:
    if backend == "torch":
        return backend
    if backend != "auto":
        reason = _UNSUPPORTED[backend](q)
        if reason:
            raise NotImplementedError(f"backend={backend!r} cannot serve these inputs: it {reason}")
        return backend
    if q.device.type != "cuda":
        return "torch"
    available = []
    for candidate in ("triton", "flash_attn"):
        reason = _UNSUPPORTED[candidate](q)
        if reason is None:
            available.append(candidate)
        else:
            log.debug("attention: backend %s skipped: it %s", candidate, reason)
    return _fastest_on_cuda(q, k, v, causal, cu_seqlens, max_seqlen, tuple(available))


def _fastest_on_cuda(q, k, v, causal, cu_seqlens, max_seqlen, available) -> str:
    """The available backend with the best estimate from the compiled code for this shape
    (ops/_auto.py), until a GPU measurement replaces it."""
    from . import _auto

    batch_tokens = q.shape[0] if cu_seqlens is not None else q.shape[0] * q.shape[1]
    seqlen = max_seqlen if cu_seqlens is not None else q.shape[1]
    backward = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    return _auto.fastest_attention_backend(batch_tokens, seqlen, q.shape[-2], q.shape[-1], q.dtype, causal,
                                           torch.cuda.get_device_capability(q.device), available, backward=backward)


def _flash_attn(q, k, v, causal, cu_seqlens, max_seqlen, window, scale):
    import flash_attn

    left = -1 if window is None else window - 1
    window_size = (left, 0 if causal and window is not None else left)
    common = dict(softmax_scale=scale, causal=causal, window_size=window_size, deterministic=True)
    if cu_seqlens is None:
        return flash_attn.flash_attn_func(q, k, v, **common)
    return flash_attn.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **common)


class _TritonAttention(torch.autograd.Function):
    """Saves q, k, v, the output and the per-row logsumexp; backward recomputes the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, causal, window, scale):
        from fastscale.kernels import attention as kernels

        out, lse = kernels.forward(q, k, v, cu_seqlens, max_seqlen, causal=causal, window=window, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.options = dict(max_seqlen=max_seqlen, causal=causal, window=window, scale=scale)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        from fastscale.kernels import attention as kernels

        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = kernels.backward(grad_out, q, k, v, out, lse, cu_seqlens, **ctx.options)
        return dq, dk, dv, None, None, None, None, None


def _triton(q, k, v, causal, cu_seqlens, max_seqlen, window, scale):
    if cu_seqlens is not None:
        return _TritonAttention.apply(q, k, v, cu_seqlens, max_seqlen, causal, window, scale)
    # A batch is a pack of equal documents; reshape is a view for contiguous or fused-qkv layouts.
    batch, tokens = q.shape[:2]
    packed = [x.reshape(batch * tokens, *x.shape[2:]) for x in (q, k, v)]
    out = _TritonAttention.apply(*packed, None, tokens, causal, window, scale)
    return out.view(batch, tokens, *out.shape[1:])
