"""Triton kernels for fused attention; the "triton" backend of fastscale.ops.attention (see
ops/attention_torch.py for the same math in plain PyTorch).

Every input is packed: q [total, Hq, D], k/v [total, Hkv, D], documents given by cu_seqlens (or, for
a batch, consecutive runs of `seqlen` tokens). Nothing of size T^2 ever reaches global memory.

Forward (FlashAttention-2): a program owns BLOCK_M queries of one document and one head and streams
the document's BLOCK_N-key tiles through an online softmax, in fp32. It saves only the output and
the per-row logsumexp (base 2, of the scaled scores). Key tiles that no row of the program may see
(causal, window, other documents) are never visited; tiles that every row sees fully run without
masks; only tiles straddling an edge are masked.
Backward, deterministic (no atomics, fixed summation order):
  1. delta = rowsum(dO * O) per query row and head;
  2. dK, dV: a program owns BLOCK_N keys of one kv head and loops over the query heads of its group
     (GQA never materializes repeated K/V) and over the query tiles that see its keys;
  3. dQ: a program owns BLOCK_M queries and loops over the key tiles they see.
Recomputing the probabilities in both 2 and 3 costs one extra pair of matmuls over FA2's atomic dQ,
the price of determinism. Token offsets are 64-bit, so total * H * D may exceed 2^31.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastscale.ops._checks import FLOAT_DTYPES

HEAD_DIMS = (32, 64, 96, 128, 256)
LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class KernelConfig:
    block_m: int  # queries per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int


# Shipped configurations by (kernel, head dim, dtype size in bytes); tests compile each for sm_80 and
# sm_90. "dkdv" owns a key tile and streams query tiles, the others own a query tile.
CONFIGS = {}
for _d in HEAD_DIMS:
    _big = _d > 128
    CONFIGS["forward", _d, 2] = KernelConfig(64, 64, 4, 2) if _big else KernelConfig(128, 64, 4 if _d <= 64 else 8, 3)
    CONFIGS["forward", _d, 4] = KernelConfig(64, 32, 4, 2) if _big else KernelConfig(64, 64, 4, 2)
    CONFIGS["dkdv", _d, 2] = KernelConfig(64, 64, 4, 1) if _big else KernelConfig(64, 128, 8, 2)
    CONFIGS["dkdv", _d, 4] = KernelConfig(32, 64, 4, 1) if _big else KernelConfig(32, 64, 4, 2)
    CONFIGS["dq", _d, 2] = KernelConfig(64, 64, 4, 1) if _big else KernelConfig(128, 64, 8, 2)
    CONFIGS["dq", _d, 4] = KernelConfig(64, 32, 4, 1) if _big else KernelConfig(64, 32, 4, 2)
# Under the interpreter programs run one after another on the CPU: big tiles mean few of them.
# Unequal tiles keep the query/key range logic honest, as in the shipped configurations.
INTERPRETER_CONFIG = KernelConfig(64, 32, 4, 1)
DELTA_BLOCK = 64


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def config_for(kernel: str, head_dim: int, dtype: torch.dtype) -> KernelConfig:
    return INTERPRETER_CONFIG if interpreting() else CONFIGS[kernel, head_dim, dtype.itemsize]


def unsupported(dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the kernels cannot serve these inputs, or None."""
    if dtype not in FLOAT_DTYPES:
        return f"supports {[str(d) for d in FLOAT_DTYPES]} (got {dtype})"
    if head_dim not in HEAD_DIMS:
        return f"supports head dims {HEAD_DIMS} (got {head_dim})"
    return None


# ---------------------------------------------------------------------------------------------- helpers


@triton.jit
def _document(cu_seqlens, doc, seqlen, VARLEN: tl.constexpr):
    """First token (64-bit) and length of document `doc`."""
    if VARLEN:
        start = tl.load(cu_seqlens + doc)
        length = tl.load(cu_seqlens + doc + 1) - start
    else:
        start = doc * seqlen
        length = seqlen
    return start.to(tl.int64), length


