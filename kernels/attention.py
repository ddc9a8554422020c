"""Triton kernels for fused attention; the "triton" backend of fastscale.ops.attention (see
ops/attention_torch.py for the same math in plain PyTorch).

Every input is packed: q [total, Hq, D], k/v [total, Hkv, D], documents given by cu_seqlens (or, for
a batch, consecutive runs of `seqlen` tokens). Nothing of size T^2 ever reaches global memory. The
launchers validate nothing; the kernels clamp each document into [0, total) (_document), so no offset
makes them read or write outside the tensors.

Forward (FlashAttention-2): a program owns BLOCK_M queries of one document and one head and streams
the document's BLOCK_N-key tiles through an online softmax, in fp32. It saves only the output and
the per-row logsumexp (base 2, of the scaled scores). Key tiles that no row of the program may see
(causal, window, other documents) are never visited; only tiles straddling an edge of what the
rows see are masked (a branch that is uniform over the program).
Backward, deterministic (no atomics, fixed summation order):
  1. delta = rowsum(dO * O) per query row and head;
  2. dK, dV: a program owns BLOCK_N keys of one kv head and loops over the query heads of its group
     (GQA never materializes repeated K/V) and over the query tiles that see its keys;
  3. dQ: a program owns BLOCK_M queries and loops over the key tiles they see.
Recomputing the probabilities in both 2 and 3 costs one extra pair of matmuls over FA2's atomic dQ,
the price of determinism. Tile base addresses are 64-bit, so total * H * D may exceed 2^31.
Inputs are bfloat16 or float16 (tensor-core operands); accumulation, softmax and lse are fp32.

Tiles come from per-architecture tables (TILES, with the reasoning beside them), picked by the
device's compute capability; any head dim up to 256 runs at the next power-of-two tile width, its
padded columns loaded as zeros under a mask. Tiles are loaded with pointer arithmetic and cp.async,
not TMA tensor descriptors, on every architecture. Descriptors made in the kernel
(tl.make_tensor_descriptor) could express a packed document's bounds (shape = the document's length:
TMA zero-fills past it) and the padded columns, and they were tried on the sm_90 dK/dV kernel at d128,
64x128, 2 stages: spills fell from 144 to 32 B but did not vanish; each descriptor costs a global
write and a tensormap fence (fence.proxy.tensormap::generic.acquire.gpu, release.gpu), and Triton
needs triton.set_allocator for their scratch at every launch: not worth it without the spill gone.
Host descriptors (triton.tools.tensor_descriptor) have one shape for the whole packed tensor, so they
cannot stop at a document's end. A GPU measurement should decide the next step (TMA with warp
specialization, as FlashAttention-3 does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastscale.backends import interpreting

DTYPES = (torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256
# Head dims are served at the next tile width (a power of two, for tl.arange): 80 and 96 run at 128
# (the padded columns are zeros, loaded under a mask and never stored: 128/96 = 1.33x the matmul
# FLOPs at 96, 1.6x at 80; the softmax costs the same). Splitting 96 into 64 + 32 column blocks would
# save that but doubles every tile load, dot and pointer set in all three kernels. Widths below 32
# would save nothing worth a table entry (d <= 32 is softmax-bound).
WIDTHS = (32, 64, 128, 256)
LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class KernelConfig:
    block_m: int  # queries per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int


# Tiles by architecture, (kernel, width) -> (BLOCK_M, BLOCK_N, num_warps, num_stages). "dkdv" owns
# BLOCK_N keys and streams BLOCK_M-query tiles; "forward" and "dq" own BLOCK_M queries and stream
# BLOCK_N-key tiles. Every entry compiles with no spill (ptxas spill stores/loads 0, stack 0) within
# the arch's shared memory: tests/kernels compile every one of them (shipped_configurations). Register
# and shared-memory figures below are ptxas's for the batched causal bf16 variant. See "Why these
# tiles" at the end of this table.
TILES = {
    # sm_80 (A100): mma.sync m16n8k16, 64K registers, cp.async. Also every other device that is
    # neither sm_90 nor sm_100 (sm_86/89 and the consumer Blackwell sm_120 have mma.sync and 99 KB of
    # shared memory per block), so every entry fits 99 KB.
    80: {
        ("forward", 32): (128, 64, 8, 3), ("forward", 64): (128, 64, 8, 3),
        ("forward", 128): (128, 64, 8, 2), ("forward", 256): (64, 32, 8, 2),
        ("dkdv", 32): (32, 128, 8, 2), ("dkdv", 64): (32, 128, 8, 2),
        ("dkdv", 128): (32, 64, 8, 2), ("dkdv", 256): (16, 32, 4, 1),
        ("dq", 32): (128, 64, 8, 2), ("dq", 64): (128, 32, 8, 2),
        ("dq", 128): (64, 64, 8, 2), ("dq", 256): (32, 32, 4, 1),
    },
    # sm_90 (H100): wgmma. A warpgroup (4 warps) multiplies 64 rows; Triton puts a dot on wgmma only
    # when its M side is a multiple of 64 * warpgroups (else it splits N across warpgroups, or falls
    # back to mma.sync), so 8 warps want M = 128 and 4 warps M = 64.
    90: {
        ("forward", 32): (128, 128, 8, 3), ("forward", 64): (128, 128, 8, 3),
        ("forward", 128): (128, 64, 8, 3), ("forward", 256): (128, 32, 8, 2),
        ("dkdv", 32): (64, 128, 8, 3), ("dkdv", 64): (64, 128, 8, 3),
        ("dkdv", 128): (32, 128, 8, 2), ("dkdv", 256): (16, 32, 4, 1),
        ("dq", 32): (128, 128, 8, 3), ("dq", 64): (128, 128, 8, 3),
        ("dq", 128): (128, 64, 8, 3), ("dq", 256): (128, 32, 8, 2),
    },
    # sm_100 (B200): tcgen05 MMAs accumulate in tensor memory (UTCHMMA in SASS).
    100: {
        ("forward", 32): (128, 128, 8, 3), ("forward", 64): (128, 128, 8, 3),
        ("forward", 128): (128, 64, 8, 3), ("forward", 256): (128, 32, 8, 2),
        ("dkdv", 32): (64, 128, 8, 3), ("dkdv", 64): (64, 128, 8, 3),
        ("dkdv", 128): (64, 128, 8, 1), ("dkdv", 256): (16, 32, 4, 1),
        ("dq", 32): (128, 128, 8, 3), ("dq", 64): (128, 128, 8, 3),
        ("dq", 128): (128, 64, 8, 2), ("dq", 256): (128, 32, 8, 1),
    },
}
# Why these tiles (Triton 3.9, compiled with the launch specialization; registers, shared bytes and
# SASS read with ptxas -v and cuobjdump -sass; B = bytes):
#
# Registers decide everything. One CTA of 8 warps may use all 64K registers (255 per thread); the fp32
# accumulators alone take BLOCK x width x 4 B: the forward's O tile at 128 x 128 is 64 KB (64 regs per
# thread at 8 warps), the dK + dV tiles at 128 keys x 128 are 128 KB (128 regs), plus the fp32
# score, probability and dP tiles (32 regs each at 128 x 64). So every wide tile runs one CTA per SM,
# and latency is hidden by cp.async stages, not by other CTAs.
#
# sm_90. Every main matmul (QK^T, PV; in the backward K Q^T, V dO^T, P^T dO, dS^T Q; S, dP, dS K) is
# wgmma at every width but 256's dK/dV, with N = BLOCK_N, BLOCK_M or the width: >= 64 except at width
# 32, where N is the head dim itself (padding 32 to 64 would double the MMA work of kernels the exp2
# units nearly bound already), and where a 64-wide tile leaves no registers: K Q^T and V dO^T of the
# dK/dV kernel at 128, QK^T of the forward and S, dP of dQ at 256 (below). Every entry is checked
# spill-free in six variants (causal or not x window or not x packed or batched, sizes divisible by 16
# or not), not only the two shipped_configurations compiles: tiles at 255 registers pass in one and
# spill in another. The matmuls whose left operand is a probability tile take it from
# registers (HGMMA ... R, gdesc), the others from shared memory. Before these tables (one 128x64 tile
# at 8 warps for every forward; 32-query dK/dV tiles) the backward compiled to HGMMA.64x16x16 and
# 64x32x16 and dQ at d128 waited on every wgmma (28 WARPGROUP.DEPBAR); now (batched causal bf16):
#   forward d64  128x128 w8 s3: 211 regs, 115712 B, HGMMA.64x128x16 (QK^T) + 64x64x16 (PV)
#   forward d128 128x64  w8 s3: 207 regs, 132096 B, HGMMA.64x64x16 (QK^T) + 64x128x16 (PV), up to 228
#                regs in the other variants. 128x128 at 2 stages (255 regs, HGMMA.64x128x16 for both)
#                leaves 8 B of stack in the non-causal batch; at 3 stages 8 B and 230 KB.
#   forward d256 128x32  w8 s2: 239 regs, 132096 B, 64x32x16 (QK^T) + 64x256x16 (PV): QK^T narrow
#                because 128x64 (1 stage, 254 regs) spills 12-36 B packed + causal + window and for
#                a batch whose length is not a multiple of 16, with 2 stages 8 B of stack; 64-query
#                tiles spill (4 warps) or split N to 32 (8 warps)
#   dkdv d64     64x128  w8 s3: 241 regs,  83968 B, HGMMA.64x64x16 for all four
#   dkdv d128    32x128  w8 s2: 250 regs,  99584 B, 64x32x16 (K Q^T, V dO^T) + 64x128x16 (dV, dK):
#                the one sm_90 tile with N < 64 beside width 32's, because 64-query tiles do not fit.
#                dK + dV take 128 regs per thread, and in this transposed layout the lse and delta
#                vectors broadcast along columns (16 regs each). 64x128 compiles clean only for a
#                batch at 1 stage (255 regs, loads not pipelined), and spills 24 B packed + causal,
#                52-60 B packed + causal + window, 16 B for a batch whose length is not a multiple of
#                16; with 2 stages 144 B. Seeding the S and dP accumulators with -lse/scale and
#                -delta and computing dS before dV brought 2 stages to 0 B spilled + 24 B of stack
#                for a batch, but not the packed cases; 64 keys at 4 warps spill 400 B. 32x128 at 2
#                stages is spill-free in all six variants (causal x window x packed, sizes divisible
#                or not); its narrow wgmmas read K and V from shared memory for half the FLOPs.
#   dkdv d256    16x32   w4 s1: mma.sync. wgmma does not fit: its smallest key tile (64 rows) needs
#                dK + dV = 128 KB of fp32 accumulators, half the register file, and every 64-key
#                tile tried spills (64x64 w8 268 B, 128x64 w8 1684 B, 64x64 w4 3708 B).
#   dq d64       128x128 w8 s3: 222 regs, 132096 B, 64x128x16 (S, dP) + 64x64x16 (dS K)
#   dq d128      128x64  w8 s3: 211 regs, 164864 B, 64x64x16 + 64x128x16, 3 wgmma waits per loop;
#                128x128 spills 24 B
#   dq d256      128x32  w8 s2: 242 regs, 197632 B, 64x32x16 (S, dP) + 64x256x16 (dS K): 128x64 at 1
#                stage (254 regs) leaves 24 B of stack packed + causal + window
# Width 32 takes the width-64 tiles (fewer registers, same shapes).
#
# sm_100. Triton 3.9 puts every matmul on tcgen05 (UTCHMMA) with the accumulator in tensor memory,
# but it copies accumulators to registers for the softmax and the rescale, so register use is like
# sm_90's or higher. The sm_90 shapes fit (six variants, as above) except: forward d128 128x128 s2
# (40 B of stack; 128x64 s3 up to 236 regs), forward d256 and dQ d256 at 128x64 (spill; 128x32 fits,
# the forward with 2 stages), dQ d128 at 3 stages (16 B spilled in the non-causal batch although
# ptxas reports only 136 regs; 2 stages use 137-173 regs). dK/dV at 128 keeps 64x128 on 1 stage (207-240 regs in
# every variant, 2 stages spill 176 B), and dK/dV at 256 stays on mma.sync as on sm_90.

# sm_80. mma.sync m16n8k16 has no M granularity to meet; the tiles are the earlier table's (the
# largest of a few tried that compile with no spill): 128x64 forward tiles at 8 warps, 3 stages (2 at
# d128: 3 take 115200 B, over the 99 KB of sm_86/89/120; 255 regs); the backward's 32 queries x 128
# keys (d <= 64) and 32 x 64 (d128); d256 at 16-32 row tiles, 1 stage. Not re-tuned here; checked
# spill-free in the six variants like the others.
CONFIGS = {arch: {key: KernelConfig(*tiles) for key, tiles in table.items()} for arch, table in TILES.items()}
# The sm_90 tiles whose 16-bit matmuls fall short of "HGMMA with N >= 64", by (kernel, BLOCK_D), with
# the reason (measured above). tests/kernels fails on any other tile that falls short, and on a listed
# one that no longer does (then its entry goes): the shortfall stays visible, not silently accepted.
SM90_NARROW_MMA = {
    ("_forward_kernel", 32): "PV's N is the head dim: padding 32 to 64 doubles the MMA work",
    ("_dkdv_kernel", 32): "dV and dK's N is the head dim: padding 32 to 64 doubles the MMA work",
    ("_dq_kernel", 32): "dS K's N is the head dim: padding 32 to 64 doubles the MMA work",
    ("_dkdv_kernel", 128): "K Q^T and V dO^T at N=32: every 64-query tile spills in some variant",
    ("_forward_kernel", 256): "QK^T at N=32: every 64-key tile spills in some variant",
    ("_dq_kernel", 256): "S and dP at N=32: every 64-key tile spills in some variant",
    ("_dkdv_kernel", 256): "mma.sync: wgmma's smallest key tile needs 128 KB of fp32 dK + dV and spills",
}
# Under the interpreter programs run one after another on the CPU: big tiles mean few of them.
# Unequal tiles keep the query/key range logic honest, as in the shipped configurations.
INTERPRETER_CONFIG = KernelConfig(64, 32, 4, 1)
DELTA_BLOCK = 64


def width(head_dim: int) -> int:
    """The tile width (BLOCK_D) that serves head_dim."""
    return max(WIDTHS[0], triton.next_power_of_2(head_dim))


def arch(device: torch.device) -> int:
    """The table for a CUDA device: sm_90 for compute capability 9, sm_100 for 10 and 11 (datacenter
    Blackwell: tcgen05, 228 KB of shared memory), sm_80 for the rest (mma.sync; sm_120, the consumer
    Blackwell, has neither tcgen05 nor more than 99 KB of shared memory)."""
    major, _ = torch.cuda.get_device_capability(device)
    return {9: 90, 10: 100, 11: 100}.get(major, 80)


def config_for(kernel: str, head_dim: int, device: torch.device) -> KernelConfig:
    return INTERPRETER_CONFIG if interpreting() else CONFIGS[arch(device)][kernel, width(head_dim)]


def unsupported(dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the kernels cannot serve inputs of this dtype and head dim, or None."""
    if dtype not in DTYPES:
        # fp32 would run on CUDA cores, not tensor cores; torch's SDPA serves it (backend "auto" does).
        return f"supports torch.bfloat16 and torch.float16 (got {dtype}; use backend='torch' for it)"
    if head_dim > MAX_HEAD_DIM:
        return f"supports head dims up to {MAX_HEAD_DIM} (got {head_dim})"
    return None


