"""The "cuda" backend of linear_cross_entropy: torch matmuls chunk by chunk, the softmax part in csrc/.

Per chunk of tokens (the torch backend's chunking), torch computes the logits chunk in the input dtype
(hidden @ weight.T + bias, one GEMM with the bias fused); fastscale._C turns it into per-token losses and
logsumexps and, for gradients, overwrites it in place with dz = d loss / d logits for the token gradients
divided by s = max|token_grad| (so 16-bit dz entries are O(softmax probabilities) and small ones survive
the cast); torch then computes d hidden = dz @ weight and accumulates d weight += dz.T @ hidden and
d bias += sum(dz), all in float32 (16-bit operands multiply on tensor cores straight into float32), and
multiplies them by s. The gradients are returned in float32, as the op expects of every backend.
Peak extra memory is one logits chunk in the input dtype plus a small workspace.

Unlike the torch reference, which adds the bias after rounding the matmul to the input dtype, the
bias here is added inside the GEMM before that rounding; 16-bit results differ in the last bits.
"""

from __future__ import annotations

import math

import torch

from fastscale.backends import FLOAT_DTYPES, LossOptions, normalize_token_grad

from .cross_entropy_torch import chunk_rows

try:
    from fastscale import _C
except ImportError as err:  # built only where nvcc was found at install time
    _C = None
    _IMPORT_ERROR = str(err)

# Each block of the kernels takes at least this many columns of a row: fewer would spend more time
# combining splits than reading logits.
MIN_SPLIT_COLUMNS = 2048
# Blocks per SM to aim for when splitting rows, so that a chunk of few long rows still fills the GPU.
BLOCKS_PER_SM = 4


def unsupported(hidden: torch.Tensor) -> str | None:
    if hidden.dtype not in FLOAT_DTYPES:
        return f"supports {', '.join(str(d) for d in FLOAT_DTYPES)} (got hidden dtype {hidden.dtype})"
    if not hidden.is_cuda:
        return f"needs CUDA tensors (hidden is on {hidden.device})"
    if _C is None:
        return f"needs fastscale._C, which is not built ({_IMPORT_ERROR}); install with nvcc on PATH or FASTSCALE_BUILD_CUDA=1"
    return None


def forward(hidden, weight, bias, targets, opts: LossOptions):
    """Per-token losses and logsumexps (float32) of 2-D hidden [N, d] against int64 targets [N]."""
    loss, lse = _outputs(hidden)
    targets = targets.contiguous()
    for s in _chunks(hidden.shape[0], weight.shape[0], hidden.dtype):
        z = _logits(hidden[s], weight, bias)
        _launch(_C.cross_entropy_forward, z, targets[s], loss[s], lse[s], opts)
    return loss, lse


def gradients(hidden, weight, bias, targets, token_grad, opts: LossOptions):
    """Gradients (d hidden, d weight, d bias or None) of sum(token_grad * loss) in float32, with the
    per-token losses and logsumexps computed on the way: one pass over the logits, chunk by chunk."""
    loss, lse = _outputs(hidden)
    targets = targets.contiguous()
    token_grad, scale = normalize_token_grad(token_grad.to(device=hidden.device, dtype=torch.float32))
    d_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    d_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
    for s in _chunks(hidden.shape[0], weight.shape[0], hidden.dtype):
        dz = _logits(hidden[s], weight, bias)
        _launch(_C.cross_entropy_backward, dz, targets[s], loss[s], lse[s], opts, token_grad=token_grad[s])
        _add_product_(d_hidden[s], dz, weight)
        _add_product_(d_weight, dz.T, hidden[s])
        if d_bias is not None:
            d_bias += dz.sum(dim=0, dtype=torch.float32)
    for grad in (d_hidden, d_weight, d_bias):
        if grad is not None:
            grad.mul_(scale)
    return d_hidden, d_weight, d_bias, loss, lse


def _outputs(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = hidden.shape[0]
    return (torch.empty(n, dtype=torch.float32, device=hidden.device),
            torch.empty(n, dtype=torch.float32, device=hidden.device))


def _chunks(n_tokens: int, vocab: int, dtype: torch.dtype):
    rows = chunk_rows(vocab, dtype)
    return (slice(start, min(start + rows, n_tokens)) for start in range(0, n_tokens, rows))


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The [rows, V] logits chunk in the input dtype, row-major (the kernels need unit column stride)."""
    return hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)


def _add_product_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with acc float32: 16-bit operands multiply on tensor cores straight into float32."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
    else:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)


def _vocab_splits(rows: int, vocab: int, device: torch.device) -> int:
    """Column ranges per row: about BLOCKS_PER_SM blocks per SM in all, each of MIN_SPLIT_COLUMNS or more."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = math.ceil(BLOCKS_PER_SM * sms / max(rows, 1))
    return max(1, min(wanted, vocab // MIN_SPLIT_COLUMNS, _C.MAX_SPLITS))


def _check_buffer(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...], device: torch.device) -> None:
    """The kernels index raw pointers: every buffer must be dense, of an expected dtype and on the device."""
    if t.dtype not in dtypes or t.device != device:
        raise ValueError(f"backend 'cuda': {name} is {t.dtype} on {t.device}; expected {' or '.join(map(str, dtypes))} on {device}")
    if not t.is_contiguous():
        raise ValueError(f"backend 'cuda': {name} has strides {t.stride()} for shape {tuple(t.shape)}; expected a contiguous tensor")


def _launch(entry, z, targets, loss, lse, opts: LossOptions, token_grad: torch.Tensor | None = None) -> None:
    rows, vocab = z.shape
    buffers = {"loss": loss, "lse": lse} | ({} if token_grad is None else {"token_grad": token_grad})
    _check_buffer("logits chunk", z, FLOAT_DTYPES, z.device)
    _check_buffer("targets", targets, (torch.int64,), z.device)
    for name, t in buffers.items():
        _check_buffer(name, t, (torch.float32,), z.device)
    splits = _vocab_splits(rows, vocab, z.device)
    workspace = torch.empty(3, splits, rows, dtype=torch.float32, device=z.device)
    entry(
        logits=z.data_ptr(), dtype=_dtype_code(z.dtype), rows=rows, vocab=vocab, row_stride=z.stride(0),
        targets=targets.data_ptr(), workspace=workspace.data_ptr(), splits=splits,
        ignore_index=opts.ignore_index, label_smoothing=opts.label_smoothing, z_loss=opts.z_loss,
        softcap=opts.softcap or 0.0, device=z.device.index, stream=_stream(z.device),
        **{name: t.data_ptr() for name, t in buffers.items()},
    )


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _dtype_code(dtype: torch.dtype) -> int:
    return {torch.float32: _C.FLOAT32, torch.bfloat16: _C.BFLOAT16, torch.float16: _C.FLOAT16}[dtype]
