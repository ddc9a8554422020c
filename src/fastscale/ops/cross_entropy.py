"""fastscale.ops.linear_cross_entropy: softmax cross-entropy of hidden @ weight.T (+ bias) against
targets, without the [tokens, V] logits. Validation, the custom ops with their autograd formulas and
backend dispatch live here; the math lives in the backends:

- "torch":  ops/cross_entropy_torch.py, chunked over tokens (the CPU path and the readable reference)
- "triton": kernels/cross_entropy.py, Triton GEMMs with the softmax fused in (its docstring has the design)
- "cuda":   ops/cross_entropy_cuda.py over csrc/, torch matmuls in chunks + a CUDA softmax epilogue

Every backend module provides (besides `unsupported`, fastscale.backends)
    forward(hidden, weight, bias, targets, opts) -> (loss [N], lse [N])
    gradients(hidden, weight, bias, targets, token_grad, opts) -> (dh, dw, db, loss, lse)
on 2-D hidden [N, d] and 1-D int64 targets [N], with losses, lse and the gradients dh, dw, db in float32
(float64 inputs: float64). token_grad [N] is each token's upstream gradient (0 where ignored). Where a
backend casts a logit gradient to 16 bits for a matmul, it first divides token_grad by
s = max|token_grad|, so the 16-bit entries are O(softmax probabilities) whatever the reduction, and
multiplies the float32 products by s afterwards.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from fastscale.backends import FLOAT_DTYPES, LossOptions, debug

from . import _dispatch
from ._checks import check_choice, check_number, check_same, check_tensor
from .cross_entropy_torch import accumulation_dtype

REDUCTIONS = ("mean", "sum", "none")


def _torch_backend():
    from . import cross_entropy_torch

    return cross_entropy_torch


def _triton_backend():
    from fastscale.kernels import cross_entropy

    return cross_entropy


def _cuda_backend():
    from . import cross_entropy_cuda

    return cross_entropy_cuda


# "torch" first: _dispatch.choose runs it off CUDA.
_BACKENDS = {"torch": _torch_backend, "triton": _triton_backend, "cuda": _cuda_backend}
BACKENDS = ("auto", *_BACKENDS)

# ---------------------------------------------------------------------------------------------- custom ops
# Three operators in torch.library, each with a fake (shapes only) implementation, so torch.compile
# traces through the op without running a backend: "linear_cross_entropy" (per-token losses and
# logsumexps; its backward recomputes the logits through "linear_cross_entropy_backward") and
# "linear_cross_entropy_fused" (reduction mean/sum when gradients are wanted: the upstream gradient is
# one scalar, so the gradients are computed in the forward pass, in one pass over the logits, and only
# scaled in backward). They take the options as plain values and the backend by name.
#
# The backends return gradients in the accumulation dtype (float32; float64 for float64 inputs); they
# are cast to the parameters' dtype only after the upstream gradient is applied: 16-bit gradients of
# the mean over many tokens are far below 16-bit range before a loss scale lifts them.


def _no_bias_grad(weight: Tensor) -> Tensor:
    """What the ops return as d bias without a bias: torch.library outputs cannot be None."""
    return weight.new_empty(0, dtype=accumulation_dtype(weight.dtype))


@torch.library.custom_op("fastscale::linear_cross_entropy", mutates_args=())
def _losses(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, ignore_index: int,
            label_smoothing: float, z_loss: float, softcap: float | None, backend: str) -> tuple[Tensor, Tensor]:
    """Per-token losses and logsumexps [N] of hidden [N, d] against int64 targets [N]."""
    opts = LossOptions(ignore_index, label_smoothing, z_loss, softcap)
    return _BACKENDS[backend]().forward(hidden, weight, bias, targets, opts)


@_losses.register_fake
def _(hidden, weight, bias, targets, ignore_index, label_smoothing, z_loss, softcap, backend):
    n, acc = hidden.shape[0], accumulation_dtype(hidden.dtype)
    return hidden.new_empty(n, dtype=acc), hidden.new_empty(n, dtype=acc)


@torch.library.custom_op("fastscale::linear_cross_entropy_backward", mutates_args=())
def _gradients(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, token_grad: Tensor,
               ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None,
               backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(d hidden, d weight, d bias) of sum(token_grad * loss), in the accumulation dtype."""
    opts = LossOptions(ignore_index, label_smoothing, z_loss, softcap)
    d_hidden, d_weight, d_bias = _BACKENDS[backend]().gradients(hidden, weight, bias, targets, token_grad, opts)[:3]
    return d_hidden, d_weight, _no_bias_grad(weight) if d_bias is None else d_bias


