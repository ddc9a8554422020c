"""Triton kernels for fused linear + softmax cross-entropy; the "triton" backend of
fastscale.ops.linear_cross_entropy (see ops/cross_entropy_torch.py for the math in plain PyTorch).

Forward: each program takes BLOCK_M tokens and one split of the vocabulary, computes logit tiles
hidden @ weight.T on the fly (fp32 accumulation) and folds them into an online logsumexp, the
target logit and the sum of logits. Splitting the vocabulary keeps the GPU busy when there are few
tokens; the per-split partials [splits, N] are combined in PyTorch.
Backward: each program recomputes one [BLOCK_M, BLOCK_N] logit tile, forms d loss / d logits in
registers and adds its contributions to d hidden and d weight (and d bias) with fp32 atomic adds.
No logits buffer exists in either direction. The atomics make the summation order, and so the last
bits of the gradients, vary from run to run (as in cut-cross-entropy).
All index arithmetic on hidden and weight is 64-bit, so tokens * V and V * d may exceed 2^31.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastscale.ops._checks import FLOAT_DTYPES
from fastscale.ops.cross_entropy_torch import LossOptions


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# Shipped configurations by (kernel, dtype size in bytes); tests compile each for sm_80 and sm_90 and
# require zero spills. The [BLOCK_M, BLOCK_K] / [BLOCK_N, BLOCK_K] operand pointer tiles cost registers
# too, hence the small K blocks. fp32 operands run on FMA units (no silent TF32) and need far more
# registers per product, hence the smaller tiles.
CONFIGS = {
    ("forward", 2): KernelConfig(128, 64, 32, 8, 3),
    ("forward", 4): KernelConfig(64, 64, 8, 4, 2),
    ("backward", 2): KernelConfig(128, 64, 32, 8, 2),
    ("backward", 4): KernelConfig(64, 64, 16, 8, 2),
}
# Under the interpreter every program runs serially on the CPU: big tiles mean few of them.
INTERPRETER_CONFIG = KernelConfig(64, 512, 64, 4, 1)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def config_for(kernel: str, dtype: torch.dtype) -> KernelConfig:
    return INTERPRETER_CONFIG if interpreting() else CONFIGS[(kernel, dtype.itemsize)]


@triton.jit
def _tanh(x):
    # tanh from exp (libdevice is unavailable in the interpreter); exp overflow gives +-1 exactly.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _logit_tile(
    h_ptr, w_ptr, b_ptr, rows, cols, N, V, D, stride_h, stride_w, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The [BLOCK_M, BLOCK_N] tile of (capped) logits in fp32; padding rows and columns hold junk."""
    ks = tl.arange(0, BLOCK_K)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, D, BLOCK_K):
        kk = k + ks
        x = tl.load(h_rows + kk[None, :], mask=(rows[:, None] < N) & (kk[None, :] < D), other=0.0)
        y = tl.load(w_rows + kk[None, :], mask=(cols[:, None] < V) & (kk[None, :] < D), other=0.0)
        acc = tl.dot(x, tl.trans(y), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)[None, :]
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc


