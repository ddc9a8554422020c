"""Estimated GPU time of a kernel from its compiled code and its tile schedule: a roofline model.

Every number this module produces is an ESTIMATE, never a measurement: no GPU ran anything. It
exists so that a machine without a GPU can still say how fast a kernel would be, from facts read in
the compiled code (kernels/aot.py's report: MMA instruction and its N, registers and shared memory
-> CTAs per SM, GPU-scope fences, atomics) and from the launch's tile schedule (programs, tiles per
program, padded and recomputed work), read from the kernel module's own configuration tables.

The model, per launch (one kernel grid) at a shape
---------------------------------------------------
A launch is a set of programs, each a sequence of tiles. Its resources, summed over all programs:

  * tensor-core time = MMA FLOPs actually issued (padding and recomputation included) / rate, where
    rate = datasheet dense peak x TENSOR_SUSTAINED x the instruction's factor: wgmma (SASS HGMMA) 1,
    mma.sync (SASS HMMA) on sm_90 2/3 [FA3], on sm_80 1 (its native instruction). Only 16-bit
    inputs are modelled (fp32 inputs run on FMA units, a regime nobody benchmarks).
  * shared-memory time = bytes through shared memory / (SMs x 128 B/clk x clock) [SMEM]: the operand
    tiles written by the asynchronous copies plus the MMA operand reads. wgmma reads its B operand
    from shared memory once per 64-row warpgroup and its A (unless A lives in registers) once per
    instruction, so a narrow HGMMA.64xNx16 needs more bytes per FLOP: at N=64 with A in shared memory
    it just saturates the 128 B/clk of an H100 SM, at N=16 it needs 2.5x that. mma.sync reads
    through ldmatrix once per warp row/column of the CTA's warp grid (taken as the grid that reads
    the fewest bytes).
  * HBM time = bytes / HBM bandwidth. Bytes are the compulsory reads and writes plus what the launch
    order re-reads: programs that run at the same time (one wave: SMs x CTAs per SM) share the tiles
    they read through L2 when the wave's working set fits in L2; a GEMM launched in groups of
    GROUP_M row blocks reads per wave its GROUP_M row blocks and the wave's column blocks once.
  * MUFU time = exp2 evaluations / (SMs x 16/clk x clock) [PG]; the softmax's other fp32 work
    (scale, max, subtract, sum, convert: FP32_OPS_PER_SOFTMAX_ELEMENT) runs on the FMA pipes at
    128 lanes/clk/SM [PG]; the two pipes are separate, so the softmax takes the longer of the two.
  * atomics: a GPU-scope fence (SASS MEMBAR.ALL.GPU, what tl.atomic_add's default acq_rel emits)
    stalls its warp for an L2 round trip (FENCE_CYCLES); the fences of one warp serialize, so a
    program lasts at least fences_per_warp x FENCE_CYCLES, and the launch at least that per wave.
    Atomic read-modify-writes whose accumulators do not fit in L2 move 8 bytes each through HBM.

  The launch takes the longest of tensor + softmax, shared memory, HBM and atomics. Softmax and MMAs
  add up: a warpgroup waits for its MMA before the softmax that reads it, and overlapping them across
  warpgroups takes explicit scheduling (FA3's ping-pong and intra-warpgroup pipelining, section
  3.1), which none of the Triton kernels here has. Wave quantization and load
  imbalance: the programs are placed in launch order on SMs x CTAs-per-SM slots, each taking the
  first free slot (what the hardware block scheduler does); the launch lasts the last slot's finish,
  which the model turns into a factor >= 1 on the balanced time.

What it leaves out (so read the results as optimistic bounds, and see the calibration): instruction
issue limits other than the softmax, latency that too few warps cannot hide (beyond the overlap
rule above), L2 bandwidth, launch overheads (a few microseconds per launch), clock throttling beyond
TENSOR_SUSTAINED. Calibration (benchmarks/results/estimates.md): Liger-Kernel's fused linear
cross-entropy, modelled the same way (its GEMMs are cuBLAS: ideal tiles at TENSOR_SUSTAINED, its
cross-entropy kernel compiled here), against Liger's published A100 times.

Sources
-------
  [H100] NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOP/s dense BF16, 3.35 TB/s HBM3; H100 architecture whitepaper: 132 SMs, 50 MB L2. 989.4e12 / (132 x 4096
         dense BF16 FLOP/clk/SM) = 1.83 GHz, the clock the peak assumes.
  [A100] NVIDIA A100 datasheet (SXM4 80GB): 312 TFLOP/s dense BF16, 2.039 TB/s;
         A100 whitepaper: 108 SMs, 40 MB L2, 1.41 GHz boost (108 x 2048 x 1.41e9 = 312e12).
  [PG]   CUDA C++ Programming Guide, "Arithmetic Instructions" throughput table (compute capability
         8.0 and 9.0): 16 exp2 (MUFU) and 128 fp32 FMA results per clock per SM; shared memory: 32
         banks x 4 bytes per clock per SM.
  [FA3]  Shah et al., FlashAttention-3 (arXiv 2407.08608): mma.sync reaches about 2/3 of the H100
         tensor-core peak, wgmma is needed for the rest (section 2.2); overlapping softmax with the
         GEMMs of another warpgroup (section 3.1).
  Assumptions (no published source; the calibration tests them): TENSOR_SUSTAINED, FENCE_CYCLES,
  FP32_OPS_PER_SOFTMAX_ELEMENT.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from typing import Sequence

LABEL = "ESTIMATE from compiled code, no GPU measured"

# Fraction of the datasheet tensor peak that large MMA work sustains (clock and power limits),
# applied alike to our kernels and to cuBLAS. Assumption, tested by the Liger calibration.
TENSOR_SUSTAINED = 0.8
# Cycles a GPU-scope fence (MEMBAR.ALL.GPU) stalls its warp: one L2 round trip of the atomics before
# it. Assumption (order of magnitude of an L2 access under load).
FENCE_CYCLES = 600
# fp32 instructions per softmax element besides exp2: scale, running max, subtract, sum, convert.
FP32_OPS_PER_SOFTMAX_ELEMENT = 5
SMEM_BYTES_PER_CLOCK = 128  # per SM [PG]
MUFU_PER_CLOCK = 16  # exp2 results per SM per clock [PG]
FP32_LANES_PER_CLOCK = 128  # per SM [PG]


@dataclass(frozen=True)
class Gpu:
    name: str
    arch: int
    sms: int
    clock_hz: float
    tensor_flops: float  # dense 16-bit tensor-core peak
    hbm_bytes_per_s: float
    l2_bytes: int

    def per_sm_rate(self, per_clock: float) -> float:
        return self.sms * per_clock * self.clock_hz


H100_SXM = Gpu("H100 SXM", 90, 132, 1.83e9, 989.4e12, 3.35e12, 50 * 2**20)
A100_SXM = Gpu("A100 SXM 80GB", 80, 108, 1.41e9, 312e12, 2.039e12, 40 * 2**20)
GPUS = {90: H100_SXM, 80: A100_SXM}


@dataclass(frozen=True)
class Compiled:
    """What the model reads from one entry of the aot report (kernels/aot.py): the MMA instruction
    (and the N of HGMMA.64xNx16), occupancy, warps, and GPU-scope fences / atomics per loop body."""

    kernel: str
    arch: int
    mma: str  # "wgmma" (SASS HGMMA), "mma_sync" (HMMA) or "none"
    mma_n: int  # N of most of its HGMMA.64xNx16 instructions (0 unless wgmma)
    ctas_per_sm: int
    num_warps: int
    gpu_fences: int  # static count of MEMBAR.*.GPU/SYS in the SASS
    atomics: int  # static count of ATOMG + REDG

    @classmethod
    def from_report(cls, entry: dict) -> "Compiled":
        sass = entry["sass"]
        hgmma = {shape: count for shape, count in sass.get("HGMMA", {}).items() if count}
        if hgmma:
            mma = "wgmma"
        else:
            mma = "mma_sync" if sass.get("HMMA", 0) else "none"
        fences = sum(n for op, n in sass.get("MEMBAR", {}).items() if op.endswith((".GPU", ".SYS")))
        # The N most of its HGMMA instructions have (an instruction's N is the tile width it covers).
        width = int(max(hgmma, key=hgmma.get).split("x")[1]) if hgmma else 0
        # A kernel that fits no CTA on an SM (0) fails the aot checks; here it still gets one slot.
        return cls(entry["kernel"], entry["arch"], mma, width, max(entry["ctas_per_sm"], 1),
                   entry["num_warps"], fences, sass.get("ATOMG", 0) + sass.get("REDG", 0))


@dataclass(frozen=True)
class Launch:
    """One kernel grid at a shape, as totals over its programs (see the module docstring)."""

    label: str
    compiled: Compiled
    programs: int
    mma_flops: float = 0.0
    smem_bytes: float = 0.0
    hbm_bytes: float = 0.0
    exp2: float = 0.0  # softmax elements (one exp2 each)
    fp32_ops: float = 0.0  # other fp32 work of the launch (the online softmax's accumulator rescale)
    fences_per_warp: float = 0.0  # GPU-scope fences one warp of the longest program executes
    atomic_hbm_bytes: float = 0.0
    program_work: Sequence[float] | None = None  # relative work per program, in launch order; None: equal


@dataclass(frozen=True)
class LaunchTime:
    label: str
    seconds: float
    parts: dict  # resource -> seconds (balanced, before the imbalance factor)
    imbalance: float  # makespan / balanced time, >= 1
    bound: str


def tensor_rate(compiled: Compiled, gpu: Gpu) -> float:
    """Sustained FLOP/s of the kernel's MMA instruction on this GPU (16-bit operands)."""
    factor = 2 / 3 if (compiled.mma == "mma_sync" and gpu.arch >= 90) else 1.0
    return gpu.tensor_flops * TENSOR_SUSTAINED * factor


