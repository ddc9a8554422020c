"""fastscale.ops.attention: scaled dot-product attention for training, causal or not, on batched or
packed (cu_seqlens) sequences, with grouped-query heads and a sliding window. Validation, backend
dispatch live here; the math lives in the backends, each a module with `unsupported(q)` (see
fastscale.backends) and attention(q, k, v, *, causal, cu_seqlens, max_seqlen, window, scale):

- "torch":      ops/attention_torch.py, SDPA or a per-document loop (the CPU path and the reference;
                torch differentiates it and torch.compile traces it)
- "triton":     ops/attention_triton.py, the custom ops "fastscale::attention_triton" (with its autograd
                formula) and "fastscale::attention_triton_backward" around kernels/attention.py's
                FlashAttention-2-style forward and deterministic backward
- "flash_attn": ops/attention_flash.py, the flash-attn package (its own custom ops), when it is
                installed and supports the inputs
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from fastscale.backends import FLOAT_DTYPES

from . import _dispatch
from ._checks import check_choice, check_number, check_same, check_tensor



def _torch_backend():
    from . import attention_torch

    return attention_torch


def _triton_backend():
    from . import attention_triton

    return attention_triton


def _flash_attn_backend():
    from . import attention_flash

    return attention_flash


# "torch" first: _dispatch.choose runs it off CUDA.
_BACKENDS = {"torch": _torch_backend, "triton": _triton_backend, "flash_attn": _flash_attn_backend}
BACKENDS = ("auto", *_BACKENDS)


def attention(q, k, v, *, causal=True, cu_seqlens=None, max_seqlen=None, window=None, scale=None, backend="auto"):
    """softmax(q k^T * scale + mask) v for every query head, as flash-attn's flash_attn_func /
    flash_attn_varlen_func compute it.

    q [B, T, Hq, D] and k, v [B, T, Hkv, D] share dtype (float32, bfloat16, float16; float64 on the
    torch backend) and device; Hq is a multiple of Hkv (GQA/MQA: query head h reads key/value head
    h // (Hq // Hkv)). With cu_seqlens (int32 [n_docs + 1], 0 first, non-decreasing, total_tokens
    last) q/k/v are packed [total_tokens, H, D] and no token attends across a document boundary;
    max_seqlen is at least the longest document's length: the launch grid and the backend choice need
    it on the host. Pass it (a data pipeline knows it on the CPU: data/packing.py) and the call reads
    nothing from the device; without it the op computes it from cu_seqlens, a device synchronization
    on CUDA, and under torch.compile it is required. cu_seqlens's values are validated (an error
    names the first bad offset) on every call that reads them on the host: always on CPU outside
    torch.compile; on CUDA unless max_seqlen is given and the backend is triton, whose kernels stay
    inside the tensors whatever the offsets (see _reads_offsets). Under torch.compile they are not
    read; the torch backend's packed path reads them to split the documents, so it breaks the graph
    there (pass backend="triton" or batched input for fullgraph=True).
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
    validated = False
    if cu_seqlens is not None:
        _check_cu_seqlens_form(cu_seqlens, max_seqlen, q)
        if max_seqlen is None:
            max_seqlen = _longest_document(cu_seqlens, q.shape[0])
            validated = True
    elif max_seqlen is not None:
        raise ValueError(f"max_seqlen={max_seqlen!r}: only meaningful with cu_seqlens (packed input); pass None")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    name = _dispatch.choose("attention", backend, _BACKENDS, q,
                            functools.partial(_fastest_on_cuda, q, k, v, causal, cu_seqlens, max_seqlen))
    if cu_seqlens is not None and not validated and _reads_offsets(cu_seqlens, name):
        _check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen)
    return _BACKENDS[name]().attention(
        q, k, v, causal=causal, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, window=window, scale=scale)


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


def _longest_document(cu_seqlens: Tensor, total: int) -> int:
    """max_seqlen of offsets the caller did not give it for: validated and read on the host."""
    if torch.compiler.is_compiling():
        raise ValueError("max_seqlen=None with cu_seqlens under torch.compile: the longest document's length must "
                         "be known on the host; pass max_seqlen (data/packing.py computes it with the offsets)")
    return _check_cu_seqlens(cu_seqlens, total, None)


def _reads_offsets(cu_seqlens, backend: str) -> bool:
    """Whether a call given max_seqlen validates cu_seqlens anyway (one without it always does).

    Validation is O(documents) and runs on every call that reads the offsets: a cache cannot know
    that they have not changed since (a numpy array shared through torch.from_numpy, a `.data` write
    or another view changes them behind the tensor's version counter) short of reading them again.
    Reading costs nothing on CPU. On CUDA it is a device synchronization, paid only where the call
    needs the offsets on the host anyway: the torch backend (it splits q, k, v by document) and
    flash-attn (its kernels trust their offsets). The triton backend on CUDA launches without reading
    them: its kernels clamp every document into the packed tokens, so offsets validation would have
    refused give wrong values for that batch, never an access outside the tensors. A model that
    passes the max_seqlen its data pipeline computed on the CPU (data/packing.py) runs sync-free.
    Under torch.compile nothing is read: a traced graph cannot raise on values."""
    if torch.compiler.is_compiling():
        return False
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


def _fastest_on_cuda(q, k, v, causal, cu_seqlens, max_seqlen, available) -> str:
    """The available backend with the best estimate from the compiled code for this shape
    (ops/_auto.py), until a GPU measurement replaces it."""
    from . import _auto

    batch_tokens = q.shape[0] if cu_seqlens is not None else q.shape[0] * q.shape[1]
    seqlen = max_seqlen if cu_seqlens is not None else q.shape[1]
    backward = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    return _auto.fastest_attention_backend(batch_tokens, seqlen, q.shape[-2], q.shape[-1], q.dtype, causal,
                                           torch.cuda.get_device_capability(q.device), available, backward=backward)