@triton.jit
def _forward_kernel(
    h_ptr, w_ptr, b_ptr, t_ptr, max_ptr, sumexp_ptr, target_ptr, sum_ptr,
    N, V, D, stride_h, stride_w, tiles_per_split, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    targets = tl.load(t_ptr + rows, mask=rows < N, other=-1)
    row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    row_sumexp = tl.zeros((BLOCK_M,), dtype=tl.float32)
    row_target = tl.zeros((BLOCK_M,), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(V, BLOCK_N))
    for tile in range(first, last):
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        z = _logit_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, D, stride_h, stride_w, softcap,
                        HAS_BIAS, HAS_SOFTCAP, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        in_vocab = cols[None, :] < V
        z = tl.where(in_vocab, z, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(z, axis=1))
        row_sumexp = row_sumexp * tl.exp(row_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        row_max = new_max
        row_target += tl.sum(tl.where(cols[None, :] == targets[:, None], z, 0.0), axis=1)
        row_sum += tl.sum(tl.where(in_vocab, z, 0.0), axis=1)
    out = split * N + rows
    tl.store(max_ptr + out, row_max, mask=rows < N)
    tl.store(sumexp_ptr + out, row_sumexp, mask=rows < N)
    tl.store(target_ptr + out, row_target, mask=rows < N)
    tl.store(sum_ptr + out, row_sum, mask=rows < N)


@triton.jit
def _backward_kernel(
    h_ptr, w_ptr, b_ptr, t_ptr, lse_ptr, g_ptr, dh_ptr, dw_ptr, db_ptr,
    N, V, D, stride_h, stride_w, softcap, label_smoothing, z_loss,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    col_ok = cols < V
    targets = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    grad = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
    z = _logit_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, D, stride_h, stride_w, softcap,
                    HAS_BIAS, HAS_SOFTCAP, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    p = tl.exp(z - lse[:, None]) * (1.0 + 2.0 * z_loss * lse)[:, None]
    dz = p - tl.where(cols[None, :] == targets[:, None], 1.0 - label_smoothing, 0.0) - label_smoothing / V
    dz = dz * grad[:, None]
    if HAS_SOFTCAP:
        zc = z / softcap
        dz = dz * (1.0 - zc * zc)
    dz = tl.where(row_ok[:, None] & col_ok[None, :], dz, 0.0)
    if HAS_BIAS:
        tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0), mask=col_ok)
    dz_in = dz.to(h_ptr.dtype.element_ty)
    ks = tl.arange(0, BLOCK_K)
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    for k in range(0, D, BLOCK_K):
        kk = k + ks
        h_mask = row_ok[:, None] & (kk[None, :] < D)
        w_mask = col_ok[:, None] & (kk[None, :] < D)
        x = tl.load(h_ptr + rows64[:, None] * stride_h + kk[None, :], mask=h_mask, other=0.0)
        y = tl.load(w_ptr + cols64[:, None] * stride_w + kk[None, :], mask=w_mask, other=0.0)
        d_h = tl.dot(dz_in, y, input_precision=DOT_PRECISION)
        tl.atomic_add(dh_ptr + rows64[:, None] * D + kk[None, :], d_h, mask=h_mask)
        d_w = tl.dot(tl.trans(dz_in), x, input_precision=DOT_PRECISION)
        tl.atomic_add(dw_ptr + cols64[:, None] * D + kk[None, :], d_w, mask=w_mask)


def check_supported(hidden: torch.Tensor) -> None:
    if hidden.dtype not in FLOAT_DTYPES:
        raise TypeError(f"backend 'triton': hidden dtype {hidden.dtype} is not supported; expected one of {[str(d) for d in FLOAT_DTYPES]}")
    if not hidden.is_cuda and not interpreting():
        raise ValueError(f"backend 'triton': tensors are on {hidden.device}; it needs CUDA tensors (or TRITON_INTERPRET=1 to interpret on the CPU)")


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get full fp32 products, as torch.matmul gives by default (no silent TF32).
    return "ieee" if dtype == torch.float32 else "tf32"


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _vocab_splits(n_row_blocks: int, n_tiles: int, device: torch.device) -> tuple[int, int]:
    """(splits, tiles per split): enough programs to fill every SM twice."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    splits = max(1, min(n_tiles, math.ceil(2 * sms / max(n_row_blocks, 1))))
    per_split = math.ceil(n_tiles / splits)
    return math.ceil(n_tiles / per_split), per_split


def _common_args(hidden, weight, bias, opts: LossOptions) -> dict:
    return dict(
        HAS_BIAS=bias is not None,
        HAS_SOFTCAP=opts.softcap is not None,
        DOT_PRECISION=_dot_precision(hidden.dtype),
    )


def forward(hidden, weight, bias, targets, opts: LossOptions):
    hidden, weight = _row_major(hidden), _row_major(weight)
    (n, d), vocab = hidden.shape, weight.shape[0]
    cfg = config_for("forward", hidden.dtype)
    n_row_blocks = triton.cdiv(n, cfg.block_m)
    splits, per_split = _vocab_splits(n_row_blocks, triton.cdiv(vocab, cfg.block_n), hidden.device)
    partials = torch.empty(4, splits, n, dtype=torch.float32, device=hidden.device)
    if n:
        _forward_kernel[(n_row_blocks, splits)](
            hidden, weight, bias, targets, *partials,
            n, vocab, d, hidden.stride(0), weight.stride(0), per_split, opts.softcap or 1.0,
            **_common_args(hidden, weight, bias, opts),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    split_max, split_sumexp, split_target, split_sum = partials
    row_max = split_max.max(dim=0).values
    lse = row_max + torch.log((split_sumexp * torch.exp(split_max - row_max)).sum(dim=0))
    loss = lse - (1 - opts.label_smoothing) * split_target.sum(dim=0)
    if opts.label_smoothing:
        loss -= opts.label_smoothing / vocab * split_sum.sum(dim=0)
    if opts.z_loss:
        loss += opts.z_loss * lse.square()
    return torch.where(targets != opts.ignore_index, loss, 0.0), lse


def gradients(hidden, weight, bias, targets, token_grad, opts: LossOptions):
    hidden, weight = _row_major(hidden), _row_major(weight)
    loss, lse = forward(hidden, weight, bias, targets, opts)
    (n, d), vocab = hidden.shape, weight.shape[0]
    cfg = config_for("backward", hidden.dtype)
    d_hidden = torch.zeros(n, d, dtype=torch.float32, device=hidden.device)
    d_weight = torch.zeros(vocab, d, dtype=torch.float32, device=hidden.device)
    d_bias = torch.zeros(vocab, dtype=torch.float32, device=hidden.device) if bias is not None else None
    if n:
        _backward_kernel[(triton.cdiv(n, cfg.block_m), triton.cdiv(vocab, cfg.block_n))](
            hidden, weight, bias, targets, lse, token_grad.float().contiguous(), d_hidden, d_weight, d_bias,
            n, vocab, d, hidden.stride(0), weight.stride(0), opts.softcap or 1.0, opts.label_smoothing, opts.z_loss,
            **_common_args(hidden, weight, bias, opts),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return (
        d_hidden.to(hidden.dtype),
        d_weight.to(weight.dtype),
        None if d_bias is None else d_bias.to(bias.dtype),
        loss,
        lse,
    )


_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# The shape the shipped configurations are specialized for (tokens 32k, V 128k, d 4096): every size
# and stride there is divisible by 16, as a real launch at that shape would tell the compiler.
TARGET_SHAPE = dict(N=32768, V=131072, D=4096)


def shipped_configurations(arch: int):
    """Every (kernel, dtype, bias, softcap) this module launches on sm_<arch>, as aot.CompileSpec
    specialized as a launch at TARGET_SHAPE specializes it."""
    from fastscale.kernels.aot import CompileSpec, divisibility_attrs

    for kernel_name, fn in (("forward", _forward_kernel), ("backward", _backward_kernel)):
        for dtype, ty in _TRITON_DTYPES.items():
            cfg = CONFIGS[(kernel_name, dtype.itemsize)]
            for has_bias in (False, True):
                for has_softcap in (False, True):
                    constexprs = dict(
                        HAS_BIAS=has_bias, HAS_SOFTCAP=has_softcap, DOT_PRECISION=_dot_precision(dtype),
                        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                    )
                    signature = _signature(fn, ty)
                    divisible = {"N", "V", "D", "stride_h", "stride_w", "tiles_per_split"}
                    yield CompileSpec(
                        fn=fn, signature=signature, constexprs=constexprs,
                        attrs=divisibility_attrs(fn, signature, divisible),
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                        label=f"{kernel_name} {ty} bias={has_bias} softcap={has_softcap}",
                    )


def _signature(fn, ty: str) -> dict:
    named = {"h_ptr": f"*{ty}", "w_ptr": f"*{ty}", "b_ptr": f"*{ty}", "t_ptr": "*i64",
             "softcap": "fp32", "label_smoothing": "fp32", "z_loss": "fp32"}
    signature = {}
    for param in fn.params:
        if param.is_constexpr:
            signature[param.name] = "constexpr"
        else:
            signature[param.name] = named.get(param.name, "*fp32" if param.name.endswith("_ptr") else "i32")
    return signature
