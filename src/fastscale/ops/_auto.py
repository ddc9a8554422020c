"""Which backend `backend="auto"` runs on CUDA tensors: the one with the best ESTIMATE for the shape.

No GPU has measured these kernels yet, so the choice rests on kernels/roofline.py's model: each
backend's launches at the caller's shape, timed on the modelled GPU nearest the device (sm_90 and
later: H100 SXM with the sm_90 tile tables and compiled facts, so a B200 is ranked as an H100;
earlier: A100 SXM with sm_80's). The facts the model reads from the compiled Triton kernels (MMA
instruction and width, CTAs per SM, warps) are the COMPILED constants below, written by
`python -m fastscale.benchmarks.estimate --auto-constants` from a compile of the shipped
configurations; tests/kernels/test_roofline.py recompiles them and fails when they drift. So a call
compiles nothing and reads no file, and its answer is cached per shape. When a GPU measurement
exists, it should replace this.

Backends as modelled:
  * cross-entropy "triton": the band design of kernels/cross_entropy.py with its own tile tables;
    "cuda": cuBLAS GEMMs per chunk of ops.cross_entropy_torch.chunk_rows tokens around fastscale._C's
    softmax kernel, fp32 gradient accumulation (roofline.cublas_chunks). fp32 inputs are not
    modelled (no tensor cores either way): "cuda", whose GEMMs are cuBLAS's SGEMM.
  * attention "triton": kernels/attention.py's forward (and backward) with its tile tables;
    "flash_attn" and "torch" (SDPA's flash kernels are FlashAttention-2's): FlashAttention-2's
    forward as flash-attn configures it (roofline.flash_attention2_forward), its backward at the
    forward's time x 2.5 x FA2_FORWARD_OVER_BACKWARD, the ratio of its published H100 forward and
    backward throughputs. "torch" is chosen only when neither other backend is available: for packed
    documents it runs one masked call per batch, which the model does not cover.
Documents are taken as batch_tokens / max_seqlen sequences of max_seqlen tokens.
"""

from __future__ import annotations

import functools
import math

import torch

from fastscale.kernels import roofline
from fastscale.kernels.roofline import Compiled

# FlashAttention-2 on H100, d 128, T 8k: forward 370 TFLOP/s without causal mask, backward 318 TFLOP/s
# (FlashAttention-3 paper, arXiv 2407.08608, Figures 5 and 6; Figure 6 taken to be without mask too).
FA2_FORWARD_OVER_BACKWARD = 370 / 318
# fastscale._C's softmax kernel: memory-bound, launched as about BLOCKS_PER_SM blocks per SM
# (ops/cross_entropy_cuda.py); CUDA C++, so its facts are stated, not read from a Triton compile.
_C_BLOCKS_PER_SM = 4