def imbalance(program_work: Sequence[float] | None, programs: int, slots: int) -> float:
    """Makespan of the programs placed in launch order on `slots` concurrent slots (each program
    takes the first slot to free up), over the perfectly balanced time."""
    if program_work is None:
        return math.ceil(programs / slots) / (programs / slots)
    free = [0.0] * min(slots, len(program_work))
    for work in program_work:
        heapq.heapreplace(free, free[0] + work)
    return max(free) / (sum(program_work) / slots)


def launch_time(launch: Launch, gpu: Gpu) -> LaunchTime:
    c = launch.compiled
    slots = gpu.sms * c.ctas_per_sm
    tensor = launch.mma_flops / tensor_rate(c, gpu) if launch.mma_flops else 0.0
    softmax = max(launch.exp2 / gpu.per_sm_rate(MUFU_PER_CLOCK),
                  (launch.exp2 * FP32_OPS_PER_SOFTMAX_ELEMENT + launch.fp32_ops) / gpu.per_sm_rate(FP32_LANES_PER_CLOCK))
    fence_waves = math.ceil(launch.programs / slots)
    parts = {
        "tensor": tensor,
        "softmax": softmax,
        "shared memory": launch.smem_bytes / gpu.per_sm_rate(SMEM_BYTES_PER_CLOCK),
        "HBM": (launch.hbm_bytes + launch.atomic_hbm_bytes) / gpu.hbm_bytes_per_s,
        "fences": fence_waves * launch.fences_per_warp * FENCE_CYCLES / gpu.clock_hz,
    }
    balanced = {"tensor+softmax" if softmax else "tensor": tensor + softmax,
                "shared memory": parts["shared memory"], "HBM": parts["HBM"], "fences": parts["fences"]}
    bound = max(balanced, key=balanced.get)
    factor = imbalance(launch.program_work, launch.programs, slots)
    return LaunchTime(launch.label, balanced[bound] * factor, parts, factor, bound)