# ---------------------------------------------------------------------------------------------- helpers


@triton.jit
def _document(cu_seqlens, doc, seqlen, total, VARLEN: tl.constexpr):
    """First token (64-bit) and length of document `doc`, inside [0, total) whatever cu_seqlens holds.
    The launchers may run on offsets nobody read on the host (ops/attention.py validates them only
    when that costs no device synchronization), so each document is clamped into the packed tokens:
    offsets out of order or out of range give wrong values for that batch, never a read or write
    outside q, k, v and the outputs."""
    if VARLEN:
        start = tl.minimum(tl.maximum(tl.load(cu_seqlens + doc), 0), total)
        end = tl.minimum(tl.maximum(tl.load(cu_seqlens + doc + 1), start), total)
        length = end - start
    else:
        start = doc * seqlen
        length = seqlen
    return start.to(tl.int64), length


@triton.jit
def _tile_bounds(first, last, all_first, all_last, BLOCK: tl.constexpr):
    """Tiles to visit along one axis, as (lo, full_lo, full_hi, last): some row or column of the
    program sees positions [first, last), every one sees [all_first, all_last). Tiles starting in
    [lo, last) are visited; those in [full_lo, full_hi) need no mask."""
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
def _tile_ptrs(ptr, row0, stride, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pointers to rows [row0, row0 + BLOCK_ROWS) of a [tokens, D] matrix with row stride `stride`.
    The 64-bit part of the address is one scalar; offsets within the tile stay 32-bit registers."""
    offsets = tl.arange(0, BLOCK_ROWS)[:, None] * stride + tl.arange(0, BLOCK_D)[None, :]
    return ptr + tl.cast(row0, tl.int64) * stride + offsets


@triton.jit
def _tile_mask(row0, length, BLOCK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    return ((row0 + tl.arange(0, BLOCK_ROWS))[:, None] < length) & (tl.arange(0, BLOCK_D)[None, :] < HEAD_DIM)


@triton.jit
def _load_tile(ptr, row0, stride, length, HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """The tile at row0 (see _tile_ptrs), zeros past `length` rows and HEAD_DIM columns."""
    return tl.load(_tile_ptrs(ptr, row0, stride, BLOCK_ROWS, BLOCK_D), mask=_tile_mask(row0, length, BLOCK_ROWS, HEAD_DIM, BLOCK_D), other=0.0)


@triton.jit
def _store_tile(ptr, row0, stride, length, value, HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    tl.store(_tile_ptrs(ptr, row0, stride, BLOCK_ROWS, BLOCK_D), value.to(ptr.dtype.element_ty),
             mask=_tile_mask(row0, length, BLOCK_ROWS, HEAD_DIM, BLOCK_D))


# ---------------------------------------------------------------------------------------------- forward


@triton.jit
def _forward_tiles(acc, m_i, l_i, q, k_ptr, v_ptr, stride_kt, stride_vt, rows, lo, full_lo, full_hi, hi, length, window,
                   qk_scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """Folds key tiles [lo, hi) into the running output `acc`, row maxima `m_i` and sums `l_i`; only
    tiles outside [full_lo, full_hi) are masked (a branch uniform over the program)."""
    for start_n in range(lo, hi, BLOCK_N):
        k = _load_tile(k_ptr, start_n, stride_kt, length, HEAD_DIM, BLOCK_N, BLOCK_D)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        if (start_n < full_lo) | (start_n >= full_hi):
            keys = start_n + tl.arange(0, BLOCK_N)
            s = tl.where(_visible(rows, keys, length, window, CAUSAL, WINDOWED), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row may have seen no key yet: keep exp2 away from -inf - -inf.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_ptr, start_n, stride_vt, length, HEAD_DIM, BLOCK_N, BLOCK_D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["group"])
def _forward_kernel(
    Q, K, V, O, LSE, cu_seqlens, seqlen, total, group, window, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, VARLEN: tl.constexpr,
):
    # Axis 0 walks documents and their query tiles, longest-running (last, when causal) tiles first.
    tiles = tl.cdiv(seqlen, BLOCK_M)
    doc = tl.program_id(0) // tiles
    tile = tiles - 1 - tl.program_id(0) % tiles
    head = tl.program_id(1)
    start, length = _document(cu_seqlens, doc, seqlen, total, VARLEN)
    m0 = tile * BLOCK_M
    if m0 >= length:
        return
    rows = m0 + tl.arange(0, BLOCK_M)
    kv_head = head // group
    q = _load_tile(Q + start * stride_qt + head * stride_qh, m0, stride_qt, length, HEAD_DIM, BLOCK_M, BLOCK_D)
    k_ptr = K + start * stride_kt + kv_head * stride_kh
    v_ptr = V + start * stride_vt + kv_head * stride_vh

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    lo, full_lo, full_hi, hi = _key_bounds(m0, tl.minimum(m0 + BLOCK_M, length), length, window, CAUSAL, WINDOWED, BLOCK_N)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_ptr, v_ptr, stride_kt, stride_vt, rows, lo, full_lo, full_hi, hi, length,
                                   window, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, WINDOWED)

    in_doc = rows < length
    l_i = tl.where(in_doc, l_i, 1.0)  # rows past the document saw nothing; they are not stored
    _store_tile(O + start * stride_ot + head * stride_oh, m0, stride_ot, length, acc / l_i[:, None], HEAD_DIM, BLOCK_M, BLOCK_D)
    tl.store(LSE + tl.cast(head, tl.int64) * total + start + rows, m_i + tl.math.log2(l_i), mask=in_doc)


# ---------------------------------------------------------------------------------------------- backward


@triton.jit
def _delta_kernel(O, dO, DELTA, total, stride_ot, stride_oh, stride_dot, stride_doh,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr):
    """DELTA[head, t] = sum_d dO[t, head, d] * O[t, head, d], in fp32."""
    row0 = tl.program_id(0) * BLOCK
    head = tl.program_id(1)
    o = _load_tile(O + head * stride_oh, row0, stride_ot, total, HEAD_DIM, BLOCK, BLOCK_D)
    do = _load_tile(dO + head * stride_doh, row0, stride_dot, total, HEAD_DIM, BLOCK, BLOCK_D)
    rows = row0 + tl.arange(0, BLOCK)
    tl.store(DELTA + tl.cast(head, tl.int64) * total + rows, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=rows < total)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qt, stride_dot, keys, lo, full_lo, full_hi, hi,
                length, window, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """Adds the contributions of query tiles [lo, hi) of one head to dk, dv (transposed scores:
    [keys, queries], so that the per-query lse and delta broadcast along rows); only tiles outside
    [full_lo, full_hi) are masked."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(q_ptr, start_m, stride_qt, length, HEAD_DIM, BLOCK_M, BLOCK_D)
        do = _load_tile(do_ptr, start_m, stride_dot, length, HEAD_DIM, BLOCK_M, BLOCK_D)
        lse = tl.load(lse_ptr + rows, mask=rows < length, other=0.0)
        delta = tl.load(delta_ptr + rows, mask=rows < length, other=0.0)
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
        if (start_m < full_lo) | (start_m >= full_hi):
            p_t = tl.where(tl.trans(_visible(rows, keys, length, window, CAUSAL, WINDOWED)), p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        ds_t = p_t * (tl.dot(v, tl.trans(do)) - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk)
    return dk, dv


@triton.jit(do_not_specialize=["group"])
def _dkdv_kernel(
    Q, K, V, dO, LSE, DELTA, dK, dV, cu_seqlens, seqlen, total, group, window, qk_scale, scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, VARLEN: tl.constexpr,
):
    tiles = tl.cdiv(seqlen, BLOCK_N)
    doc = tl.program_id(0) // tiles
    tile = tl.program_id(0) % tiles  # causal: first key tiles see the most queries
    kv_head = tl.program_id(1)
    start, length = _document(cu_seqlens, doc, seqlen, total, VARLEN)
    n0 = tile * BLOCK_N
    if n0 >= length:
        return
    keys = n0 + tl.arange(0, BLOCK_N)
    k = _load_tile(K + start * stride_kt + kv_head * stride_kh, n0, stride_kt, length, HEAD_DIM, BLOCK_N, BLOCK_D)
    v = _load_tile(V + start * stride_vt + kv_head * stride_vh, n0, stride_vt, length, HEAD_DIM, BLOCK_N, BLOCK_D)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    lo, full_lo, full_hi, hi = _query_bounds(n0, tl.minimum(n0 + BLOCK_N, length), length, window, CAUSAL, WINDOWED, BLOCK_M)
    for head in range(kv_head * group, kv_head * group + group):
        q_ptr = Q + start * stride_qt + head * stride_qh
        do_ptr = dO + start * stride_dot + head * stride_doh
        lse_ptr = LSE + tl.cast(head, tl.int64) * total + start
        delta_ptr = DELTA + tl.cast(head, tl.int64) * total + start
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qt, stride_dot, keys, lo, full_lo, full_hi, hi,
                             length, window, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_M, CAUSAL, WINDOWED)
    _store_tile(dK + start * stride_dkt + kv_head * stride_dkh, n0, stride_dkt, length, dk * scale, HEAD_DIM, BLOCK_N, BLOCK_D)
    _store_tile(dV + start * stride_dvt + kv_head * stride_dvh, n0, stride_dvt, length, dv, HEAD_DIM, BLOCK_N, BLOCK_D)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_ptr, v_ptr, stride_kt, stride_vt, rows, lo, full_lo, full_hi, hi, length, window,
              qk_scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """Adds the contributions of key tiles [lo, hi) to dq; only tiles outside [full_lo, full_hi) are masked."""
    for start_n in range(lo, hi, BLOCK_N):
        k = _load_tile(k_ptr, start_n, stride_kt, length, HEAD_DIM, BLOCK_N, BLOCK_D)
        v = _load_tile(v_ptr, start_n, stride_vt, length, HEAD_DIM, BLOCK_N, BLOCK_D)
        p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
        if (start_n < full_lo) | (start_n >= full_hi):
            keys = start_n + tl.arange(0, BLOCK_N)
            p = tl.where(_visible(rows, keys, length, window, CAUSAL, WINDOWED), p, 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit(do_not_specialize=["group"])
def _dq_kernel(
    Q, K, V, dO, LSE, DELTA, dQ, cu_seqlens, seqlen, total, group, window, qk_scale, scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, stride_dqt, stride_dqh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, VARLEN: tl.constexpr,
):
    tiles = tl.cdiv(seqlen, BLOCK_M)
    doc = tl.program_id(0) // tiles
    tile = tiles - 1 - tl.program_id(0) % tiles
    head = tl.program_id(1)
    start, length = _document(cu_seqlens, doc, seqlen, total, VARLEN)
    m0 = tile * BLOCK_M
    if m0 >= length:
        return
    rows = m0 + tl.arange(0, BLOCK_M)
    kv_head = head // group
    q = _load_tile(Q + start * stride_qt + head * stride_qh, m0, stride_qt, length, HEAD_DIM, BLOCK_M, BLOCK_D)
    do = _load_tile(dO + start * stride_dot + head * stride_doh, m0, stride_dot, length, HEAD_DIM, BLOCK_M, BLOCK_D)
    lse = tl.load(LSE + tl.cast(head, tl.int64) * total + start + rows, mask=rows < length, other=0.0)
    delta = tl.load(DELTA + tl.cast(head, tl.int64) * total + start + rows, mask=rows < length, other=0.0)
    k_ptr = K + start * stride_kt + kv_head * stride_kh
    v_ptr = V + start * stride_vt + kv_head * stride_vh

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    lo, full_lo, full_hi, hi = _key_bounds(m0, tl.minimum(m0 + BLOCK_M, length), length, window, CAUSAL, WINDOWED, BLOCK_N)
    dq = _dq_tiles(dq, q, do, lse, delta, k_ptr, v_ptr, stride_kt, stride_vt, rows, lo, full_lo, full_hi, hi, length, window,
                   qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, WINDOWED)
    _store_tile(dQ + start * stride_dqt + head * stride_dqh, m0, stride_dqt, length, dq * scale, HEAD_DIM, BLOCK_M, BLOCK_D)


# ---------------------------------------------------------------------------------------------- launchers


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer the kernels write comes from here (tests poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _layout(q, cu_seqlens, seqlen) -> tuple[int, torch.Tensor, dict]:
    """(documents, the cu_seqlens pointer argument, constexprs shared by all kernels)."""
    varlen = cu_seqlens is not None
    docs = cu_seqlens.shape[0] - 1 if varlen else q.shape[0] // seqlen
    head_dim = q.shape[-1]
    meta = dict(HEAD_DIM=head_dim, BLOCK_D=width(head_dim), VARLEN=varlen)
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
    cfg = config_for("forward", head_dim, q.device)
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
        HEAD_DIM=head_dim, BLOCK_D=meta["BLOCK_D"], BLOCK=DELTA_BLOCK, num_warps=4, num_stages=1,
    )
    dq, dk, dv = (_empty(x.shape, x.dtype, x.device) for x in (q, k, v))
    common = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), grad_out.stride(0), grad_out.stride(1))

    cfg = config_for("dkdv", head_dim, q.device)
    _dkdv_kernel[(docs * triton.cdiv(max_seqlen, cfg.block_n), heads_kv)](
        q, k, v, grad_out, lse, delta, dk, dv, cu, max_seqlen, total, group, window or 0, qk_scale, scale,
        *common, dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        **meta, **_options(causal, window, cfg),
    )
    cfg = config_for("dq", head_dim, q.device)
    _dq_kernel[(docs * triton.cdiv(max_seqlen, cfg.block_m), heads_q)](
        q, k, v, grad_out, lse, delta, dq, cu, max_seqlen, total, group, window or 0, qk_scale, scale,
        *common, dq.stride(0), dq.stride(1),
        **meta, **_options(causal, window, cfg),
    )
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------- ahead of time

