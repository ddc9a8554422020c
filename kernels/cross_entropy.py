"""Triton kernels for fused linear + softmax cross-entropy; the "triton" backend of
fastscale.ops.linear_cross_entropy (ops/cross_entropy_torch.py has the math in plain PyTorch, and the
backend contract: forward -> (loss, lse); gradients -> (dh, dw, db, loss, lse) in float32).

`forward` (loss only: no_grad, and the forward of reduction="none") never holds logits. A program
owns BLOCK_M tokens and one split of the vocabulary; it computes logit tiles hidden @ weight.T
(+ bias, softcap) on the fly and folds them into an online logsumexp, the sum of logits (label
smoothing) and the target logit. Programs are launched GROUPED: consecutive program ids cover
GROUP_M row blocks x many splits, so the ~132 programs in flight on an H100 share 8 hidden blocks
(8 x [128, 4096] bf16 = 8 MiB, re-read from L2 for each vocabulary tile) and each weight tile is read
from HBM once per group of 8 row blocks. The per-split partials [splits, N] are combined in PyTorch.

`gradients` (training: the op computes the gradients during its forward for mean/sum) works in ROW
BANDS of R tokens, R * V logits in a buffer of at most BAND_BYTES (1 GiB):
  1. _logits_kernel, a GEMM z = X_band @ W.T (+ bias, softcap) whose epilogue stores z (input dtype
     for 16-bit inputs, fp32 for fp32) and per (token, vocabulary tile) partial statistics of the
     stored values (max, sum of exp, sum); the program whose tile holds a token's target stores its
     target logit. (Statistics of the rounded logits keep exp(z - lse) <= 1 in step 3, as in eager.)
  2. PyTorch combines the partials into lse and the per-token loss ([V / BLOCK_N, R] tensors).
  3. _logit_grad_kernel turns z in place into the logit gradient divided by s = max|token_grad|
     (so 16-bit entries are O(softmax probabilities) and small ones survive fp16; see the contract).
  4. _matmul_kernel: dX_band = s * dz @ W (fp32), and the same kernel reading dz transposed:
     dW += dz.T @ X_band, each program starting from the fp32 dW tile it owns and writing it back
     (the last band's launch multiplies by s); d bias += s * column sums of dz (PyTorch, fp32).
No atomics anywhere, so the gradients are DETERMINISTIC (bit-identical from run to run).
Why bands of R = 4096 at V = 128k: per band dW is read and written once in fp32 (8 V d bytes) against
6 R V d FLOPs of the band's compute, i.e. 4 / (3 R) bytes per FLOP; H100 SXM's ridge is 3.35 TB/s /
989 TFLOP/s = 1 / 295 B/FLOP, so at R = 4096 the read-modify-write (4 GiB, 1.3 ms) is ~10% of the
band's compute time (13 ms) and overlaps the dW GEMM.

Designs compared at tokens N = 32k, V = 128k, d = 4096, bf16 on H100 SXM (NVd = 1.76e13; 6 NVd =
1.06e14 FLOPs = 107 ms at the 989 TFLOP/s peak; the target, 60% of peak, is 178 ms). Bytes and
times are ESTIMATES on paper from the tile schedules, not measurements:

| design                          | FLOPs    | HBM bytes, fwd + bwd                        | shared / program | atomics                | extra memory       | deterministic |
|---------------------------------|----------|---------------------------------------------|------------------|------------------------|--------------------|---------------|
| old: recompute the logit tile,  | 8 NVd    | ~550 GB: hidden re-read per vocabulary tile | 24-36 KiB        | 4.1e11 fp32, acq_rel:  | none               | no            |
| fp32 atomics into dX and dW     | 1.41e14  | (no grouping) + atomics' traffic            |                  | MEMBAR.GPU each;       |                    |               |
|                                 |          |                                             |                  | 0.9-2.7 s on paper     |                    |               |
| owner-computes: dX owners and   | 10 NVd   | [BM, d] fp32 accumulators (2 MiB) live in   | 2 MiB needed,    | none                   | none               | yes           |
| dW owners each recompute logits | 1.76e14  | global memory: 8 NVd (1/BM + 1/BN) = 2.2 TB | 228 KiB exist    |                        |                    |               |
|                                 | (178 ms) | of read-modify-write, 12 TB/s in 178 ms     |                  |                        |                    |               |
| split-K partials + deterministic| 8 NVd    | partials written and read:                  | 24-36 KiB        | none                   | 1.1 TB of partials | yes           |
| reduction                       | 1.41e14  | 8 NVd (1/BM + 1/BN) = 3.3 TB (~1 s)         |                  |                        | unless chunked     |               |
| CHOSEN: row bands of stored     | 6 NVd    | per band of 4096 tokens ~20 GiB: logits     | 128 KiB logits,  | none                   | 1 GiB band + 48 MiB| yes           |
| logits + 3 GEMMs + 1 elementwise| 1.06e14  | GEMM ~7 (W 4x, z out 1), elementwise 2,     | 144 KiB dX,      |                        | of statistics      |               |
| pass (R = 4096, 8 bands)        | (107 ms) | dX ~5, dW ~5-9 (dW fp32 RMW 4); x 8 bands = | 128 KiB dW       |                        |                    |               |
|                                 |          | ~160 GiB, below each GEMM's compute time    |                  |                        |                    |               |
|                                 |          | except the elementwise pass: 16 GiB, ~5 ms  |                  |                        |                    |               |
| CHOSEN forward (loss only),     | 2 NVd    | W once per group of 8 row blocks: 32 GiB;   | 128 KiB          | none                   | 7 MiB of partials  | yes           |
| grouped, 17 vocabulary splits   | 3.5e13   | hidden once per split: 4 GiB (~11 ms, under |                  |                        |                    |               |
|                                 |          | its 36 ms of compute)                       |                  |                        |                    |               |

(dX and dW in fp32, 0.5 + 2 GiB, are the returned gradients in every design, so not counted as extra.)
Tiles per architecture: CONFIGS, keyed by (kernel, dtype size, arch), chosen by compiling every
shipped configuration (shipped_configurations) for sm_80/90/100 and reading ptxas's spill counts and
the SASS: on sm_90 the 16-bit dX GEMM is 128x256x64 tiles on two warp groups of HGMMA.64x256x16,
the dW GEMM (its accumulator starts from the dW tile: 128x256 spills) and the logits and forward
GEMMs 128x128x64 (HGMMA.64x128x16: at 128x256 their softmax epilogue spills); fp32 inputs keep full-precision products (input_precision "ieee", FMA units, 64x64
tiles). Operands load with cp.async (LDGSTS), not TMA. All operand index arithmetic is 64-bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastscale.backends import FLOAT_DTYPES, LossOptions, interpreting, token_grad_scale

# At most this many bytes of logits per band of tokens in `gradients`.
BAND_BYTES = 2**30


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    block_k: int  # unused by the elementwise "logit_grad" kernel
    group_m: int  # row blocks per launch group (L2 reuse); unused by "logit_grad"
    num_warps: int
    num_stages: int


# 16-bit GEMMs with a plain store epilogue (dX): 128x256 tiles, on sm_90 two warp groups of
# HGMMA.64x256x16 with a 128-register fp32 accumulator per thread.
_STORE_GEMM = {
    80: TileConfig(128, 256, 32, 8, 8, 3),  # 72 KiB shared: also fits sm_86/sm_89's 99 KiB
    90: TileConfig(128, 256, 64, 8, 8, 3),  # 144 KiB shared
    100: TileConfig(128, 256, 64, 8, 8, 3),
}
# The dW GEMM starts its accumulator from the dW tile it owns; at 128x256 loading that tile spills
# on every arch (on sm_90 254 registers and a 32 B stack frame in Triton's own ptxas run), so 128x128.
_ACCUMULATE_GEMM = {
    80: TileConfig(128, 128, 32, 8, 8, 4),  # 64 KiB shared
    90: TileConfig(128, 128, 64, 8, 8, 4),  # 128 KiB shared
    100: TileConfig(128, 128, 64, 8, 8, 4),  # 128 KiB shared
}
# 16-bit GEMMs with a softmax-statistics epilogue (forward, logits): at 128x256 its exponentials and
# row reductions spill beside the 128-register accumulator, so 128x128 (HGMMA.64x128x16 on sm_90).
_SOFTMAX_GEMM = {
    80: TileConfig(128, 128, 32, 8, 8, 4),  # 64 KiB shared
    90: TileConfig(128, 128, 64, 8, 8, 4),  # 128 KiB shared
    100: TileConfig(128, 128, 64, 8, 8, 3),  # 96 KiB shared: 4 stages spill the forward with a bias
}
# fp32 operands run on FMA units (no silent TF32): each product costs registers, so tiles are small.
# 8 warps spill the forward's epilogue with a bias on sm_80 (ptxas caps them at 128 registers there)
# and the logits kernel on sm_90 (8 B), so 4 warps there.
_FP32_GEMM = {
    80: TileConfig(64, 64, 16, 8, 4, 3),
    90: TileConfig(64, 64, 16, 8, 4, 3),
    100: TileConfig(64, 64, 16, 8, 8, 3),
}
_ELEMENTWISE = TileConfig(8, 1024, 1, 1, 4, 1)

# Shipped configurations by (kernel, dtype size in bytes, arch); "d_hidden" and "d_weight" are
# the two uses of _matmul_kernel.
CONFIGS = {
    **{(kernel, 2, arch): _SOFTMAX_GEMM[arch] for kernel in ("forward", "logits") for arch in _SOFTMAX_GEMM},
    **{("d_hidden", 2, arch): cfg for arch, cfg in _STORE_GEMM.items()},
    **{("d_weight", 2, arch): cfg for arch, cfg in _ACCUMULATE_GEMM.items()},
    **{(kernel, 4, arch): _FP32_GEMM[arch] for kernel in ("forward", "logits", "d_hidden", "d_weight") for arch in _FP32_GEMM},
    **{("logit_grad", size, arch): _ELEMENTWISE for size in (2, 4) for arch in _STORE_GEMM},
}
# Under the interpreter every program runs serially on the CPU: big tiles mean few of them.
INTERPRETER_CONFIGS = {
    "forward": TileConfig(64, 2048, 64, 4, 4, 1),
    "logits": TileConfig(64, 2048, 64, 4, 4, 1),
    "logit_grad": TileConfig(64, 4096, 1, 1, 4, 1),
    "d_hidden": TileConfig(128, 128, 1024, 4, 4, 1),
    "d_weight": TileConfig(1024, 128, 128, 4, 4, 1),
}


def config_arch(device: torch.device) -> int:
    """The CONFIGS arch key for a CUDA device: 100 for data-center Blackwell (sm_100/103), 90 for
    Hopper, else 80: Ampere, Ada and consumer Blackwell (sm_120) run mma.sync with ~99 KiB of
    shared memory, which the sm_80 tiles fit."""
    major, _ = torch.cuda.get_device_capability(device)
    return 100 if major == 10 else 90 if major == 9 else 80


def config_for(kernel: str, dtype: torch.dtype, device: torch.device) -> TileConfig:
    if interpreting():
        return INTERPRETER_CONFIGS[kernel]
    return CONFIGS[(kernel, dtype.itemsize, config_arch(device))]


@triton.jit
def _tanh(x):
    """tanh in fp32 to ~1e-7 relative (Cephes' tanhf; libdevice is unavailable in the interpreter):
    an odd polynomial below |x| = 0.625, where 1 - 2 / (exp(2|x|) + 1) would lose digits to
    cancellation, and that form above (|x| is clamped at 20, where tanh is 1 in fp32, so exp never
    overflows)."""
    a = tl.abs(x)
    s = x * x
    small = ((((-5.70498872745e-3 * s + 2.06390887954e-2) * s - 5.37397155531e-2) * s + 1.33314422036e-1) * s
             - 3.33332819422e-1) * s * x + x
    large = 1.0 - 2.0 / (tl.exp(2.0 * tl.minimum(a, 20.0)) + 1.0)
    return tl.where(a < 0.625, small, tl.where(x < 0, -large, large))


@triton.jit
def _grouped_tile(pid, n_m, n_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid` in an n_m x n_n grid walked in column-major groups of GROUP_M
    rows, so programs running at the same time share GROUP_M row operands and their column operands."""
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m


@triton.jit
def _matmul_tile(
    a_ptr, b_ptr, rows, cols, M, N, K, lda, ldb, acc,
    A_K_CONTIGUOUS: tl.constexpr, B_K_CONTIGUOUS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """acc + the fp32 [BLOCK_M, BLOCK_N] tile A[rows, :] @ B[:, cols] of A [M, K] and B [K, N], each given
    by a base pointer, a leading dimension and which of its dimensions is contiguous (so one kernel
    reads an operand or its transpose, and the compiler sees the contiguity it vectorizes on)."""
    ks = tl.arange(0, BLOCK_K)
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    if A_K_CONTIGUOUS:
        a_ptrs = a_ptr + rows64[:, None] * lda + ks[None, :]
        a_step = BLOCK_K
    else:
        a_ptrs = a_ptr + ks[None, :].to(tl.int64) * lda + rows64[:, None]
        a_step = BLOCK_K * lda.to(tl.int64)
    if B_K_CONTIGUOUS:
        b_ptrs = b_ptr + cols64[None, :] * ldb + ks[:, None]
        b_step = BLOCK_K
    else:
        b_ptrs = b_ptr + ks[:, None].to(tl.int64) * ldb + cols64[None, :]
        b_step = BLOCK_K * ldb.to(tl.int64)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(rows[:, None] < M) & (k + ks[None, :] < K), other=0.0)
        b = tl.load(b_ptrs, mask=(k + ks[:, None] < K) & (cols[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += a_step
        b_ptrs += b_step
    return acc


@triton.jit
def _logit_tile(
    h_ptr, w_ptr, b_ptr, rows, cols, N, V, D, stride_h, stride_w, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The fp32 [BLOCK_M, BLOCK_N] tile of (capped) logits hidden @ weight.T + bias."""
    z = _matmul_tile(h_ptr, w_ptr, rows, cols, N, V, D, stride_h, stride_w,
                     tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), True, True, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if HAS_BIAS:
        z += tl.load(b_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)[None, :]
    if HAS_SOFTCAP:
        z = softcap * _tanh(z / softcap)
    return z


@triton.jit
def _target_logit(z, cols, targets):
    """Per row, z at the row's target column if the tile holds it, else 0."""
    return tl.sum(tl.where(cols[None, :] == targets[:, None], z, 0.0), axis=1)


@triton.jit
def _store_owned(ptr, values, rows, targets, first_col, last_col, N):
    """Stores the target logits of the rows whose target lies in columns [first_col, last_col):
    exactly one program owns each token's target, so no two programs write the same element."""
    tl.store(ptr + rows, values, mask=(targets >= first_col) & (targets < last_col) & (rows < N))


@triton.jit
def _forward_kernel(
    h_ptr, w_ptr, b_ptr, t_ptr, max_ptr, sumexp_ptr, sum_ptr, target_ptr,
    N, V, D, stride_h, stride_w, tiles_per_split, n_splits, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Online logsumexp, sum and target logit of BLOCK_M tokens over one split of the vocabulary."""
    pid_m, split = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_M), n_splits, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    targets = tl.load(t_ptr + rows, mask=rows < N, other=-1)
    row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    row_sumexp = tl.zeros((BLOCK_M,), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    row_target = tl.zeros((BLOCK_M,), dtype=tl.float32)
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
        row_sum += tl.sum(tl.where(in_vocab, z, 0.0), axis=1)
        row_target += _target_logit(z, cols, targets)
    _store_owned(target_ptr, row_target, rows, targets, first * BLOCK_N, last * BLOCK_N, N)
    out = split * N + rows
    tl.store(max_ptr + out, row_max, mask=rows < N)
    tl.store(sumexp_ptr + out, row_sumexp, mask=rows < N)
    tl.store(sum_ptr + out, row_sum, mask=rows < N)


@triton.jit
def _logits_kernel(
    h_ptr, w_ptr, b_ptr, t_ptr, z_ptr, max_ptr, sumexp_ptr, sum_ptr, target_ptr,
    N, V, D, stride_h, stride_w, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of the band's logits: stored to z [N, V], with its statistics
    per token (max, sum of exp, sum) at [tile column, token] and the target logits it holds."""
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_M), tl.cdiv(V, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    z = _logit_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, D, stride_h, stride_w, softcap,
                    HAS_BIAS, HAS_SOFTCAP, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    row_ok = rows < N
    in_vocab = cols[None, :] < V
    stored = z.to(z_ptr.dtype.element_ty)
    tl.store(z_ptr + rows.to(tl.int64)[:, None] * V + cols[None, :], stored, mask=row_ok[:, None] & in_vocab)
    # Statistics of the stored (rounded) logits, which step 3 exponentiates: with an lse of the
    # unrounded ones, exp(z - lse) could exceed 1 by the rounding (a factor e^32 at |z| = 1e4 in bf16).
    z = tl.where(in_vocab, stored.to(tl.float32), float("-inf"))
    tile_max = tl.max(z, axis=1)
    out = pid_n * N + rows
    tl.store(max_ptr + out, tile_max, mask=row_ok)
    tl.store(sumexp_ptr + out, tl.sum(tl.exp(z - tile_max[:, None]), axis=1), mask=row_ok)
    tl.store(sum_ptr + out, tl.sum(tl.where(in_vocab, z, 0.0), axis=1), mask=row_ok)
    targets = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    _store_owned(target_ptr, _target_logit(z, cols, targets), rows, targets, pid_n * BLOCK_N, (pid_n + 1) * BLOCK_N, N)


@triton.jit
def _logit_grad_kernel(
    z_ptr, t_ptr, lse_ptr, g_ptr, scale_ptr, N, V, softcap, label_smoothing, z_loss,
    HAS_SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Overwrites the stored (capped) logits z [N, V] with d loss / d (uncapped logits) divided by
    s = max|token_grad| (ops/cross_entropy_torch.py has the formula)."""
    pid_n = tl.program_id(0) % tl.cdiv(V, BLOCK_N)
    rows = (tl.program_id(0) // tl.cdiv(V, BLOCK_N)) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    mask = row_ok[:, None] & (cols[None, :] < V)
    ptrs = z_ptr + rows.to(tl.int64)[:, None] * V + cols[None, :]
    z = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    targets = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    grad = tl.load(g_ptr + rows, mask=row_ok, other=0.0) / tl.load(scale_ptr)
    dz = tl.exp(z - lse[:, None]) * (1.0 + 2.0 * z_loss * lse)[:, None]
    dz = dz - tl.where(cols[None, :] == targets[:, None], 1.0 - label_smoothing, 0.0) - label_smoothing / V
    dz = dz * grad[:, None]
    if HAS_SOFTCAP:
        zc = z / softcap
        dz = dz * (1.0 - zc * zc)
    tl.store(ptrs, dz.to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, scale_ptr, M, N, K, lda, ldb, ldc,
    A_K_CONTIGUOUS: tl.constexpr, B_K_CONTIGUOUS: tl.constexpr, ACCUMULATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C = s * A @ B, or C = s * (C + A @ B) with ACCUMULATE, for C fp32 [M, N] row-major and s at
    scale_ptr. Each program owns one tile of C (read, added to and written back by it alone), so
    there are no atomics. The accumulator starts from C, so no second tile of registers is live."""
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = c_ptr + rows.to(tl.int64)[:, None] * ldc + cols[None, :]
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    if ACCUMULATE:
        acc = tl.load(c_ptrs, mask=mask, other=0.0)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _matmul_tile(a_ptr, b_ptr, rows, cols, M, N, K, lda, ldb, acc,
                       A_K_CONTIGUOUS, B_K_CONTIGUOUS, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    tl.store(c_ptrs, acc * tl.load(scale_ptr), mask=mask)


def unsupported(hidden: torch.Tensor) -> str | None:
    """Why the kernels cannot serve hidden, or None (fastscale.backends has the contract)."""
    if hidden.dtype not in FLOAT_DTYPES:
        return f"supports {', '.join(str(d) for d in FLOAT_DTYPES)} (got hidden dtype {hidden.dtype})"
    if not hidden.is_cuda and not interpreting():
        return f"needs CUDA tensors (hidden is on {hidden.device}; set TRITON_INTERPRET=1 before import to interpret on CPU)"
    return None


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get full fp32 products, as torch.matmul gives by default (no silent TF32).
    return "ieee" if dtype == torch.float32 else "tf32"


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def vocab_splits(n_row_blocks: int, n_tiles: int, sms: int, group_m: int) -> tuple[int, int]:
    """(splits, tiles per split) of the vocabulary in `forward`: enough programs to fill every SM
    twice, and at least sms / group_m splits, so the programs in flight span group_m row blocks."""
    wanted = max(math.ceil(2 * sms / max(n_row_blocks, 1)), math.ceil(sms / group_m))
    per_split = math.ceil(n_tiles / max(1, min(n_tiles, wanted)))
    return math.ceil(n_tiles / per_split), per_split


def band_rows(n: int, vocab: int, dtype: torch.dtype, block_m: int) -> int:
    """Tokens per band of `gradients`: as many as BAND_BYTES of logits hold, a multiple of the
    logits tile (at least one tile), at most n."""
    rows = BAND_BYTES // (vocab * dtype.itemsize) // block_m * block_m
    return min(n, max(block_m, rows))


def _kernel_options(hidden, bias, opts: LossOptions) -> dict:
    return dict(HAS_BIAS=bias is not None, HAS_SOFTCAP=opts.softcap is not None, DOT_PRECISION=_dot_precision(hidden.dtype))


def _tile_args(cfg: TileConfig) -> dict:
    return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _loss_and_lse(tile_max, tile_sumexp, tile_sum, target_logit, targets, vocab: int, opts: LossOptions):
    """Per-token loss and logsumexp from per-(vocabulary part, token) partials [parts, n]."""
    row_max = tile_max.amax(dim=0)
    lse = row_max + torch.log((tile_sumexp * torch.exp(tile_max - row_max)).sum(dim=0))
    loss = lse - (1 - opts.label_smoothing) * target_logit
    if opts.label_smoothing:
        loss -= opts.label_smoothing / vocab * tile_sum.sum(dim=0)
    if opts.z_loss:
        loss += opts.z_loss * lse.square()
    return torch.where(targets != opts.ignore_index, loss, 0.0), lse


def forward(hidden, weight, bias, targets, opts: LossOptions):
    hidden, weight, targets = _row_major(hidden), _row_major(weight), targets.contiguous()
    (n, d), vocab = hidden.shape, weight.shape[0]
    cfg = config_for("forward", hidden.dtype, hidden.device)
    n_row_blocks = triton.cdiv(n, cfg.block_m)
    splits, per_split = vocab_splits(n_row_blocks, triton.cdiv(vocab, cfg.block_n), _multiprocessors(hidden.device), cfg.group_m)
    partials = torch.empty(3, splits, n, dtype=torch.float32, device=hidden.device)
    target_logit = torch.zeros(n, dtype=torch.float32, device=hidden.device)  # stays 0 for ignored tokens
    if n:
        _forward_kernel[(n_row_blocks * splits,)](
            hidden, weight, bias, targets, *partials, target_logit,
            n, vocab, d, hidden.stride(0), weight.stride(0), per_split, splits, opts.softcap or 1.0,
            **_kernel_options(hidden, bias, opts), **_tile_args(cfg),
        )
    return _loss_and_lse(*partials, target_logit, targets, vocab, opts)


def gradients(hidden, weight, bias, targets, token_grad, opts: LossOptions):
    hidden, weight, targets = _row_major(hidden), _row_major(weight), targets.contiguous()
    (n, d), vocab = hidden.shape, weight.shape[0]
    device = hidden.device
    token_grad = token_grad.float().contiguous()
    scale = token_grad_scale(token_grad).reshape(1)  # on the device: no host synchronization
    d_hidden = torch.empty(n, d, dtype=torch.float32, device=device)
    d_weight = (torch.empty if n else torch.zeros)(vocab, d, dtype=torch.float32, device=device)
    d_bias = torch.zeros(vocab, dtype=torch.float32, device=device) if bias is not None else None
    loss = torch.empty(n, dtype=torch.float32, device=device)
    lse = torch.empty(n, dtype=torch.float32, device=device)
    rows = band_rows(n, vocab, hidden.dtype, config_for("logits", hidden.dtype, device).block_m)
    logits = torch.empty(rows, vocab, dtype=hidden.dtype, device=device)
    one = torch.ones(1, dtype=torch.float32, device=device)
    bands = [slice(start, min(start + rows, n)) for start in range(0, n, max(rows, 1))]
    for i, band in enumerate(bands):
        z = logits[: band.stop - band.start]
        loss[band], lse[band] = _band_logits(hidden[band], weight, bias, targets[band], z, opts)
        _logit_grad(z, targets[band], lse[band], token_grad[band], scale, opts)
        _matmul("d_hidden", z, weight, d_hidden[band], scale, accumulate=False)
        # dW sums the bands' products unscaled; the last band's launch multiplies by s.
        _matmul("d_weight", z, hidden[band], d_weight, scale if i == len(bands) - 1 else one, accumulate=i > 0)
        if d_bias is not None:
            d_bias += scale * z.sum(dim=0, dtype=torch.float32)
    return d_hidden, d_weight, d_bias, loss, lse


def _band_logits(hidden, weight, bias, targets, z, opts: LossOptions):
    """Step 1 and 2: z = capped logits of the band, and its per-token loss and lse."""
    (n, d), vocab = hidden.shape, weight.shape[0]
    cfg = config_for("logits", hidden.dtype, hidden.device)
    n_tiles = triton.cdiv(vocab, cfg.block_n)
    partials = torch.empty(3, n_tiles, n, dtype=torch.float32, device=hidden.device)
    target_logit = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    _logits_kernel[(triton.cdiv(n, cfg.block_m) * n_tiles,)](
        hidden, weight, bias, targets, z, *partials, target_logit,
        n, vocab, d, hidden.stride(0), weight.stride(0), opts.softcap or 1.0,
        **_kernel_options(hidden, bias, opts), **_tile_args(cfg),
    )
    return _loss_and_lse(*partials, target_logit, targets, vocab, opts)


def _logit_grad(z, targets, lse, token_grad, scale, opts: LossOptions) -> None:
    """Step 3: z becomes the logit gradient divided by scale, in place."""
    n, vocab = z.shape
    cfg = config_for("logit_grad", z.dtype, z.device)
    _logit_grad_kernel[(triton.cdiv(n, cfg.block_m) * triton.cdiv(vocab, cfg.block_n),)](
        z, targets, lse, token_grad, scale, n, vocab, opts.softcap or 1.0, opts.label_smoothing, opts.z_loss,
        HAS_SOFTCAP=opts.softcap is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _matmul(kernel: str, dz, operand, out, scale, *, accumulate: bool) -> None:
    """Step 4: out = scale * (A @ operand), with accumulate out = scale * (out + A @ operand), where
    A is dz for kernel "d_hidden" and dz.T for "d_weight". dz [n, V] and operand row-major, out
    fp32 row-major; scale [1]."""
    a_transposed = kernel == "d_weight"
    m, k = (dz.shape[1], dz.shape[0]) if a_transposed else dz.shape
    cfg = config_for(kernel, dz.dtype, dz.device)
    _matmul_kernel[(triton.cdiv(m, cfg.block_m) * triton.cdiv(out.shape[1], cfg.block_n),)](
        dz, operand, out, scale, m, out.shape[1], k, dz.stride(0), operand.stride(0), out.stride(0),
        A_K_CONTIGUOUS=not a_transposed, B_K_CONTIGUOUS=False, ACCUMULATE=accumulate,
        DOT_PRECISION=_dot_precision(dz.dtype), **_tile_args(cfg),
    )


# ---- Ahead-of-time compilation: what a launch at the target shape compiles ----

_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# The shape the shipped configurations are specialized for, and each architecture's SM count
# (A100, H100 SXM, B200), which sets the forward's vocabulary splits.
TARGET_SHAPE = dict(tokens=32768, vocab=131072, d=4096)
_MULTIPROCESSORS = {80: 108, 90: 132, 100: 148}


def _target_launches(arch: int, dtype: torch.dtype):
    """(kernel, jit function, integer arguments, code-changing constexpr variants) of every launch
    at TARGET_SHAPE, with the integer arguments the launcher would see."""
    n, vocab, d = TARGET_SHAPE["tokens"], TARGET_SHAPE["vocab"], TARGET_SHAPE["d"]
    options = [dict(HAS_BIAS=bias, HAS_SOFTCAP=cap) for bias in (False, True) for cap in (False, True)]
    fwd = CONFIGS[("forward", dtype.itemsize, arch)]
    splits, per_split = vocab_splits(triton.cdiv(n, fwd.block_m), triton.cdiv(vocab, fwd.block_n), _MULTIPROCESSORS[arch], fwd.group_m)
    rows = band_rows(n, vocab, dtype, CONFIGS[("logits", dtype.itemsize, arch)].block_m)
    yield "forward", _forward_kernel, dict(N=n, V=vocab, D=d, stride_h=d, stride_w=d, tiles_per_split=per_split, n_splits=splits), options
    yield "logits", _logits_kernel, dict(N=rows, V=vocab, D=d, stride_h=d, stride_w=d), options
    yield "logit_grad", _logit_grad_kernel, dict(N=rows, V=vocab), [dict(HAS_SOFTCAP=cap) for cap in (False, True)]
    d_hidden = dict(M=rows, N=d, K=vocab, lda=vocab, ldb=d, ldc=d)
    d_weight = dict(M=vocab, N=d, K=rows, lda=vocab, ldb=d, ldc=d)
    yield "d_hidden", _matmul_kernel, d_hidden, [dict(A_K_CONTIGUOUS=True, B_K_CONTIGUOUS=False, ACCUMULATE=False)]
    # dW: the first band stores, the later ones accumulate.
    yield "d_weight", _matmul_kernel, d_weight, [dict(A_K_CONTIGUOUS=False, B_K_CONTIGUOUS=False, ACCUMULATE=acc) for acc in (False, True)]


def _signature(fn, data_type: str, constexprs: dict, ints: dict) -> dict:
    """Triton types of fn's parameters as a launch passes them: operands in the input dtype,
    targets int64, statistics and gradients fp32, sizes i32, options fp32; an absent bias is None."""
    data = {"h_ptr", "w_ptr", "b_ptr", "z_ptr", "a_ptr"}
    signature = {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr or constexprs.get(name, 0) is None:
            signature[name] = "constexpr"
        elif name == "t_ptr":
            signature[name] = "*i64"
        elif name.endswith("_ptr"):
            signature[name] = f"*{data_type}" if name in data else "*fp32"
        else:
            signature[name] = "i32" if name in ints else "fp32"
    return signature


def shipped_configurations(arch: int):
    """Every kernel and code-changing variant (dtype, bias, softcap, operand transposition) this
    module launches on sm_<arch>, as aot.CompileSpec, specialized as a launch at TARGET_SHAPE
    specializes it: pointers 16-byte aligned, integers divisible by 16 where they are, no bias = None."""
    from fastscale.kernels.aot import CompileSpec, divisibility_attrs

    for dtype, data_type in _TRITON_DTYPES.items():
        for kernel, fn, ints, variants in _target_launches(arch, dtype):
            cfg = CONFIGS[(kernel, dtype.itemsize, arch)]
            tiles = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n)
            if kernel != "logit_grad":
                tiles.update(BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, DOT_PRECISION=_dot_precision(dtype))
            for variant in variants:
                constexprs = {**variant, **tiles}
                if variant.get("HAS_BIAS") is False:
                    constexprs["b_ptr"] = None
                signature = _signature(fn, data_type, constexprs, ints)
                divisible = {name for name, value in ints.items() if value % 16 == 0}
                flags = " ".join(f"{k}={v}" for k, v in variant.items())
                yield CompileSpec(
                    fn=fn, signature=signature, constexprs=constexprs,
                    attrs=divisibility_attrs(fn, signature, divisible),
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                    label=f"{kernel} {data_type} {flags}",
                )
