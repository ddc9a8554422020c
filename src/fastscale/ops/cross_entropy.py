"""fastscale.ops.linear_cross_entropy: softmax cross-entropy of hidden @ weight.T (+ bias) against
targets, without the [tokens, V] logits. Validation, the autograd Function and backend dispatch live
here; the math lives in the backends:

- "torch":  ops/cross_entropy_torch.py, chunked over tokens (the CPU path and the readable reference)
- "triton": kernels/cross_entropy.py, Triton GEMMs with the softmax fused in (its docstring has the design)
- "cuda":   ops/cross_entropy_cuda.py over csrc/, torch matmuls in chunks + a CUDA softmax epilogue

Every backend module provides
    forward(hidden, weight, bias, targets, opts) -> (loss [N], lse [N])
    gradients(hidden, weight, bias, targets, token_grad, opts) -> (dh, dw, db, loss, lse)
on 2-D hidden [N, d] and 1-D int64 targets [N], with losses, lse and the gradients dh, dw, db in float32
(float64 inputs: float64). token_grad [N] is each token's upstream gradient (0 where ignored). Where a
backend casts a logit gradient to 16 bits for a matmul, it first divides token_grad by
s = max|token_grad|, so the 16-bit entries are O(softmax probabilities) whatever the reduction, and
multiplies the float32 products by s afterwards.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import torch

from . import cross_entropy_torch
from ._checks import FLOAT_DTYPES, check_choice, check_number, check_same, check_tensor
from .cross_entropy_torch import LossOptions, accumulation_dtype

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "cuda", "torch")
REDUCTIONS = ("mean", "sum", "none")
_BACKEND_MODULES = {
    "torch": "fastscale.ops.cross_entropy_torch",
    "triton": "fastscale.kernels.cross_entropy",
    "cuda": "fastscale.ops.cross_entropy_cuda",
}


class _LinearCrossEntropy(torch.autograd.Function):
    """With reduction mean/sum the upstream gradient is one scalar, so the gradients are computed in
    the forward pass (one pass over the logits) and scaled in backward. With reduction "none" the
    per-token upstream gradient is only known in backward, which recomputes the logits.

    The backends return gradients in the accumulation dtype (float32; float64 for float64 inputs)
    and they are cast to the parameters' dtype only after the upstream gradient is applied: 16-bit
    gradients of the mean over many tokens are far below 16-bit range before a loss scale lifts them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, opts: LossOptions, reduction: str, backend: ModuleType):
        ctx.fused = reduction != "none"
        ctx.backend, ctx.opts, ctx.dtype, ctx.scaled = backend, opts, hidden.dtype, False
        if ctx.fused:
            token_grad = _token_weights(targets, opts.ignore_index, reduction, accumulation_dtype(hidden.dtype))
            d_hidden, d_weight, d_bias, loss, lse = backend.gradients(hidden, weight, bias, targets, token_grad, opts)
            ctx.save_for_backward(d_hidden, d_weight, d_bias)
        else:
            loss, lse = backend.forward(hidden, weight, bias, targets, opts)
            ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.mark_non_differentiable(lse)
        return _reduce(loss, targets, opts.ignore_index, reduction), lse

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):
        if ctx.fused:
            # Scaled in place (a float32 copy of d weight would double the memory this op exists to
            # save); only then cast, which for 16-bit parameters allocates their half-size gradient.
            if ctx.scaled:
                raise RuntimeError(
                    "linear_cross_entropy: a second backward through a mean/sum loss (retain_graph) is not "
                    "supported, because its gradients were precomputed and scaled in place; use reduction='none'"
                )
            ctx.scaled = True
            grads = [None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in ctx.saved_tensors]
        else:
            hidden, weight, bias, targets = ctx.saved_tensors
            token_grad = torch.where(targets != ctx.opts.ignore_index, grad_loss, 0.0)
            grads = ctx.backend.gradients(hidden, weight, bias, targets, token_grad, ctx.opts)[:3]
        return (*(None if g is None else g.to(ctx.dtype) for g in grads), None, None, None, None)


def _token_weights(targets: torch.Tensor, ignore_index: int, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """d loss / d (each token's loss) for reduction mean or sum: 0 on ignored tokens."""
    valid = (targets != ignore_index).to(dtype)
    return valid / valid.sum().clamp(min=1) if reduction == "mean" else valid


def _reduce(loss: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    if reduction == "mean":  # over non-ignored tokens; all ignored: loss 0 (and gradients 0)
        return loss.sum() / (targets != ignore_index).sum().clamp(min=1)
    return loss.sum() if reduction == "sum" else loss


def _needs_gradients(*tensors: torch.Tensor | None) -> bool:
    """False under torch.no_grad() and inference_mode (is_grad_enabled() is False in both), or when no
    input requires grad: then only the losses are computed, with no gradient buffer at all."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
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
    """
    _check_inputs(hidden, weight, targets, bias)
    opts = _check_options(ignore_index, reduction, label_smoothing, z_loss, softcap)
    module = _backend_module(backend, hidden, weight.shape[0])
    targets_1d = targets.reshape(-1).long()
    _check_target_range(targets_1d, weight.shape[0], ignore_index)
    hidden_2d = hidden.reshape(-1, hidden.shape[-1])
    if _needs_gradients(hidden_2d, weight, bias):
        loss, lse = _LinearCrossEntropy.apply(hidden_2d, weight, bias, targets_1d, opts, reduction, module)
    else:
        loss, lse = module.forward(hidden_2d, weight, bias, targets_1d, opts)
        loss = _reduce(loss, targets_1d, ignore_index, reduction)
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


def _check_target_range(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    bad = ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)
    if bad.any():
        example = targets[bad][0].item()
        raise ValueError(f"targets: value {example} is outside [0, {vocab}) and is not ignore_index ({ignore_index})")


def _backend_module(backend: str, hidden: torch.Tensor, vocab: int) -> ModuleType:
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        backend = _fastest_on_cuda(hidden, vocab) if hidden.is_cuda else "torch"
    if backend == "torch":
        return cross_entropy_torch
    module = importlib.import_module(_BACKEND_MODULES[backend])
    module.check_supported(hidden)
    return module


def _fastest_on_cuda(hidden: torch.Tensor, vocab: int) -> str:
    """The backend with the best estimate from the compiled code for this shape (ops/_auto.py), until
    a GPU measurement replaces it; triton when the cuda backend cannot run here (no fastscale._C)."""
    from . import _auto

    n_tokens = hidden.numel() // hidden.shape[-1]
    capability = torch.cuda.get_device_capability(hidden.device)
    choice = _auto.fastest_cross_entropy_backend(n_tokens, vocab, hidden.shape[-1], hidden.dtype, capability)
    if choice == "cuda":
        try:
            importlib.import_module(_BACKEND_MODULES["cuda"]).check_supported(hidden)
        except (RuntimeError, TypeError, ValueError) as why:
            log.debug("linear_cross_entropy: auto skips backend cuda: %s", why)
            return "triton"
    return choice