@dataclass(frozen=True)
class Estimate:
    """A kernel (one or more launches) at a shape on a GPU, with the FLOPs its convention counts."""

    kernel: str
    shape: str
    gpu: Gpu
    flops: float
    launches: tuple[LaunchTime, ...]

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.launches)

    @property
    def tflops(self) -> float:
        return self.flops / self.seconds / 1e12

    @property
    def fraction_of_peak(self) -> float:
        return self.flops / self.seconds / self.gpu.tensor_flops

    @property
    def bound(self) -> str:
        """The bound of the launch that takes most of the time."""
        return max(self.launches, key=lambda t: t.seconds).bound

    def row(self) -> dict:
        return dict(kernel=self.kernel, shape=self.shape, gpu=self.gpu.name, estimated_ms=self.seconds * 1e3,
                    estimated_tflops=self.tflops, fraction_of_peak=self.fraction_of_peak, bound=self.bound,
                    launches=[dict(label=t.label, ms=t.seconds * 1e3, bound=t.bound, imbalance=t.imbalance,
                                   parts_ms={k: v * 1e3 for k, v in t.parts.items()}) for t in self.launches])


def estimate(kernel: str, shape: str, gpu: Gpu, flops: float, launches: Sequence[Launch]) -> Estimate:
    return Estimate(kernel, shape, gpu, flops, tuple(launch_time(l, gpu) for l in launches))