@triton.jit
def _tile_bounds(first, last, all_first, all_last, BLOCK: tl.constexpr):
    """Tiles to visit along one axis, as (lo, full_lo, full_hi, last): some row or column of the
    program sees positions [first, last), every one sees [all_first, all_last). Tiles starting in
    [lo, full_lo) and [full_hi, last) need masks; tiles in [full_lo, full_hi) need none."""
    lo = first // BLOCK * BLOCK
    full_lo = tl.minimum(tl.cdiv(all_first, BLOCK), tl.cdiv(last, BLOCK)) * BLOCK
    full_hi = tl.maximum(all_last // BLOCK * BLOCK, full_lo)
    return lo, full_lo, full_hi, last


@triton.jit
def _key_bounds(m0, m1, length, window, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tiles for queries [m0, m1) of a document of `length` tokens."""
    first = 0
    last = length
    all_first = 0
    all_last = length
    if CAUSAL:
        last = m1
        all_last = m0 + 1
    if WINDOWED:
        first = tl.maximum(m0 - window + 1, 0)
        all_first = tl.maximum(m1 - window, 0)
        if not CAUSAL:
            last = tl.minimum(m1 - 1 + window, length)
            all_last = tl.minimum(m0 + window, length)
    return _tile_bounds(first, last, all_first, all_last, BLOCK_N)


@triton.jit
def _query_bounds(n0, n1, length, window, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr):
    """Query tiles that see keys [n0, n1) of a document of `length` tokens."""
    first = 0
    last = length
    all_first = 0
    all_last = length
    if CAUSAL:
        first = n0
        all_first = n1 - 1
    if WINDOWED:
        last = tl.minimum(n1 - 1 + window, length)
        all_last = tl.minimum(n0 + window, length)
        if not CAUSAL:
            first = tl.maximum(n0 - window + 1, 0)
            all_first = tl.maximum(n1 - window, 0)
    return _tile_bounds(first, last, all_first, all_last, BLOCK_M)


@triton.jit
def _visible(rows, cols, length, window, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """[rows, cols] mask: query `rows[i]` may see key `cols[j]` of the same document."""
    ok = (rows[:, None] < length) & (cols[None, :] < length)
    if CAUSAL:
        ok &= cols[None, :] <= rows[:, None]
    if WINDOWED:
        ok &= rows[:, None] - cols[None, :] < window
        if not CAUSAL:
            ok &= cols[None, :] - rows[:, None] < window
    return ok


@triton.jit
def _load_tile(ptr, rows, stride, length, cols, HEAD_DIM: tl.constexpr, MASK_ROWS: tl.constexpr):
    """[rows, cols] tile of a [tokens, D] matrix with row stride `stride`; zeros outside."""
    ptrs = ptr + rows.to(tl.int64)[:, None] * stride + cols[None, :]
    if MASK_ROWS:
        return tl.load(ptrs, mask=(rows[:, None] < length) & (cols[None, :] < HEAD_DIM), other=0.0)
    if HEAD_DIM != cols.shape[0]:
        return tl.load(ptrs, mask=cols[None, :] < HEAD_DIM, other=0.0)
    return tl.load(ptrs)


# ---------------------------------------------------------------------------------------------- forward


@triton.jit
def _forward_tiles(acc, m_i, l_i, q, k_ptr, v_ptr, stride_kt, stride_vt, rows, cols, lo, hi, length, window,
                   qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                   CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Folds key tiles [lo, hi) into the running output `acc`, row maxima `m_i` and sums `l_i`."""
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_ptr, keys, stride_kt, length, cols, HEAD_DIM, MASKED)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            s = tl.where(_visible(rows, keys, length, window, CAUSAL, WINDOWED), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:  # a row may have seen no key yet: keep exp2 away from -inf - -inf
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_ptr, keys, stride_vt, length, cols, HEAD_DIM, MASKED)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _forward_kernel(
    Q, K, V, O, LSE, cu_seqlens, seqlen, total, group, window, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Axis 0 walks documents and their query tiles, longest-running (last, when causal) tiles first.
    tiles = tl.cdiv(seqlen, BLOCK_M)
    doc = tl.program_id(0) // tiles
    tile = tiles - 1 - tl.program_id(0) % tiles
    head = tl.program_id(1)
    start, length = _document(cu_seqlens, doc, seqlen, VARLEN)
    m0 = tile * BLOCK_M
    if m0 >= length:
        return
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    kv_head = head // group
    q = _load_tile(Q + start * stride_qt + head * stride_qh, rows, stride_qt, length, cols, HEAD_DIM, True)
    k_ptr = K + start * stride_kt + kv_head * stride_kh
    v_ptr = V + start * stride_vt + kv_head * stride_vh

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    lo, full_lo, full_hi, hi = _key_bounds(m0, tl.minimum(m0 + BLOCK_M, length), length, window, CAUSAL, WINDOWED, BLOCK_N)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_ptr, v_ptr, stride_kt, stride_vt, rows, cols, lo, full_lo,
                                   length, window, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL, WINDOWED, DOT_PRECISION)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_ptr, v_ptr, stride_kt, stride_vt, rows, cols, full_lo, full_hi,
                                   length, window, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL, WINDOWED, DOT_PRECISION)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_ptr, v_ptr, stride_kt, stride_vt, rows, cols, full_hi, hi,
                                   length, window, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL, WINDOWED, DOT_PRECISION)

    in_doc = rows < length
    l_i = tl.where(in_doc, l_i, 1.0)  # rows past the document saw nothing; they are not stored
    out = acc / l_i[:, None]
    o_ptrs = O + start * stride_ot + head * stride_oh + rows.to(tl.int64)[:, None] * stride_ot + cols[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=in_doc[:, None] & (cols[None, :] < HEAD_DIM))
    tl.store(LSE + head * total + start + rows, m_i + tl.math.log2(l_i), mask=in_doc)


