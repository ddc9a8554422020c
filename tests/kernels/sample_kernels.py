"""Small kernels with known compiled properties, good and bad, that show the report's checks can fail.

`shipped_configurations(arch)` yields them as a kernel module would; labels say what each must show.
Imported by name (tests/kernels is on sys.path when pytest runs, PYTHONPATH for subprocesses).
"""

import triton
import triton.language as tl

from fastscale.kernels.aot import CompileSpec, divisibility_attrs


@triton.jit
def atomic_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, SEM: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets, mask=offsets < n)
    tl.atomic_add(out_ptr + offsets, x, mask=offsets < n, sem=SEM)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rows[:, None] * K + (k + ks)[None, :])
        b = tl.load(b_ptr + (k + ks)[:, None] * N + cols[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rows[:, None] * N + cols[None, :], acc.to(c_ptr.dtype.element_ty))


def _atomic(sem: str) -> CompileSpec:
    signature = {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr", "SEM": "constexpr"}
    return CompileSpec(atomic_kernel, signature, {"BLOCK": 1024, "SEM": sem},
                       divisibility_attrs(atomic_kernel, signature, {"n"}), 4, 1, f"atomic {sem}")


def _matmul(block_m: int, block_n: int, block_k: int, num_warps: int, num_stages: int, label: str) -> CompileSpec:
    signature = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32",
                 "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
    return CompileSpec(matmul_kernel, signature, {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k},
                       divisibility_attrs(matmul_kernel, signature, {"M", "N", "K"}), num_warps, num_stages, label)


def shipped_configurations(arch: int):
    yield _atomic("acq_rel")
    yield _atomic("relaxed")
    yield _matmul(128, 128, 64, 8, 3, "matmul wide")
    yield _matmul(64, 32, 64, 4, 3, "matmul narrow")
    yield _matmul(128, 256, 128, 4, 3, "matmul huge")
