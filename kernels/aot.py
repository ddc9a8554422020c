"""Ahead-of-time compilation of Triton kernels for real GPUs, on a machine without one.

`compile_report` builds PTX and a cubin for an architecture (sm_80 A100, sm_90 H100) and reads the
resources the kernel uses from the cubin with the wheel's own cuobjdump: registers, local memory
(non-zero means spills) and shared memory, and whether the PTX uses wgmma (Hopper) or mma.sync
(Ampere) tensor-core instructions. Tests compile every shipped configuration this way;
`python -m fastscale.kernels.aot fastscale.kernels.cross_entropy` prints the report as JSON.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

@dataclass(frozen=True)
class CompileSpec:
    """One shipped configuration of a @triton.jit kernel, specialized as real launches specialize it.

    Kernel modules yield these from `shipped_configurations(arch)`. signature maps every parameter
    to a Triton type ('*bf16', 'i32', 'fp32', 'constexpr'); constexprs gives every constexpr's value;
    attrs is ASTSource's form, {(param_index,): [["tt.divisibility", 16]]} for 16-byte aligned
    pointers and integers divisible by 16; label says which variant it is, for people."""

    fn: object
    signature: dict
    constexprs: dict
    attrs: dict
    num_warps: int
    num_stages: int
    label: str

    @property
    def kernel(self) -> str:
        return self.fn.__name__


def divisibility_attrs(fn, signature: dict, divisible: set[str]) -> dict:
    """ASTSource attrs marking every pointer parameter, and the integer parameters named in
    `divisible`, as divisible by 16: what the launcher sees for aligned tensors and such sizes."""
    attrs = {}
    for i, param in enumerate(fn.params):
        ty = signature[param.name]
        if ty.startswith("*") or (param.name in divisible and ty in ("i32", "i64")):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


# Maximum shared memory one block may use (opt-in), by compute capability.
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}


@dataclass(frozen=True)
class KernelResources:
    kernel: str
    arch: int
    num_warps: int
    num_stages: int
    registers: int
    local_bytes: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int
    uses_wgmma: bool
    uses_mma_sync: bool

    @property
    def spills(self) -> bool:
        # cuobjdump may show spills as stack frame with LOCAL:0; ptxas -v counts the spill bytes.
        return self.local_bytes > 0 or self.spill_store_bytes > 0 or self.spill_load_bytes > 0

    @property
    def fits_shared_memory(self) -> bool:
        return self.shared_bytes <= SHARED_MEMORY_LIMIT[self.arch]

    def row(self) -> str:
        mma = "wgmma" if self.uses_wgmma else "mma.sync" if self.uses_mma_sync else "no mma"
        return (
            f"sm_{self.arch} warps={self.num_warps} stages={self.num_stages}: {self.registers} regs, "
            f"{self.spill_store_bytes} B spilled, {self.stack_bytes} B stack, {self.shared_bytes} B shared, {mma}"
        )


def _cuobjdump() -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _resource_usage(cubin: bytes) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        Path(path).write_bytes(cubin)
        out = subprocess.run([_cuobjdump(), "-res-usage", path], check=True, capture_output=True, text=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out.split("Function", 1)[1]))
    return {key: int(value) for key, value in usage.items()}


def _spill_bytes(ptx: str, arch: int) -> tuple[int, int]:
    """(spill store, spill load) bytes that ptxas -v reports for the PTX. The wheel's
    ptxas-blackwell is used because Triton's PTX ISA version is newer than its plain ptxas."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        Path(path).write_text(ptx)
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run([str(ptxas), f"-arch={gpu}", "-v", path, "-o", os.path.join(tmp, "kernel.o")],
                             check=True, capture_output=True, text=True).stderr
    stores, loads = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out).groups()
    return int(stores), int(loads)


def compile_report(fn, signature: dict, constexprs: dict, *, arch: int, num_warps: int, num_stages: int, attrs: dict | None = None) -> KernelResources:
    """Compiles `fn` (a @triton.jit function) for sm_<arch> and reports its resources.

    signature maps every argument to a Triton type ('*bf16', 'i32', 'fp32', 'constexpr');
    constexprs gives the constexpr values. attrs optionally marks arguments as the launcher would
    specialize them at run time, e.g. {(0,): [["tt.divisibility", 16]]} for a 16-byte aligned pointer
    or an integer divisible by 16 (argument indices as tuples)."""
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    usage = _resource_usage(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    spill_stores, spill_loads = _spill_bytes(ptx, arch)
    return KernelResources(
        kernel=fn.__name__,
        arch=arch,
        num_warps=num_warps,
        num_stages=num_stages,
        registers=usage["REG"],
        local_bytes=usage["LOCAL"],
        stack_bytes=usage["STACK"],
        spill_store_bytes=spill_stores,
        spill_load_bytes=spill_loads,
        # Static shared memory in the cubin plus what Triton allocates dynamically at launch.
        shared_bytes=usage["SHARED"] + compiled.metadata.shared,
        uses_wgmma="wgmma" in ptx,
        uses_mma_sync="mma.sync" in ptx,
    )


def report_module(module_name: str, archs=(80, 90)) -> list[dict]:
    """Compiles every configuration a kernel module ships (its `shipped_configurations()` yields
    (label, jit function, signature, constexprs, config with num_warps/num_stages)) for each arch."""
    module = importlib.import_module(module_name)
    reports = []
    for label, fn, signature, constexprs, cfg in module.shipped_configurations():
        for arch in archs:
            report = compile_report(fn, signature, constexprs, arch=arch, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            reports.append({"label": label, **asdict(report), "spills": report.spills, "fits_shared_memory": report.fits_shared_memory})
    return reports


def report_in_subprocess(module_name: str) -> list[dict]:
    """report_module in a fresh interpreter: under TRITON_INTERPRET=1 (as in the tests) @triton.jit
    makes interpreted functions, which cannot be compiled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "fastscale.kernels.aot", module_name], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


if __name__ == "__main__":
    json.dump(report_module(sys.argv[1]), sys.stdout, indent=1)