KERNELS = {"forward": _forward_kernel, "dkdv": _dkdv_kernel, "dq": _dq_kernel}
_TENSORS = {"Q", "K", "V", "O", "dO", "dQ", "dK", "dV"}
_SCALARS = {"LSE": "*fp32", "DELTA": "*fp32", "cu_seqlens": "*i32", "qk_scale": "fp32", "scale": "fp32"}
_ELEMENT = {torch.bfloat16: "*bf16", torch.float16: "*fp16"}
# The variants compiled per tile: (CAUSAL, WINDOWED and VARLEN, 16-bit type, head dim for a width).
# Causal batched bf16 at the full width is what pretraining runs. Packed + causal + windowed fp16 at a
# padded head dim (96 at width 128: masked columns) holds the most code (document bounds, window
# bounds, masked edge tiles) and needs the most registers of the six variants the tables were checked
# in (see TILES); bf16 and fp16 differ only in conversion instructions. The other four variants
# (non-causal, unwindowed packed, sizes not divisible by 16) are made of the same code with fewer
# branches; compiling them all would triple the time of the report.
_PADDED = {32: 16, 64: 48, 128: 96, 256: 192}
_VARIANTS = ((True, False, torch.bfloat16, lambda w: w), (True, True, torch.float16, _PADDED.get))


