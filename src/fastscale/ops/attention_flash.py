"""The "flash_attn" backend of fastscale.ops.attention: the flash-attn package (its own custom ops and
autograd), when it is installed and supports the inputs. It trusts its offsets, so the op validates
cu_seqlens before calling it."""

from __future__ import annotations

import torch

# Looked for once, here: unsupported() runs while torch.compile traces, which cannot trace an import
# that may fail.
try:
    import flash_attn  # noqa: F401
except ImportError as err:
    _MISSING = f"needs the flash-attn package, which does not import ({err}; pip install 'fastscale[flash]' on a CUDA machine)"
else:
    _MISSING = None


def unsupported(q: torch.Tensor) -> str | None:
    if _MISSING is not None:
        return _MISSING
    if q.device.type != "cuda":
        return f"needs CUDA tensors (q is on {q.device})"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"supports float16 and bfloat16 only (got {q.dtype})"
    if q.shape[-1] > 256 or q.shape[-1] % 8:
        return f"supports head dims that are multiples of 8 up to 256 (got {q.shape[-1]})"
    return None


def attention(q, k, v, *, causal: bool, cu_seqlens, max_seqlen: int | None, window: int | None, scale: float):
    import flash_attn

    left = -1 if window is None else window - 1
    window_size = (left, 0 if causal and window is not None else left)
    common = dict(softmax_scale=scale, causal=causal, window_size=window_size, deterministic=True)
    if cu_seqlens is None:
        return flash_attn.flash_attn_func(q, k, v, **common)
    return flash_attn.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **common)