# ---------------------------------------------------------------------------------------------- backward


@triton.jit
def _delta_kernel(O, dO, DELTA, total, stride_ot, stride_oh, stride_dot, stride_doh,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr):
    """DELTA[head, t] = sum_d dO[t, head, d] * O[t, head, d], in fp32."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    head = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    o = _load_tile(O + head * stride_oh, rows, stride_ot, total, cols, HEAD_DIM, True)
    do = _load_tile(dO + head * stride_doh, rows, stride_dot, total, cols, HEAD_DIM, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + head * total + rows, delta, mask=rows < total)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qt, stride_dot, keys, cols, lo, hi,
                length, window, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
                CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Adds the contributions of query tiles [lo, hi) of one head to dk, dv (transposed scores:
    [keys, queries], so that the per-query lse and delta broadcast along rows)."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(q_ptr, rows, stride_qt, length, cols, HEAD_DIM, MASKED)
        do = _load_tile(do_ptr, rows, stride_dot, length, cols, HEAD_DIM, MASKED)
        if MASKED:
            lse = tl.load(lse_ptr + rows, mask=rows < length, other=0.0)
            delta = tl.load(delta_ptr + rows, mask=rows < length, other=0.0)
        else:
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        p_t = tl.math.exp2(s_t - lse[None, :])
        if MASKED:
            p_t = tl.where(tl.trans(_visible(rows, keys, length, window, CAUSAL, WINDOWED)), p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dkdv_kernel(
    Q, K, V, dO, LSE, DELTA, dK, dV, cu_seqlens, seqlen, total, group, window, qk_scale, scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    tiles = tl.cdiv(seqlen, BLOCK_N)
    doc = tl.program_id(0) // tiles
    tile = tl.program_id(0) % tiles  # causal: first key tiles see the most queries
    kv_head = tl.program_id(1)
    start, length = _document(cu_seqlens, doc, seqlen, VARLEN)
    n0 = tile * BLOCK_N
    if n0 >= length:
        return
    keys = n0 + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    k = _load_tile(K + start * stride_kt + kv_head * stride_kh, keys, stride_kt, length, cols, HEAD_DIM, True)
    v = _load_tile(V + start * stride_vt + kv_head * stride_vh, keys, stride_vt, length, cols, HEAD_DIM, True)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    lo, full_lo, full_hi, hi = _query_bounds(n0, tl.minimum(n0 + BLOCK_N, length), length, window, CAUSAL, WINDOWED, BLOCK_M)
    for head in range(kv_head * group, kv_head * group + group):
        q_ptr = Q + start * stride_qt + head * stride_qh
        do_ptr = dO + start * stride_dot + head * stride_doh
        lse_ptr = LSE + head * total + start
        delta_ptr = DELTA + head * total + start
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qt, stride_dot, keys, cols, lo, full_lo,
                             length, window, qk_scale, HEAD_DIM, BLOCK_M, True, CAUSAL, WINDOWED, DOT_PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qt, stride_dot, keys, cols, full_lo, full_hi,
                             length, window, qk_scale, HEAD_DIM, BLOCK_M, False, CAUSAL, WINDOWED, DOT_PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qt, stride_dot, keys, cols, full_hi, hi,
                             length, window, qk_scale, HEAD_DIM, BLOCK_M, True, CAUSAL, WINDOWED, DOT_PRECISION)

    store = (keys[:, None] < length) & (cols[None, :] < HEAD_DIM)
    offsets = keys.to(tl.int64)[:, None]
    tl.store(dK + start * stride_dkt + kv_head * stride_dkh + offsets * stride_dkt + cols[None, :],
             (dk * scale).to(dK.dtype.element_ty), mask=store)
    tl.store(dV + start * stride_dvt + kv_head * stride_dvh + offsets * stride_dvt + cols[None, :],
             dv.to(dV.dtype.element_ty), mask=store)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_ptr, v_ptr, stride_kt, stride_vt, rows, cols, lo, hi, length, window,
              qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Adds the contributions of key tiles [lo, hi) to dq."""
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_ptr, keys, stride_kt, length, cols, HEAD_DIM, MASKED)
        v = _load_tile(v_ptr, keys, stride_vt, length, cols, HEAD_DIM, MASKED)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            p = tl.where(_visible(rows, keys, length, window, CAUSAL, WINDOWED), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _dq_kernel(
    Q, K, V, dO, LSE, DELTA, dQ, cu_seqlens, seqlen, total, group, window, qk_scale, scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, stride_dqt, stride_dqh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    tiles = tl.cdiv(seqlen, BLOCK_M)
    doc = tl.program_id(0) // tiles
    tile = tiles - 1 - tl.program_id(0) % tiles
    head = tl.program_id(1)
    start, length = _document(cu_seqlens, doc, seqlen, VARLEN)
    m0 = tile * BLOCK_M
    if m0 >= length:
        return
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    kv_head = head // group
    q = _load_tile(Q + start * stride_qt + head * stride_qh, rows, stride_qt, length, cols, HEAD_DIM, True)
    do = _load_tile(dO + start * stride_dot + head * stride_doh, rows, stride_dot, length, cols, HEAD_DIM, True)
    lse = tl.load(LSE + head * total + start + rows, mask=rows < length, other=0.0)
    delta = tl.load(DELTA + head * total + start + rows, mask=rows < length, other=0.0)
    k_ptr = K + start * stride_kt + kv_head * stride_kh
    v_ptr = V + start * stride_vt + kv_head * stride_vh

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    lo, full_lo, full_hi, hi = _key_bounds(m0, tl.minimum(m0 + BLOCK_M, length), length, window, CAUSAL, WINDOWED, BLOCK_N)
    dq = _dq_tiles(dq, q, do, lse, delta, k_ptr, v_ptr, stride_kt, stride_vt, rows, cols, lo, full_lo, length, window,
                   qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL, WINDOWED, DOT_PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, k_ptr, v_ptr, stride_kt, stride_vt, rows, cols, full_lo, full_hi, length, window,
                   qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL, WINDOWED, DOT_PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, k_ptr, v_ptr, stride_kt, stride_vt, rows, cols, full_hi, hi, length, window,
                   qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL, WINDOWED, DOT_PRECISION)

    store = (rows[:, None] < length) & (cols[None, :] < HEAD_DIM)
    tl.store(dQ + start * stride_dqt + head * stride_dqh + rows.to(tl.int64)[:, None] * stride_dqt + cols[None, :],
             (dq * scale).to(dQ.dtype.element_ty), mask=store)


# ---------------------------------------------------------------------------------------------- launchers


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer the kernels write comes from here (tests poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get full fp32 products, as torch.matmul gives by default (no silent TF32).
    return "ieee" if dtype == torch.float32 else "tf32"


def _layout(q, cu_seqlens, seqlen) -> tuple[int, torch.Tensor, dict]:
    """(documents, the cu_seqlens pointer argument, constexprs shared by all kernels)."""
    varlen = cu_seqlens is not None
    docs = cu_seqlens.shape[0] - 1 if varlen else q.shape[0] // seqlen
    head_dim = q.shape[-1]
    meta = dict(HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), VARLEN=varlen, DOT_PRECISION=_dot_precision(q.dtype))
    # Without cu_seqlens the pointer is never read; any int32 tensor on the device fills the slot.
    return docs, cu_seqlens if varlen else torch.zeros(1, dtype=torch.int32, device=q.device), meta


def _options(causal, window, cfg: KernelConfig) -> dict:
    return dict(CAUSAL=causal, WINDOWED=window is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def forward(q, k, v, cu_seqlens, seqlen, *, causal, window, scale):
    """q [total, Hq, D], k/v [total, Hkv, D] -> (out like q, lse [Hq, total] fp32, base 2).
    Documents are cu_seqlens's, or runs of `seqlen` tokens without it; seqlen bounds their length."""
    q, k, v = (_row_major(x) for x in (q, k, v))
    total, heads_q, head_dim = q.shape
    docs, cu, meta = _layout(q, cu_seqlens, seqlen)
    cfg = config_for("forward", head_dim, q.dtype)
    out = _empty(q.shape, q.dtype, q.device)
    lse = _empty((heads_q, total), torch.float32, q.device)
    grid = (docs * triton.cdiv(seqlen, cfg.block_m), heads_q)
    _forward_kernel[grid](
        q, k, v, out, lse, cu, seqlen, total, heads_q // k.shape[1], window or 0, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        **meta, **_options(causal, window, cfg),
    )
    return out, lse


def backward(grad_out, q, k, v, out, lse, cu_seqlens, *, max_seqlen, causal, window, scale):
    """Gradients (dq, dk, dv) of the forward pass from the upstream gradient grad_out, deterministically."""
    grad_out, q, k, v = (_row_major(x) for x in (grad_out, q, k, v))
    total, heads_q, head_dim = q.shape
    heads_kv, group = k.shape[1], q.shape[1] // k.shape[1]
    docs, cu, meta = _layout(q, cu_seqlens, max_seqlen)
    qk_scale = scale * LOG2E

    delta = _empty((heads_q, total), torch.float32, q.device)
    _delta_kernel[(triton.cdiv(total, DELTA_BLOCK), heads_q)](
        out, grad_out, delta, total, out.stride(0), out.stride(1), grad_out.stride(0), grad_out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=meta["BLOCK_D"], BLOCK=DELTA_BLOCK,
    )
    dq, dk, dv = (_empty(x.shape, x.dtype, x.device) for x in (q, k, v))
    common = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), grad_out.stride(0), grad_out.stride(1))

    cfg = config_for("dkdv", head_dim, q.dtype)
    _dkdv_kernel[(docs * triton.cdiv(max_seqlen, cfg.block_n), heads_kv)](
        q, k, v, grad_out, lse, delta, dk, dv, cu, max_seqlen, total, group, window or 0, qk_scale, scale,
        *common, dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        **meta, **_options(causal, window, cfg),
    )
    cfg = config_for("dq", head_dim, q.dtype)
    _dq_kernel[(docs * triton.cdiv(max_seqlen, cfg.block_m), heads_q)](
        q, k, v, grad_out, lse, delta, dq, cu, max_seqlen, total, group, window or 0, qk_scale, scale,
        *common, dq.stride(0), dq.stride(1),
        **meta, **_options(causal, window, cfg),
    )
    return dq, dk, dv