def _signature(fn, dtype: torch.dtype) -> dict:
    return {
        p.name: "constexpr" if p.is_constexpr else _ELEMENT[dtype] if p.name in _TENSORS else _SCALARS.get(p.name, "i32")
        for p in fn.params
    }


def _divisible(fn, packed: bool) -> set[str]:
    """Integer arguments the launcher sees divisible by 16: strides of [tokens, H, D] tensors (H * D
    and D, D a multiple of 16) always; a batch's sequence length and token count too (training shapes
    are), a packed batch's maximum document length and token count not. `group` is never specialized
    (do_not_specialize: group 1 would otherwise compile a second kernel). Sizes are: left to Triton,
    the batched dK/dV kernel at d128 on sm_90 compiles with 16 B spilled and the forward at d256 with
    12 B when the sequence length is not a multiple of 16 (measured compiling with no size
    specialized); the two variants compiled here are the ones training runs."""
    sizes = set() if packed else {"seqlen", "total", "window"}
    return {p.name for p in fn.params if p.name.startswith("stride") or p.name in sizes}


def shipped_configurations(arch: int):
    """Every kernel configuration the launchers run on sm_<arch>, as fastscale.kernels.aot.CompileSpec
    with the launch specialization (16-byte aligned pointers, strides divisible by 16: what the
    launcher sees for row-major [tokens, H, D] tensors with D a multiple of 16)."""
    from fastscale.kernels import aot

    for (name, block_d), cfg in CONFIGS[arch].items():
        fn = KERNELS[name]
        for causal, packed_windowed, dtype, head_dim in _VARIANTS:
            signature = _signature(fn, dtype)
            constexprs = dict(HEAD_DIM=head_dim(block_d), BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                              CAUSAL=causal, WINDOWED=packed_windowed, VARLEN=packed_windowed)
            attrs = aot.divisibility_attrs(fn, signature, _divisible(fn, packed_windowed))
            variant = "packed-window" if packed_windowed else "batched"
            label = f"{name} d{head_dim(block_d)} {str(dtype).removeprefix('torch.')} {'causal' if causal else 'full'} {variant}"
            yield aot.CompileSpec(fn, signature, constexprs, attrs, cfg.num_warps, cfg.num_stages, label)
    for block_d in WIDTHS:
        signature = _signature(_delta_kernel, torch.bfloat16)
        attrs = aot.divisibility_attrs(_delta_kernel, signature, {"stride_ot", "stride_oh", "stride_dot", "stride_doh"})
        constexprs = dict(HEAD_DIM=block_d, BLOCK_D=block_d, BLOCK=DELTA_BLOCK)
        yield aot.CompileSpec(_delta_kernel, signature, constexprs, attrs, 4, 1, f"delta d{block_d} bfloat16")