# ---------------------------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Tile:
    """A program's tile: BLOCK_M x BLOCK_N output, BLOCK_K deep steps; group_m row blocks per launch
    group (1: row-major program order)."""

    bm: int
    bn: int
    bk: int
    group_m: int = 1
    split_k: int = 1  # programs per output tile, each summing a 1/split_k share of K

    @classmethod
    def of(cls, cfg) -> "Tile":
        """The tile of a kernel module's config (block_m, block_n and, for GEMMs, block_k, group_m)."""
        return cls(cfg.block_m, cfg.block_n, getattr(cfg, "block_k", 0), getattr(cfg, "group_m", 1))


def mma_operand_bytes(m: int, n: int, k: int, compiled: Compiled, elem: int, *, a_in_smem: bool = True) -> float:
    """Shared-memory bytes the MMA instructions read for one [m, k] @ [k, n] product (see the module
    docstring); an A operand the kernel computed in registers (a_in_smem False) is not read."""
    if compiled.mma == "wgmma":
        # Each HGMMA.64xNx16 reads its own A slice: an A in shared memory is read once per N-wide
        # instruction; B once per 64-row warpgroup.
        row_groups = max(min(compiled.num_warps // 4, m // 64), 1)
        a_reads = math.ceil(n / compiled.mma_n) if compiled.mma_n else 1
        return (m * k * elem * a_reads if a_in_smem else 0) + row_groups * n * k * elem
    if compiled.mma == "mma_sync":
        # The warp grid (rows x columns of warps) that reads the fewest operand bytes.
        grids = [(r, compiled.num_warps // r) for r in (1, 2, 4, 8, 16) if compiled.num_warps % r == 0 and r * 16 <= max(m, 16)]
        warp_rows, warp_cols = min(grids, key=lambda g: m * g[1] + n * g[0])
        return (m * k * elem * warp_cols if a_in_smem else 0) + n * k * elem * warp_rows
    return 0.0


def gemm_hbm_bytes(m: int, n: int, k: int, tile: Tile, concurrent: int, elem: int, l2_bytes: int) -> float:
    """Operand bytes a tiled GEMM reads from HBM in its launch order. The programs that run together
    (a wave of `concurrent`) step through K together, so each row block and column block the wave
    touches is read once per wave; the next wave (same row blocks in grouped order, the next column
    blocks) finds its row blocks in L2 only if the last wave's row and column blocks fit together."""
    rows, cols = math.ceil(m / tile.bm), math.ceil(n / tile.bn)
    programs = rows * cols
    wave = min(concurrent, programs)
    group = min(tile.group_m, rows)
    wave_rows = group if wave <= group * cols else min(rows, math.ceil(wave / cols))
    wave_cols = min(cols, math.ceil(wave / wave_rows))
    waves = math.ceil(programs / wave)
    a_wave, b_wave = wave_rows * tile.bm * k * elem, wave_cols * tile.bn * k * elem
    a_reads = math.ceil(rows / wave_rows) if a_wave + b_wave <= l2_bytes else waves
    return a_reads * a_wave + waves * b_wave


def gemm(label: str, m: int, n: int, k: int, tile: Tile, compiled: Compiled, gpu: Gpu, *, elem: int = 2,
         out_bytes: float = 0.0, extra_hbm: float = 0.0, exp2: float = 0.0) -> Launch:
    """A tiled GEMM launch (M x N output, K deep) with whatever its epilogue writes (out_bytes) and
    any other HBM traffic or softmax work of the same launch. Padding to whole tiles is counted;
    split-K partials are written and read back in fp32."""
    rows, cols, steps = math.ceil(m / tile.bm), math.ceil(n / tile.bn), math.ceil(k / tile.split_k / tile.bk)
    programs = rows * cols * tile.split_k
    if tile.split_k > 1:
        extra_hbm += 2.0 * tile.split_k * m * n * 4
    return Launch(
        label, compiled, programs,
        mma_flops=programs * steps * 2.0 * tile.bm * tile.bn * tile.bk,
        # Both operand tiles are copied into shared memory at every step, then read by the MMAs.
        smem_bytes=programs * steps * ((tile.bm + tile.bn) * tile.bk * elem + mma_operand_bytes(tile.bm, tile.bn, tile.bk, compiled, elem)),
        hbm_bytes=gemm_hbm_bytes(m, n, k, tile, gpu.sms * compiled.ctas_per_sm // tile.split_k or 1, elem, gpu.l2_bytes) + out_bytes + extra_hbm,
        exp2=exp2,
    )


def cublas_gemm(label: str, m: int, n: int, k: int, gpu: Gpu, *, out_bytes: float, extra_hbm: float = 0.0) -> Launch:
    """A cuBLAS GEMM: no compiled code to read, so an ideal one: 128x256x64 tiles in grouped order,
    two CTAs per SM, wgmma on sm_90 (mma.sync on sm_80), at TENSOR_SUSTAINED, split along K when
    the output tiles alone would not fill the GPU (as cuBLAS's heuristics do)."""
    mma = "wgmma" if gpu.arch >= 90 else "mma_sync"
    compiled = Compiled("cublas", gpu.arch, mma, 256 if mma == "wgmma" else 0, 2, 8, 0, 0)
    tiles = math.ceil(m / 128) * math.ceil(n / 256)
    split_k = max(1, min(math.ceil(2 * gpu.sms / tiles), math.ceil(k / 64)))
    return gemm(label, m, n, k, Tile(128, 256, 64, group_m=8, split_k=split_k), compiled, gpu, out_bytes=out_bytes, extra_hbm=extra_hbm)


@dataclass(frozen=True)
class Anchor:
    """A published number to print beside an estimate, with where it was published."""

    name: str
    gpu: str
    setting: str
    value: str
    source: str
    tflops: float  # the value in TFLOP/s by the convention of the estimate it stands beside


# ---------------------------------------------------------------------------------------------- kernels
# Tile schedules of the shipped kernels. Tile sizes come from the kernel modules' config tables (the
# callers pass them), the instruction and occupancy from their compiled code (Compiled).


def cross_entropy_flops(n: int, vocab: int, d: int, *, backward: bool = True) -> float:
    """The benchmarks' convention: 2*N*V*d for the logits, 4*N*V*d more for the two gradient matmuls."""
    return (6.0 if backward else 2.0) * n * vocab * d


def vocab_sweep(label: str, n: int, vocab: int, d: int, tile: Tile, compiled: Compiled, gpu: Gpu, programs: int) -> Launch:
    """A logits-free loss forward: `programs` programs of BLOCK_M tokens, each folding a run of
    vocabulary tiles into running statistics (one exp2 per logit). The programs in flight walk their
    runs in step, so its HBM traffic is a GEMM's whose waves are those programs at one tile each."""
    concurrent = min(programs, gpu.sms * compiled.ctas_per_sm)
    launch = gemm(label, n, vocab, d, tile, compiled, gpu, exp2=float(n) * vocab)
    return replace(launch, programs=programs, hbm_bytes=gemm_hbm_bytes(n, vocab, d, tile, concurrent, 2, gpu.l2_bytes))


def cross_entropy_bands(n: int, vocab: int, d: int, rows: int, tiles: dict, compiled: dict, gpu: Gpu) -> list[Launch]:
    """The band design (kernels/cross_entropy.py `gradients`), per band of `rows` tokens: the logits
    GEMM with its statistics epilogue (writes z, one exp2 per logit), the elementwise z -> dz kernel
    (reads and writes z, one exp2 per logit), dX = dz @ W (fp32 out) and dW += dz^T @ X (fp32
    read-modify-write of all of dW). tiles and compiled are keyed by the module's kernel names:
    "logits", "logit_grad", "d_hidden", "d_weight"."""
    launches = []
    for start in range(0, n, rows):
        r = min(rows, n - start)
        grad_tile = tiles["logit_grad"]
        grad_programs = math.ceil(r / grad_tile.bm) * math.ceil(vocab / grad_tile.bn)
        launches += [
            gemm(f"logits band {start // rows}", r, vocab, d, tiles["logits"], compiled["logits"], gpu,
                 out_bytes=r * vocab * 2 + 3 * math.ceil(vocab / tiles["logits"].bn) * r * 4, exp2=r * vocab),
            Launch(f"logit_grad band {start // rows}", compiled["logit_grad"], grad_programs,
                   hbm_bytes=2 * r * vocab * 2, exp2=r * vocab),
            gemm(f"dX band {start // rows}", r, d, vocab, tiles["d_hidden"], compiled["d_hidden"], gpu, out_bytes=r * d * 4),
            gemm(f"dW band {start // rows}", vocab, d, r, tiles["d_weight"], compiled["d_weight"], gpu, out_bytes=2 * vocab * d * 4),
        ]
    return launches


def cross_entropy_atomic(n: int, vocab: int, d: int, tiles: dict, compiled: dict, gpu: Gpu) -> list[Launch]:
    """The design before the band rewrite (commit a6f817a): a logits-free forward whose programs each
    sweep the whole vocabulary for BLOCK_M tokens, then a backward over (row block, vocabulary tile)
    programs, row blocks fastest, that recomputes the logit tile and adds into dX and dW with fp32
    atomics. Each of the kernel's GPU-scope fences is taken to sit in its d loop (d / BLOCK_K turns)."""
    fwd, bwd = tiles["forward"], tiles["backward"]
    rows = math.ceil(n / fwd.bm)
    # One vocabulary split when the row blocks alone fill the GPU twice (the old _vocab_splits);
    # all programs walk the vocabulary in step, like a GEMM launched in one group of all row blocks.
    splits = max(1, min(math.ceil(vocab / fwd.bn), math.ceil(2 * gpu.sms / rows)))
    forward_launch = vocab_sweep("forward (loss, lse)", n, vocab, d, replace(fwd, group_m=rows), compiled["forward"], gpu, rows * splits)
    b_rows, b_cols = math.ceil(n / bwd.bm), math.ceil(vocab / bwd.bn)
    logit_tile = gemm("backward", n, vocab, d, Tile(bwd.bm, bwd.bn, bwd.bk, group_m=b_rows), compiled["backward"], gpu, exp2=float(n) * vocab)
    steps = math.ceil(d / bwd.bk)
    c = compiled["backward"]
    # Per d step: dX tile += dz @ W_k and dW tile += dz^T @ X_k, dz from registers; X_k, W_k re-read.
    grad_smem = b_rows * b_cols * steps * (
        (bwd.bm + bwd.bn) * bwd.bk * 2
        + mma_operand_bytes(bwd.bm, bwd.bk, bwd.bn, c, 2, a_in_smem=False)
        + mma_operand_bytes(bwd.bn, bwd.bk, bwd.bm, c, 2, a_in_smem=False))
    # dX's accumulators (N x d fp32) outgrow L2; each row block's atomics then go to HBM (8 bytes
    # per read-modify-write). dW's column block is shared by the wave and stays in L2.
    dx_atomics = float(n) * d * b_cols if c.atomics and n * d * 4 > gpu.l2_bytes else 0.0
    backward_launch = replace(
        logit_tile,
        mma_flops=logit_tile.mma_flops * 3,
        smem_bytes=logit_tile.smem_bytes + grad_smem,
        hbm_bytes=2 * logit_tile.hbm_bytes,
        fences_per_warp=c.gpu_fences * steps,
        atomic_hbm_bytes=8 * dx_atomics)
    return [forward_launch, backward_launch]


def cublas_chunks(n: int, vocab: int, d: int, chunk: int, ce_kernel: Compiled, ce_programs: int, grad_elem: int, gpu: Gpu) -> list[Launch]:
    """Chunked fused linear cross-entropy on cuBLAS (Liger-Kernel's, and the "cuda" backend's): per
    chunk of tokens the logits GEMM (16-bit out), a cross-entropy kernel of `ce_programs` programs
    that reads the logit chunk twice and writes the gradient in place (2 exp2 per logit), dX =
    grad @ W and dW += grad^T @ X with C read and written in grad_elem bytes."""
    launches = []
    for start in range(0, n, chunk):
        c = min(chunk, n - start)
        row_bytes = c * vocab * 2
        launches += [
            cublas_gemm("logits chunk", c, vocab, d, gpu, out_bytes=row_bytes),
            Launch("cross-entropy kernel chunk", ce_kernel, ce_programs, hbm_bytes=3 * row_bytes, exp2=2.0 * c * vocab),
            cublas_gemm("dX chunk", c, d, vocab, gpu, out_bytes=2 * c * d * grad_elem),
            cublas_gemm("dW chunk", vocab, d, c, gpu, out_bytes=2 * vocab * d * grad_elem),
        ]
    return launches


def liger_fused_linear_cross_entropy(n: int, vocab: int, d: int, ce_kernel: Compiled, gpu: Gpu) -> list[Launch]:
    """Liger-Kernel's fused linear cross-entropy (liger_kernel/ops/fused_linear_cross_entropy.py) in
    bf16: chunks of next_pow2(ceil(N / ceil(V / d))) tokens, one cross-entropy program per token,
    bf16 gradients (dW accumulated in bf16)."""
    chunk = min(n, 1 << (math.ceil(n / math.ceil(vocab / d)) - 1).bit_length())
    return cublas_chunks(n, vocab, d, chunk, ce_kernel, chunk, 2, gpu)


def attention_flops(batch: int, heads: int, seqlen: int, head_dim: int, *, causal: bool, backward: bool) -> float:
    """flash-attn's convention: 4*B*T^2*H*D for the forward, halved when causal; backward 2.5x that."""
    forward = 4.0 * batch * seqlen**2 * heads * head_dim / (2 if causal else 1)
    return forward * (3.5 if backward else 1.0)


def _visited(first_tile_start: int, own: int, other: int, seqlen: int, causal: bool, *, keys_of_queries: bool) -> int:
    """Tiles of size `other` one program owning `own` positions from `first_tile_start` visits."""
    if not causal:
        return math.ceil(seqlen / other)
    if keys_of_queries:  # key tiles [0, last query + 1)
        return math.ceil(min(first_tile_start + own, seqlen) / other)
    return math.ceil(seqlen / other) - first_tile_start // other  # query tiles at or after the keys


def attention(batch: int, heads: int, seqlen: int, head_dim: int, block_d: int, causal: bool, tiles: dict,
              compiled: dict, gpu: Gpu, *, backward: bool) -> list[Launch]:
    """The FlashAttention-2 style kernels of kernels/attention.py on [B, T, H, D] bf16 (no GQA):
    forward (program = query tile of one head, longest first), and for the backward delta, dK/dV
    (program = key tile, loops over the query tiles that see it: 4 products per pair) and dQ
    (program = query tile: 3 products per pair). Work is counted per visited tile pair, so the
    diagonal tiles' masked half and the head-dim padding to BLOCK_D are included."""
    e = 2
    qkvo = batch * seqlen * heads * head_dim * e
    kernels = ("forward", "delta", "dkdv", "dq") if backward else ("forward",)
    launches = []
    for name in kernels:
        c = compiled[name]
        if name == "delta":
            launches.append(Launch("delta", c, math.ceil(batch * seqlen / 64) * heads, hbm_bytes=2 * qkvo))
            continue
        tile = tiles[name]
        own, other = (tile.bn, tile.bm) if name == "dkdv" else (tile.bm, tile.bn)
        n_own = math.ceil(seqlen / own)
        order = range(n_own) if name == "dkdv" else range(n_own - 1, -1, -1)  # longest first
        per_head = [_visited(i * own, own, other, seqlen, causal, keys_of_queries=name != "dkdv") for i in order]
        work = per_head * (batch * heads)
        pairs = float(sum(work))
        products = {"forward": 2, "dkdv": 4, "dq": 3}[name]
        # Per tile pair: the other side's tiles are copied in (K, V | Q, dO | K, V) and read by the
        # MMAs; the program's own tile was loaded once; P / dS come from registers.
        if name == "forward":
            reads = mma_operand_bytes(own, other, block_d, c, e) + mma_operand_bytes(own, block_d, other, c, e, a_in_smem=False)
        elif name == "dkdv":
            reads = 2 * mma_operand_bytes(own, other, block_d, c, e) + 2 * mma_operand_bytes(own, block_d, other, c, e, a_in_smem=False)
        else:
            reads = 2 * mma_operand_bytes(own, other, block_d, c, e) + mma_operand_bytes(own, block_d, other, c, e, a_in_smem=False)
        copies = 2 * other * block_d * e
        # A head's K and V (or Q and dO) are re-read from L2 by each of its programs; from HBM only
        # when the heads of one wave do not fit in L2 together.
        heads_in_wave = math.ceil(gpu.sms * c.ctas_per_sm / n_own) + 1
        rereads = pairs * copies if heads_in_wave * 2 * seqlen * block_d * e > gpu.l2_bytes else 0.0
        launches.append(Launch(
            name, c, len(work),
            mma_flops=pairs * products * 2.0 * own * other * block_d,
            smem_bytes=pairs * (copies + reads),
            # Compulsory: forward Q, K, V, O; dK/dV Q, K, V, dO, dK, dV; dQ Q, K, V, dO, dQ.
            hbm_bytes={"forward": 4, "dkdv": 6, "dq": 5}[name] * qkvo + rereads,
            exp2=pairs * own * other,
            fp32_ops=pairs * own * block_d if name == "forward" else 0.0,  # rescaling the output accumulator
            program_work=work))
    return launches


ANCHORS = (
    Anchor("Liger-Kernel fused linear cross-entropy (v0.4.2), forward+backward", "A100-SXM4-80GB",
           "BT 32768, H 4096, V 128256, bf16", "511.06 ms",
           "linkedin/Liger-Kernel benchmark/data/all_benchmark_data.csv, row fused_linear_cross_entropy,liger,full,speed,ms,BT,B x T,32768 (2024-11-22)",
           tflops=cross_entropy_flops(32768, 128256, 4096) / 0.51106 / 1e12),
    Anchor("Liger-Kernel fused linear cross-entropy (v0.4.2), forward+backward", "A100-SXM4-80GB",
           "BT 8192, H 4096, V 128256, bf16", "166.71 ms",
           "linkedin/Liger-Kernel benchmark/data/all_benchmark_data.csv, row fused_linear_cross_entropy,liger,full,speed,ms,BT,B x T,8192 (2024-11-22)",
           tflops=cross_entropy_flops(8192, 128256, 4096) / 0.16671 / 1e12),
    Anchor("Cut Cross-Entropy, loss+gradient", "A100-SXM4-80GB", "N 8192, V 256000, D 2304 (Gemma 2 2B), bf16", "135 ms",
           "Wijmans et al., Cut Your Losses in Large-Vocabulary Language Models (arXiv 2411.09009), Table 1 (with gradient filtering, which skips work)",
           tflops=cross_entropy_flops(8192, 256000, 2304) / 0.135 / 1e12),
    Anchor("Liger-Kernel, loss+gradient (as measured by the CCE authors)", "A100-SXM4-80GB", "N 8192, V 256000, D 2304, bf16", "303 ms",
           "arXiv 2411.09009, Table 1, row Liger Kernels", tflops=cross_entropy_flops(8192, 256000, 2304) / 0.303 / 1e12),
    Anchor("FlashAttention-3, forward, causal", "H100 80GB SXM5", "d 128, T 8k, B*T 16k, H*d 2048, bf16", "602 TFLOP/s",
           "Shah et al., FlashAttention-3 (arXiv 2407.08608), Figure 5, causal head dim 128 panel (bar labels)", tflops=602),
    Anchor("FlashAttention-2, forward, causal", "H100 80GB SXM5", "d 128, T 8k, same setup", "333 TFLOP/s",
           "arXiv 2407.08608, Figure 5, causal head dim 128 panel", tflops=333),
    Anchor("Triton fused attention (as measured by the FA3 authors), forward, causal", "H100 80GB SXM5", "d 128, T 8k, same setup",
           "369 TFLOP/s", "arXiv 2407.08608, Figure 5, causal head dim 128 panel", tflops=369),
    Anchor("FlashAttention-3, backward", "H100 80GB SXM5", "d 128, T 8k, same setup", "559 TFLOP/s",
           "arXiv 2407.08608, Figure 6, backward head dim 128 panel (the figure has no causal/non-causal split)", tflops=559),
    Anchor("FlashAttention-2, backward", "H100 80GB SXM5", "d 128, T 8k, same setup", "318 TFLOP/s",
           "arXiv 2407.08608, Figure 6, backward head dim 128 panel", tflops=318),
    Anchor("Triton tutorial fused attention v2 (tritonbench), forward", "H100", "B 2, H 16, T 8192, d 128", "470.7 TFLOP/s",
           "pytorch/benchmark commit ff65cb6 (PR 2391) message, triton_tutorial_flash_v2-tflops column; causality not stated", tflops=470.7),
)

def flash_attention2_forward(batch: int, heads: int, seqlen: int, head_dim: int, causal: bool, gpu: Gpu) -> list[Launch]:
    """FlashAttention-2's forward as flash-attn launches it for head dim 128 on A100 and H100
    (csrc/flash_attn/src/flash_fwd_launch_template.h, run_mha_fwd_hdim128: Flash_fwd_kernel_traits
    <128, 128, 64, 4>: 128 queries x 64 keys, 4 warps, mma.sync; 96 KB shared memory: 2 CTAs per SM
    on H100, 1 on A100, as its comments say). Not compiled here (CUDA C++): the facts are stated."""
    compiled = Compiled("flash_fwd_kernel", gpu.arch, "mma_sync", 0, 2 if gpu.arch >= 90 else 1, 4, 0, 0)
    return attention(batch, heads, seqlen, head_dim, head_dim, causal, {"forward": Tile(128, 64, 0)},
                     {"forward": compiled}, gpu, backward=False)


CROSS_ENTROPY_ANCHORS = ANCHORS[:4]
ATTENTION_ANCHORS = ANCHORS[4:]

# Issue 10's targets on an H100, in TFLOP/s, keyed like the estimates' kernel names.
TARGETS = {
    "cross-entropy forward+backward": 0.6 * H100_SXM.tensor_flops / 1e12,
    "attention forward": 450.0,
    "attention forward+backward": 330.0,
}