@_gradients.register_fake
def _(hidden, weight, bias, targets, token_grad, ignore_index, label_smoothing, z_loss, softcap, backend):
    return _fake_gradients(hidden, weight, bias)


def _fake_gradients(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    acc = accumulation_dtype(hidden.dtype)
    d_bias = _no_bias_grad(weight) if bias is None else bias.new_empty(bias.shape, dtype=acc)
    return hidden.new_empty(hidden.shape, dtype=acc), weight.new_empty(weight.shape, dtype=acc), d_bias


def _save_inputs(ctx, inputs, output) -> None:
    hidden, weight, bias, targets, ignore_index, label_smoothing, z_loss, softcap, backend = inputs
    ctx.save_for_backward(hidden, weight, bias, targets)
    ctx.options = (ignore_index, label_smoothing, z_loss, softcap, backend)
    ctx.mark_non_differentiable(output[1])


def _recompute_gradients(ctx, grad_loss, grad_lse):
    hidden, weight, bias, targets = ctx.saved_tensors
    token_grad = torch.where(targets != ctx.options[0], grad_loss, 0.0)
    d_hidden, d_weight, d_bias = _gradients(hidden, weight, bias, targets, token_grad, *ctx.options)
    return (d_hidden.to(hidden.dtype), d_weight.to(weight.dtype), None if bias is None else d_bias.to(bias.dtype),
            None, None, None, None, None, None)


_losses.register_autograd(_recompute_gradients, setup_context=_save_inputs)


@torch.library.custom_op("fastscale::linear_cross_entropy_fused", mutates_args=())
def _fused(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, ignore_index: int,
           label_smoothing: float, z_loss: float, softcap: float | None, reduction: str,
           backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(reduced loss, per-token lse, d hidden, d weight, d bias) for reduction mean or sum: the
    gradients of the loss, computed with it."""
    opts = LossOptions(ignore_index, label_smoothing, z_loss, softcap)
    token_grad = _token_weights(targets, ignore_index, reduction, accumulation_dtype(hidden.dtype))
    d_hidden, d_weight, d_bias, loss, lse = _BACKENDS[backend]().gradients(hidden, weight, bias, targets, token_grad, opts)
    loss = _reduce(loss, targets, ignore_index, reduction)
    return loss, lse, d_hidden, d_weight, _no_bias_grad(weight) if d_bias is None else d_bias


@_fused.register_fake
def _(hidden, weight, bias, targets, ignore_index, label_smoothing, z_loss, softcap, reduction, backend):
    acc = accumulation_dtype(hidden.dtype)
    loss, lse = hidden.new_empty((), dtype=acc), hidden.new_empty(hidden.shape[0], dtype=acc)
    return loss, lse, *_fake_gradients(hidden, weight, bias)


def _save_gradients(ctx, inputs, output) -> None:
    hidden, weight, bias = inputs[:3]
    ctx.save_for_backward(*output[2:])
    ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
    ctx.scaled = False
    ctx.mark_non_differentiable(*output[1:])


def _scale_gradients(ctx, grad_loss, *unused):
    # Scaled in place (a float32 copy of d weight would double the memory this op exists to save);
    # only then cast, which for 16-bit parameters allocates their half-size gradient.
    if ctx.scaled:
        raise RuntimeError(
            "linear_cross_entropy: a second backward through a mean/sum loss (retain_graph) is not "
            "supported, because its gradients were precomputed and scaled in place; use reduction='none'"
        )
    ctx.scaled = True
    grads = [None if dtype is None else g.mul_(grad_loss.to(g.dtype)).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
    return (*grads, None, None, None, None, None, None, None)


_fused.register_autograd(_scale_gradients, setup_context=_save_gradients)


def _token_weights(targets: Tensor, ignore_index: int, reduction: str, dtype: torch.dtype) -> Tensor:
    """d loss / d (each token's loss) for reduction mean or sum: 0 on ignored tokens."""
    valid = (targets != ignore_index).to(dtype)
    return valid / valid.sum().clamp(min=1) if reduction == "mean" else valid


def _reduce(loss: Tensor, targets: Tensor, ignore_index: int, reduction: str) -> Tensor:
    if reduction == "mean":  # over non-ignored tokens; all ignored: loss 0 (and gradients 0)
        return loss.sum() / (targets != ignore_index).sum().clamp(min=1)
    return loss.sum() if reduction == "sum" else loss


def _needs_gradients(*tensors: Tensor | None) -> bool:
    """False under torch.no_grad() and inference_mode (is_grad_enabled() is False in both), or when no
    input requires grad: then only the losses are computed, with no gradient buffer at all."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------------------------- the op


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
):
    """Cross-entropy of the logits hidden @ weight.T + bias against targets, never holding them all.

    hidden [..., d] and weight [V, d] share a dtype (float32, bfloat16, float16; float64 on the torch
    backend) and a device; targets [...] are integers in [0, V) or ignore_index; bias is [V].
    reduction "mean" averages over non-ignored tokens (0 if there are none), "sum" adds them,
    "none" returns per-token losses shaped like targets (0 where ignored). label_smoothing is
    F.cross_entropy's; z_loss adds z_loss * lse^2 per non-ignored token (PaLM); softcap maps logits
    to softcap * tanh(logits / softcap) first (Gemma 2). The loss is float32 (float64 for float64
    inputs). With return_lse, also returns the per-token logsumexp of the (capped) logits, shaped
    like targets, for every token including ignored ones; it carries no gradient.
    backend: "auto" (on CUDA tensors the backend with the best estimate from the compiled code for
    the shape, see ops/_auto.py; torch on CPU), "triton", "cuda" or "torch".

    Targets outside [0, V) (other than ignore_index) raise a ValueError naming one where that costs no
    device synchronization: on CPU tensors outside torch.compile, or everywhere with FASTSCALE_DEBUG=1.
    Elsewhere (CUDA, torch.compile) they are found on the device and make the loss NaN: with reduction
    "none" the offending tokens' losses, else the loss and with it every gradient.
    The op runs as torch.library custom ops ("fastscale::linear_cross_entropy*"), so torch.compile
    traces it (fullgraph too) and runs the chosen backend as it runs eagerly.
    """
    _check_inputs(hidden, weight, targets, bias)
    opts = _check_options(ignore_index, reduction, label_smoothing, z_loss, softcap)
    vocab = weight.shape[0]
    name = _dispatch.choose("linear_cross_entropy", backend, _BACKENDS, hidden,
                            functools.partial(_fastest_on_cuda, hidden, vocab))
    targets_1d = targets.reshape(-1).long()
    host_check = _targets_checked_on_host(targets)
    if host_check:
        _check_target_range(targets_1d, vocab, ignore_index)
    hidden_2d = hidden.reshape(-1, hidden.shape[-1])
    args = (hidden_2d, weight, bias, targets_1d, opts.ignore_index, opts.label_smoothing, opts.z_loss, opts.softcap)
    if reduction != "none" and _needs_gradients(hidden_2d, weight, bias):
        loss, lse = _fused(*args, reduction, name)[:2]
    else:
        loss, lse = _losses(*args, name)
        loss = _reduce(loss, targets_1d, ignore_index, reduction)
    if not host_check:
        loss = _nan_where_out_of_range(loss, targets_1d, vocab, ignore_index)
    if reduction == "none":
        loss = loss.view(targets.shape)
    return (loss, lse.view(targets.shape)) if return_lse else loss


def _check_inputs(hidden, weight, targets, bias) -> None:
    dtypes = (*FLOAT_DTYPES, torch.float64)
    for name, param in (("weight", weight), ("bias", bias)):
        if getattr(param, "ds_numel", None) is not None and param.numel() != param.ds_numel:
            raise ValueError(
                f"{name}: a DeepSpeed ZeRO-3 partitioned parameter (full shape {tuple(param.ds_shape)}) that is "
                "not gathered; call the op from the forward of the module that owns it (fastscale.nn."
                "LinearCrossEntropyLoss does) or inside deepspeed.zero.GatheredParameters"
            )
    check_tensor("hidden", hidden, min_ndim=1, dtypes=dtypes)
    check_tensor("weight", weight, ndim=2, dtypes=dtypes)
    check_tensor("targets", targets)
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets: dtype {targets.dtype} is not an integer dtype; expected int64 class indices")
    check_same("device", "hidden", hidden, weight=weight, targets=targets, bias=bias)
    check_same("dtype", "hidden", hidden, weight=weight, bias=bias)
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight: shape {tuple(weight.shape)} needs {hidden.shape[-1]} columns to match hidden's last dimension (hidden shape {tuple(hidden.shape)})")
    if weight.shape[0] == 0:
        raise ValueError("weight: shape has 0 rows; expected a vocabulary of at least 1")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets: shape {tuple(targets.shape)} must equal hidden's leading shape {tuple(hidden.shape[:-1])}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias: shape {tuple(bias.shape)}; expected ({weight.shape[0]},), one entry per row of weight")


def _check_options(ignore_index, reduction, label_smoothing, z_loss, softcap) -> LossOptions:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index={ignore_index!r}: expected an int")
    check_choice("reduction", reduction, REDUCTIONS)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    check_number("z_loss", z_loss, low=0.0)
    if softcap is not None:
        check_number("softcap", softcap, low=0.0, low_open=True)
    return LossOptions(ignore_index, float(label_smoothing), float(z_loss), None if softcap is None else float(softcap))


def _targets_checked_on_host(targets: Tensor) -> bool:
    """Whether the target range is checked on the host, raising: where reading it costs no device
    synchronization (CPU tensors, eagerly), or in debug mode (fastscale.backends.debug)."""
    return debug() or (targets.device.type == "cpu" and not torch.compiler.is_compiling())


def _out_of_range(targets: Tensor, vocab: int, ignore_index: int) -> Tensor:
    return ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)


def _check_target_range(targets: Tensor, vocab: int, ignore_index: int) -> None:
    bad = _out_of_range(targets, vocab, ignore_index)
    if bad.any():
        example = targets[bad][0].item()
        raise ValueError(f"targets: value {example} is outside [0, {vocab}) and is not ignore_index ({ignore_index})")


def _nan_where_out_of_range(loss: Tensor, targets: Tensor, vocab: int, ignore_index: int) -> Tensor:
    """loss times NaN where a target is out of range (any, for a reduced loss), else times 1: on the
    device, without a synchronization. A product, so the NaN reaches the gradients too."""
    bad = _out_of_range(targets, vocab, ignore_index)
    return loss * torch.where(bad if loss.ndim else bad.any(), float("nan"), 1.0).to(loss.dtype)


def _fastest_on_cuda(hidden: Tensor, vocab: int, available: tuple[str, ...]) -> str:
    """Of the available backends, the one with the best estimate from the compiled code for this shape
    (ops/_auto.py), until a GPU measurement replaces it."""
    from . import _auto

    n_tokens = hidden.numel() // hidden.shape[-1]
    capability = torch.cuda.get_device_capability(hidden.device)
    choice = _auto.fastest_cross_entropy_backend(n_tokens, vocab, hidden.shape[-1], hidden.dtype, capability)
    return choice if choice in available else available[0]
