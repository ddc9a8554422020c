"""The "triton" backend of fastscale.ops.attention: kernels/attention.py's forward and backward as
torch.library custom ops on packed [total, H, D] inputs (a batch is a pack of equal documents of
`seqlen` tokens), "fastscale::attention_triton" with its autograd formula and
"fastscale::attention_triton_backward", each with a fake implementation so torch.compile traces the
op without running the kernels. The forward saves q, k, v, the output and the per-row logsumexp; the
backward recomputes the probabilities. The kernels module is imported on first call: importing it
compiles nothing, but it needs triton.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastscale.backends import interpreting


def unsupported(q: Tensor) -> str | None:
    if q.device.type != "cuda" and not interpreting():
        return f"needs CUDA tensors (q is on {q.device}; set TRITON_INTERPRET=1 before import to interpret on CPU)"
    from fastscale.kernels import attention as kernels

    return kernels.unsupported(q.dtype, q.shape[-1])


@torch.library.custom_op("fastscale::attention_triton", mutates_args=())
def _triton_forward(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor | None, max_seqlen: int, causal: bool,
                    window: int | None, scale: float) -> tuple[Tensor, Tensor]:
    """(out like q, lse [Hq, total] float32)."""
    from fastscale.kernels import attention as kernels

    return kernels.forward(q, k, v, cu_seqlens, max_seqlen, causal=causal, window=window, scale=scale)


@_triton_forward.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, causal, window, scale):
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("fastscale::attention_triton_backward", mutates_args=())
def _triton_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                     cu_seqlens: Tensor | None, max_seqlen: int, causal: bool, window: int | None,
                     scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv), deterministically."""
    from fastscale.kernels import attention as kernels

    return kernels.backward(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen=max_seqlen, causal=causal,
                            window=window, scale=scale)


@_triton_backward.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, causal, window, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _save_for_triton_backward(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, *options = inputs
    ctx.save_for_backward(q, k, v, *output, cu_seqlens)
    ctx.options = options
    ctx.mark_non_differentiable(output[1])


def _triton_gradients(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    return (*_triton_backward(grad_out, q, k, v, out, lse, cu_seqlens, *ctx.options), None, None, None, None, None)


_triton_forward.register_autograd(_triton_gradients, setup_context=_save_for_triton_backward)


def attention(q, k, v, *, causal: bool, cu_seqlens, max_seqlen: int | None, window: int | None, scale: float):
    if cu_seqlens is not None:
        return _triton_forward(q, k, v, cu_seqlens, max_seqlen, causal, window, scale)[0]
    # A batch is a pack of equal documents; reshape is a view for contiguous or fused-qkv layouts.
    batch, tokens = q.shape[:2]
    packed = [x.reshape(batch * tokens, *x.shape[2:]) for x in (q, k, v)]
    out = _triton_forward(*packed, None, tokens, causal, window, scale)[0]
    return out.view(batch, tokens, *out.shape[1:])