COMPILED: dict[int, dict[str, Compiled]] = {
    80: {
        'attention.delta.d128': Compiled('_delta_kernel', 80, 'none', 0, 10, 4, 0, 0),
        'attention.delta.d256': Compiled('_delta_kernel', 80, 'none', 0, 8, 4, 0, 0),
        'attention.delta.d32': Compiled('_delta_kernel', 80, 'none', 0, 16, 4, 0, 0),
        'attention.delta.d64': Compiled('_delta_kernel', 80, 'none', 0, 16, 4, 0, 0),
        'attention.dkdv.d128': Compiled('_dkdv_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'attention.dkdv.d256': Compiled('_dkdv_kernel', 80, 'mma_sync', 0, 2, 4, 0, 0),
        'attention.dkdv.d32': Compiled('_dkdv_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'attention.dkdv.d64': Compiled('_dkdv_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'attention.dq.d128': Compiled('_dq_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'attention.dq.d256': Compiled('_dq_kernel', 80, 'mma_sync', 0, 2, 4, 0, 0),
        'attention.dq.d32': Compiled('_dq_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'attention.dq.d64': Compiled('_dq_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'attention.forward.d128': Compiled('_forward_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'attention.forward.d256': Compiled('_forward_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'attention.forward.d32': Compiled('_forward_kernel', 80, 'mma_sync', 0, 2, 8, 0, 0),
        'attention.forward.d64': Compiled('_forward_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'cross_entropy.d_hidden': Compiled('_matmul_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'cross_entropy.d_weight': Compiled('_matmul_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'cross_entropy.forward': Compiled('_forward_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
        'cross_entropy.logit_grad': Compiled('_logit_grad_kernel', 80, 'none', 0, 4, 4, 0, 0),
        'cross_entropy.logits': Compiled('_logits_kernel', 80, 'mma_sync', 0, 1, 8, 0, 0),
    },
    90: {
        'attention.delta.d128': Compiled('_delta_kernel', 90, 'none', 0, 10, 4, 0, 0),
        'attention.delta.d256': Compiled('_delta_kernel', 90, 'none', 0, 9, 4, 0, 0),
        'attention.delta.d32': Compiled('_delta_kernel', 90, 'none', 0, 16, 4, 0, 0),
        'attention.delta.d64': Compiled('_delta_kernel', 90, 'none', 0, 16, 4, 0, 0),
        'attention.dkdv.d128': Compiled('_dkdv_kernel', 90, 'wgmma', 32, 1, 8, 0, 0),
        'attention.dkdv.d256': Compiled('_dkdv_kernel', 90, 'mma_sync', 0, 2, 4, 0, 0),
        'attention.dkdv.d32': Compiled('_dkdv_kernel', 90, 'wgmma', 32, 1, 8, 0, 0),
        'attention.dkdv.d64': Compiled('_dkdv_kernel', 90, 'wgmma', 64, 1, 8, 0, 0),
        'attention.dq.d128': Compiled('_dq_kernel', 90, 'wgmma', 64, 1, 8, 0, 0),
        'attention.dq.d256': Compiled('_dq_kernel', 90, 'wgmma', 32, 1, 8, 0, 0),
        'attention.dq.d32': Compiled('_dq_kernel', 90, 'wgmma', 32, 1, 8, 0, 0),
        'attention.dq.d64': Compiled('_dq_kernel', 90, 'wgmma', 128, 1, 8, 0, 0),
        'attention.forward.d128': Compiled('_forward_kernel', 90, 'wgmma', 64, 1, 8, 0, 0),
        'attention.forward.d256': Compiled('_forward_kernel', 90, 'wgmma', 32, 1, 8, 0, 0),
        'attention.forward.d32': Compiled('_forward_kernel', 90, 'wgmma', 32, 1, 8, 0, 0),
        'attention.forward.d64': Compiled('_forward_kernel', 90, 'wgmma', 64, 1, 8, 0, 0),
        'cross_entropy.d_hidden': Compiled('_matmul_kernel', 90, 'wgmma', 256, 1, 8, 0, 0),
        'cross_entropy.d_weight': Compiled('_matmul_kernel', 90, 'wgmma', 128, 1, 8, 0, 0),
        'cross_entropy.forward': Compiled('_forward_kernel', 90, 'wgmma', 128, 1, 8, 0, 0),
        'cross_entropy.logit_grad': Compiled('_logit_grad_kernel', 90, 'none', 0, 6, 4, 0, 0),
        'cross_entropy.logits': Compiled('_logits_kernel', 90, 'wgmma', 128, 1, 8, 0, 0),
    },
}



def gpu_for(capability: tuple[int, int]) -> roofline.Gpu:
    """The modelled GPU nearest a device: H100 SXM for sm_90 and later, A100 SXM before."""
    return roofline.H100_SXM if capability[0] >= 9 else roofline.A100_SXM


def cross_entropy_launches(n_tokens: int, vocab: int, d: int, gpu: roofline.Gpu) -> dict[str, list[roofline.Launch]]:
    """Each backend's launches for forward+backward with 16-bit inputs."""
    from fastscale.kernels import cross_entropy as kernels
    from fastscale.ops.cross_entropy_torch import chunk_rows

    names = ("logits", "logit_grad", "d_hidden", "d_weight")
    tiles = {k: roofline.Tile.of(kernels.CONFIGS[(k, 2, gpu.arch)]) for k in names}
    compiled = {k: COMPILED[gpu.arch][f"cross_entropy.{k}"] for k in names}
    rows = kernels.band_rows(n_tokens, vocab, torch.bfloat16, tiles["logits"].bm)
    softmax_kernel = Compiled("fastscale._C cross_entropy", gpu.arch, "none", 0, _C_BLOCKS_PER_SM, 8, 0, 0)
    return {
        "triton": roofline.cross_entropy_bands(n_tokens, vocab, d, rows, tiles, compiled, gpu),
        "cuda": roofline.cublas_chunks(n_tokens, vocab, d, chunk_rows(vocab, torch.bfloat16), softmax_kernel,
                                       _C_BLOCKS_PER_SM * gpu.sms, 4, gpu),
    }


def _seconds(launches: list[roofline.Launch], gpu: roofline.Gpu) -> float:
    return sum(roofline.launch_time(launch, gpu).seconds for launch in launches)


def cross_entropy_estimates(n_tokens: int, vocab: int, d: int, capability: tuple[int, int]) -> dict[str, float]:
    """Estimated seconds of forward+backward per backend, for 16-bit inputs."""
    gpu = gpu_for(capability)
    return {name: _seconds(launches, gpu) for name, launches in cross_entropy_launches(n_tokens, vocab, d, gpu).items()}


@functools.lru_cache(maxsize=256)
def fastest_cross_entropy_backend(n_tokens: int, vocab: int, d: int, dtype: torch.dtype, capability: tuple[int, int]) -> str:
    """"triton" or "cuda": the backend with the shorter estimated forward+backward on this device."""
    if dtype == torch.float32 or n_tokens == 0:
        return "cuda" if dtype == torch.float32 else "triton"
    estimates = cross_entropy_estimates(n_tokens, vocab, d, capability)
    return min(estimates, key=estimates.get)


def triton_attention_launches(batch: int, seqlen: int, heads: int, head_dim: int, causal: bool, gpu: roofline.Gpu,
                              backward: bool) -> list[roofline.Launch]:
    """kernels/attention.py's launches on [batch, seqlen, heads, head_dim] 16-bit inputs."""
    from fastscale.kernels import attention as kernels

    block_d = kernels.width(head_dim)
    names = ("forward", "dkdv", "dq") if backward else ("forward",)
    tiles = {k: roofline.Tile.of(kernels.CONFIGS[gpu.arch][(k, block_d)]) for k in names}
    compiled = {k: COMPILED[gpu.arch][f"attention.{k}.d{block_d}"] for k in (*names, *(("delta",) if backward else ()))}
    return roofline.attention(batch, heads, seqlen, head_dim, block_d, causal, tiles, compiled, gpu, backward=backward)


def attention_estimates(batch_tokens: int, max_seqlen: int, heads: int, head_dim: int, causal: bool,
                        capability: tuple[int, int], backward: bool) -> dict[str, float]:
    """Estimated seconds per backend ("triton", "flash_attn"; "torch" as flash_attn)."""
    gpu = gpu_for(capability)
    batch = max(1, math.ceil(batch_tokens / max_seqlen))
    triton = _seconds(triton_attention_launches(batch, max_seqlen, heads, head_dim, causal, gpu, backward), gpu)
    forward = _seconds(roofline.flash_attention2_forward(batch, heads, max_seqlen, head_dim, causal, gpu), gpu)
    flash = forward * (1 + 2.5 * FA2_FORWARD_OVER_BACKWARD) if backward else forward
    return {"triton": triton, "flash_attn": flash, "torch": flash}


@functools.lru_cache(maxsize=256)
def fastest_attention_backend(batch_tokens: int, max_seqlen: int, heads: int, head_dim: int, dtype: torch.dtype, causal: bool,
                              capability: tuple[int, int], available: tuple[str, ...], backward: bool = True) -> str:
    """The available backend ("triton", "flash_attn" or "torch") with the shortest estimate; torch
    only when it is the only one available (and for fp32, which only it serves)."""
    if dtype == torch.float32:
        return "torch"
    candidates = [b for b in ("triton", "flash_attn") if b in available]
    if not candidates:
        return "torch"
    if len(candidates) == 1:
        return candidates[0]
    estimates = attention_estimates(batch_tokens, max_seqlen, heads, head_dim, causal, capability, backward)
    return min(candidates, key=estimates.get)
