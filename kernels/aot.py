"""The kernel that really runs, read from its compiled code on a machine without a GPU.

Every kernel module ships `shipped_configurations(arch)`: one `CompileSpec` per configuration its
launchers run on sm_<arch>, with the specialization a real launch gets (`attrs`: 16-byte aligned
pointers, sizes and strides divisible by 16). `compile_report` compiles one spec with Triton for a
GPU target (sm_80 A100, sm_90 H100, sm_100 B200) and reads the result; `report` does it for every
shipped configuration of some modules in a pool of worker processes (fresh interpreters without
TRITON_INTERPRET), `recompile` again from the JSON entries alone; `python -m fastscale.kernels.aot
--json [--arch 80|90|100]... [MODULE ...]` prints the report (default: both kernel modules, all three
archs; without --json a line per configuration with its problems).

What each number of a report entry means
----------------------------------------
- `module`, `kernel`, `signature`, `constexprs`, `attrs`, `arch`, `num_warps`, `num_stages`: the
  compile's inputs, all JSON: `getattr(import_module(module), kernel)` is the @triton.jit function,
  `attrs` is ASTSource's dict as a list of `[[param_index], [[name, value], ...]]`. `spec_from_entry`
  turns an entry back into a CompileSpec, so anyone can recompile it and compare. `label` names the
  variant for people.
- `registers`: registers per thread (cuobjdump -res-usage REG). 255 is the hardware maximum.
- `spill_bytes`: spill stores + spill loads, from the log of the very ptxas run that built the cubin
  (Triton's own, with its flags: the wheel's ptxas 12.9 for sm_80, ptxas-blackwell 13.4 for sm_90+). Non-zero means registers overflowed to local memory, which lives
  in DRAM behind L1: a slow kernel. cuobjdump's LOCAL does not show spills reliably; ptxas does.
- `stack_bytes`: per-thread stack frame (cuobjdump STACK); also local memory, also slow.
- `shared_bytes`: shared memory per block: the cubin's static shared memory (cuobjdump SHARED; ptxas
  puts 1 KB there in many sm_90/sm_100 Triton kernels whose PTX declares none) plus the dynamic
  shared memory Triton requests at launch (its pipeline buffers: operand tiles x num_stages, and
  layout conversions). It must be at most the opt-in limit per block
  (`DEVICE_LIMITS[arch].shared_per_block`, `SHARED_MEMORY_LIMIT`).
- `ctas_per_sm`: blocks resident per SM, as cuda_occupancy.h computes it: the least of
  registers (regs/thread x 32 rounded up to 256 per warp, each of the 4 sub-partitions holding
  16384 registers), warps (64 per SM), shared memory (the block's bytes + the 1 KB the driver
  reserves per block, rounded up to 128 B, out of the SM's 164 KB / 228 KB, assuming the driver
  picks the largest shared-memory carveout, which it does for kernels needing it), on sm_100 the
  512 columns of tensor memory (a tcgen05 kernel allocates some per block) and the limit of 32
  blocks per SM. 0 means the block cannot launch. The limits are in `DEVICE_LIMITS` with their
  source. One resident block of 8 warps is 12.5% occupancy.
- `sass`: static counts of SASS opcodes in the cubin (`cuobjdump -sass`), each instruction counted
  once however often it runs (a loop body counts once; use them for what the code can do, not for how
  much it does):
    HGMMA {"64x128x16": n}: sm_90 warpgroup MMA (wgmma). The shape is MxNxK per instruction: 64 rows
      per warpgroup, N the tile width; N >= 64 keeps the tensor cores fed from shared memory, narrow N
      (16, 32) re-reads the A operand for little work and runs below peak.
    HMMA: warp-level mma.sync (sm_80's tensor cores; on sm_90 it reaches about 2/3 of wgmma's peak,
      as the FlashAttention-3 paper measures).
    UTCHMMA: sm_100 tcgen05 MMA (Blackwell tensor cores, accumulating in tensor memory).
    LDGSTS: cp.async global->shared copies (sm_80+ software pipelining; none means loads go through
      registers and the pipeline has one stage).
    UTMALDG: TMA bulk tensor loads (sm_90+ tensor descriptors).
    ATOMG / REDG: global atomics that return / do not return a value (atomic adds into gradients);
      sm_80 writes reductions as RED.E (and returning ones could be ATOM.E), counted here too.
    MEMBAR {"MEMBAR.ALL.GPU": n}: memory fences by full opcode. The last part is the scope: .CTA is a
      cheap block-level fence Triton places around shared memory; .GPU/.SYS wait until every earlier
      write is visible to the whole GPU/system, hundreds to thousands of cycles each (tl.atomic_add's default
      sem="acq_rel" puts one before every atomic).
    MUFU.EX2: the special-function unit's 2^x (softmax, logsumexp): 16 per SM per clock on sm_90,
      an eighth of the FMA rate, so exp-heavy kernels can be bound by it.
- `tl_dots`: the number of tl.dot in the kernel's Triton IR by operand type, as MLIR spells it
  ({"bf16": 2}; "f16", "f32"): which matmuls the tensor-core counts above must account for ({} for
  an elementwise kernel).
- `ptx_acquire_release`: PTX instructions with acquire/release ordering by full opcode
  (`atom.global.gpu.acq_rel.add.f32`, `red.*.release`, `fence.acq_rel.gpu`, `fence.sc.*`,
  `membar.gl`/`membar.sys`); they become the GPU-scope fences above. Relaxed atomics
  (sem="relaxed") do not appear here.
- `error`: present instead of the measurements when the compile failed.

`problems(entry)` lists what a shipped kernel must not do (spills, shared memory over the limit,
GPU- or system-scope fences or acquire/release atomics, 16-bit matmuls off the architecture's
tensor-core path); CI (tests/kernels/test_compile_report.py) fails on any.

sm_100: Triton 3.9 compiles for GPUTarget("cuda", 100, 32) (PTX ISA 9.4, target sm_100a, tcgen05
MMAs) and the wheel's ptxas-blackwell (CUDA 13.4) assembles it, so sm_100 is among the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNEL_MODULES = ("fastscale.kernels.cross_entropy", "fastscale.kernels.attention")
ARCHS = (80, 90, 100)


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


@dataclass(frozen=True)
class DeviceLimits:
    """Per-SM resources that bound occupancy (CUDA C++ Programming Guide, "Technical Specifications
    per Compute Capability", and the CUDA 13.0 cuda_occupancy.h: register allocation unit 256 per
    warp, 4 sub-partitions, shared memory allocated in 128-byte units with 1 KB reserved per block)."""

    gpu: str
    shared_per_sm: int  # bytes, largest carveout
    shared_per_block: int  # bytes a block may opt in to (static + dynamic, without the reservation)
    registers_per_sm: int = 65536
    register_unit: int = 256  # registers per warp are allocated in multiples of this
    sub_partitions: int = 4
    max_warps_per_sm: int = 64
    max_ctas_per_sm: int = 32
    reserved_shared_per_block: int = 1024
    shared_unit: int = 128
    tensor_memory_columns: int = 0  # sm_100's tensor memory: 512 columns of 128 lanes x 32 bit per SM


DEVICE_LIMITS = {
    80: DeviceLimits("A100 (sm_80)", shared_per_sm=164 * 1024, shared_per_block=163 * 1024),
    90: DeviceLimits("H100 (sm_90)", shared_per_sm=228 * 1024, shared_per_block=227 * 1024),
    100: DeviceLimits("B200 (sm_100)", shared_per_sm=228 * 1024, shared_per_block=227 * 1024, tensor_memory_columns=512),
    # The smaller GPUs the kernel modules serve with their sm_80 tables (mma.sync, 99 KB per block).
    86: DeviceLimits("RTX 30xx, A10, A40 (sm_86)", shared_per_sm=100 * 1024, shared_per_block=99 * 1024,
                     max_warps_per_sm=48, max_ctas_per_sm=16),
    89: DeviceLimits("RTX 40xx, L4, L40 (sm_89)", shared_per_sm=100 * 1024, shared_per_block=99 * 1024,
                     max_warps_per_sm=48, max_ctas_per_sm=24),
    120: DeviceLimits("RTX 50xx (sm_120)", shared_per_sm=100 * 1024, shared_per_block=99 * 1024,
                      max_warps_per_sm=48, max_ctas_per_sm=24),
}
SHARED_MEMORY_LIMIT = {arch: limits.shared_per_block for arch, limits in DEVICE_LIMITS.items()}


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def ctas_per_sm(registers: int, shared_bytes: int, warps: int, limits: DeviceLimits, tensor_memory_columns: int = 0) -> int:
    """Resident blocks per SM (cuda_occupancy.h's cudaOccMaxActiveBlocksPerMultiprocessor, default
    cache config, largest carveout), and on sm_100 also by the tensor memory each block allocates."""
    registers_per_warp = _round_up(registers * 32, limits.register_unit)
    registers_per_block = registers_per_warp * _round_up(warps, limits.sub_partitions)
    shared_per_block = _round_up(shared_bytes + limits.reserved_shared_per_block, limits.shared_unit)
    if (registers_per_block > limits.registers_per_sm or shared_bytes > limits.shared_per_block
            or tensor_memory_columns > limits.tensor_memory_columns):
        return 0
    warps_by_registers = limits.registers_per_sm // limits.sub_partitions // registers_per_warp * limits.sub_partitions
    return min(
        warps_by_registers // warps,
        limits.max_warps_per_sm // warps,
        limits.shared_per_sm // shared_per_block,
        limits.tensor_memory_columns // tensor_memory_columns if tensor_memory_columns else limits.max_ctas_per_sm,
        limits.max_ctas_per_sm,
    )


# ---------------------------------------------------------------------------------------------- reading

_NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# An instruction line of cuobjdump -sass: /*0a40*/  [@P0 |@!UP1 ] OPCODE.MODIFIERS operands ;
_SASS_OPCODE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P(?:T|\d+)\s+)?([A-Z][A-Z0-9_]*(?:\.\w+)*)", re.M)
_PTX_ORDERED = re.compile(
    r"^\s*(?:@!?%p\d+\s+)?("
    r"(?:atom|red)(?:\.[\w:]+)*\.(?:acquire|release|acq_rel)(?:\.[\w:]+)*"
    r"|fence(?:\.sc|\.acq_rel)?\.(?:gpu|sys)|membar\.(?:gl|sys))\b",
    re.M,
)
_TTIR_DOT = re.compile(r"\btt\.dot\b[^:\n]*:\s*tensor<(?:\d+x)+(\w+)>")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(_NVIDIA_BIN / "cuobjdump"), flag, str(path)],
                              check=True, capture_output=True, text=True).stdout


def _resource_usage(cubin: bytes) -> dict[str, int]:
    function = _cuobjdump(cubin, "-res-usage").split("Function", 1)[1]
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED):(\d+)", function)}


def sass_counts(sass: str) -> dict:
    """The opcode counts of a report's `sass` (see the module docstring) from cuobjdump -sass text."""
    opcodes = Counter(_SASS_OPCODE.findall(sass))

    def total(prefix: str) -> int:
        return sum(n for op, n in opcodes.items() if op == prefix or op.startswith(prefix + "."))

    hgmma = Counter()
    membar = {}
    for op, n in opcodes.items():
        if op.startswith("HGMMA."):
            hgmma[op.split(".")[1]] += n
        elif op.startswith("MEMBAR"):
            membar[op] = n
    return {
        "HGMMA": dict(sorted(hgmma.items())),
        "HMMA": total("HMMA"),
        "UTCHMMA": total("UTCHMMA"),
        "LDGSTS": total("LDGSTS"),
        "UTMALDG": total("UTMALDG"),
        "ATOMG": total("ATOMG") + total("ATOM"),
        "REDG": total("REDG") + total("RED"),
        "MEMBAR": dict(sorted(membar.items())),
        "MUFU.EX2": opcodes["MUFU.EX2"],
    }


def ptx_acquire_release(ptx: str) -> dict[str, int]:
    """Acquire/release atomics and GPU/system-scope fences in PTX, by full opcode."""
    return dict(sorted(Counter(_PTX_ORDERED.findall(ptx)).items()))


def tl_dots(ttir: str) -> dict[str, int]:
    """tl.dot operations in Triton IR by the element type of their first operand."""
    return dict(sorted(Counter(_TTIR_DOT.findall(ttir)).items()))


def _compile(spec: CompileSpec, arch: int):
    """(compiled kernel, ptxas log). The compile always runs (no cache hit) so that ptxas runs and
    its -v log, which Triton prints when dump_ptxas_log is set, describes this very cubin."""
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(
            ASTSource(spec.fn, spec.signature, constexprs=spec.constexprs, attrs=spec.attrs),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
    return compiled, log.getvalue()


def compile_report(spec: CompileSpec, arch: int) -> dict:
    """Compiles one configuration for sm_<arch> and returns its report entry (module docstring)."""
    if arch not in DEVICE_LIMITS:
        raise ValueError(f"arch must be one of {sorted(DEVICE_LIMITS)} (got {arch!r})")
    if not isinstance(spec.attrs, dict):
        # Without the launch specialization Triton compiles another kernel (scalar loads, no cp.async).
        raise ValueError(f"spec.attrs of {spec.kernel} ({spec.label}) must be the launch specialization as a dict "
                         f"(divisibility_attrs; {{}} when nothing is specialized), got {spec.attrs!r}")
    compiled, ptxas_log = _compile(spec, arch)
    spills = [int(stores) + int(loads) for stores, loads in _PTXAS_SPILLS.findall(ptxas_log)]
    if not spills:
        raise RuntimeError(f"no spill counts in the ptxas log of {spec.kernel} ({spec.label}): {ptxas_log[:500]!r}")
    usage = _resource_usage(compiled.asm["cubin"])
    shared = usage["SHARED"] + compiled.metadata.shared
    return {
        "module": spec.fn.__module__,
        "kernel": spec.kernel,
        "label": spec.label,
        "signature": dict(spec.signature),
        "constexprs": dict(spec.constexprs),
        "attrs": [[list(index), [list(attr) for attr in values]] for index, values in sorted(spec.attrs.items())],
        "arch": arch,
        "num_warps": spec.num_warps,
        "num_stages": spec.num_stages,
        "registers": usage["REG"],
        "spill_bytes": sum(spills),
        "stack_bytes": usage["STACK"],
        "shared_bytes": shared,
        # Triton launches metadata.num_warps warps (more than asked when it specializes warps).
        "ctas_per_sm": ctas_per_sm(usage["REG"], shared, compiled.metadata.num_warps, DEVICE_LIMITS[arch],
                                   compiled.metadata.tmem_size),
        "sass": sass_counts(_cuobjdump(compiled.asm["cubin"], "-sass")),
        "tl_dots": tl_dots(compiled.asm["ttir"]),
        "ptx_acquire_release": ptx_acquire_release(compiled.asm["ptx"]),
    }


def spec_from_entry(entry: dict) -> CompileSpec:
    """The CompileSpec a report entry was compiled from, rebuilt from its JSON fields alone."""
    fn = getattr(importlib.import_module(entry["module"]), entry["kernel"])
    attrs = {tuple(index): [list(attr) for attr in values] for index, values in entry["attrs"]}
    return CompileSpec(fn, dict(entry["signature"]), dict(entry["constexprs"]), attrs,
                       entry["num_warps"], entry["num_stages"], entry.get("label", entry["kernel"]))


# ---------------------------------------------------------------------------------------------- checks

_SIXTEEN_BIT = ("bf16", "f16")  # Triton IR (MLIR) element types


def problems(entry: dict) -> list[str]:
    """What a shipped kernel must not do, as sentences naming the numbers (empty: nothing wrong)."""
    if "error" in entry:
        return [f"does not compile: {entry['error']}"]
    arch, sass = entry["arch"], entry["sass"]
    found = []
    if entry["spill_bytes"] or entry["stack_bytes"]:
        found.append(f"spills: {entry['spill_bytes']} B spill stores+loads, {entry['stack_bytes']} B stack")
    if entry["shared_bytes"] > SHARED_MEMORY_LIMIT[arch]:
        found.append(f"{entry['shared_bytes']} B of shared memory, over the sm_{arch} limit of {SHARED_MEMORY_LIMIT[arch]} B")
    fences = {op: n for op, n in sass["MEMBAR"].items() if op.endswith((".GPU", ".SYS"))}
    if fences:
        found.append(f"GPU/system-scope fences {fences}")
    if entry["ptx_acquire_release"]:
        found.append(f"acquire/release atomics or fences in the PTX {entry['ptx_acquire_release']}")
    return found + tensor_core_problems(entry)


def tensor_core_problems(entry: dict) -> list[str]:
    """The part of `problems` about 16-bit matmuls off the architecture's fast tensor-core path."""
    if "error" in entry or not any(ty in _SIXTEEN_BIT for ty in entry["tl_dots"]):
        return []
    return _tensor_core_problems(entry["arch"], entry["sass"])


def _tensor_core_problems(arch: int, sass: dict) -> list[str]:
    """16-bit matmuls must run on the architecture's fast tensor-core path: wgmma on sm_90, tcgen05
    (or at least mma.sync) on sm_100, mma.sync elsewhere."""
    if arch == 90:
        narrow = {shape: n for shape, n in sass["HGMMA"].items() if int(shape.split("x")[1]) < 64}
        return ([f"16-bit matmuls without HGMMA (HMMA {sass['HMMA']})"] if not sass["HGMMA"] else []) + \
               ([f"HMMA (mma.sync) in an sm_90 16-bit kernel: {sass['HMMA']}"] if sass["HMMA"] else []) + \
               ([f"HGMMA narrower than N=64: {narrow}"] if narrow else [])
    if arch == 100 and not (sass["UTCHMMA"] or sass["HMMA"]):
        return ["16-bit matmuls without tensor-core instructions (no UTCHMMA, no HMMA)"]
    if arch not in (90, 100) and not sass["HMMA"]:
        return ["16-bit matmuls without HMMA (mma.sync)"]
    return []


# ---------------------------------------------------------------------------------------------- many

@functools.cache
def _shipped(module: str, arch: int) -> list[CompileSpec]:
    return list(importlib.import_module(module).shipped_configurations(arch))


def _count(module: str, arch: int) -> int:
    return len(_shipped(module, arch))


def _failure(spec_or_entry, arch: int, error: Exception) -> dict:
    return {"module": spec_or_entry["module"], "kernel": spec_or_entry["kernel"], "label": spec_or_entry["label"],
            "arch": arch, "error": f"{type(error).__name__}: {error}"}


def _report_one(module: str, arch: int, index: int) -> dict:
    spec = _shipped(module, arch)[index]
    try:
        if getattr(importlib.import_module(module), spec.kernel, None) is not spec.fn:
            raise LookupError(f"{module}.{spec.kernel} is not the shipped kernel: the report could not be recompiled by name")
        return compile_report(spec, arch)
    except Exception as error:  # one configuration failing must not hide the others' reports
        return _failure({"module": module, "kernel": spec.kernel, "label": spec.label}, arch, error)


def _recompile_one(entry: dict) -> dict:
    try:
        return compile_report(spec_from_entry(entry), entry["arch"])
    except Exception as error:  # as in _report_one
        return _failure(entry, entry["arch"], error)


@contextlib.contextmanager
def _workers(jobs: int):
    """A pool of `jobs` fresh interpreters without TRITON_INTERPRET, so compiling works from the
    interpreted tests too: the variable is read when triton and kernel modules are imported, which
    a spawned worker does before running anything of ours, so it must be absent from the environment
    the workers are started with (they start on demand, hence for the pool's whole life)."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def report(modules=KERNEL_MODULES, archs=ARCHS, jobs: int = 2) -> list[dict]:
    """Compiles every shipped configuration of `modules` for each arch in `jobs` worker processes.
    Entries come in (module, arch, shipped order) order; a failed compile gives an entry with an
    `error` instead of the measurements."""
    for arch in archs:
        if arch not in DEVICE_LIMITS:
            raise ValueError(f"archs must be among {sorted(DEVICE_LIMITS)} (got {arch!r})")
    groups = [(module, arch) for module in modules for arch in archs]
    with _workers(jobs) as pool:
        counts = list(pool.map(_count, *zip(*groups)))
        futures = [pool.submit(_report_one, module, arch, index)
                   for (module, arch), count in zip(groups, counts) for index in range(count)]
        return [future.result() for future in futures]


def recompile(entries: list[dict], jobs: int = 2) -> list[dict]:
    """Report entries compiled again from their JSON fields alone (spec_from_entry), as a reader of
    the report would check it, in `jobs` worker processes."""
    with _workers(jobs) as pool:
        return list(pool.map(_recompile_one, entries))


def labels(modules=KERNEL_MODULES, archs=ARCHS) -> list[tuple[str, int, str]]:
    """(module, arch, label) of every shipped configuration, in report order, from one fresh
    interpreter without TRITON_INTERPRET (kernel modules cannot build specs under the interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "fastscale.kernels.aot", "--labels", *(f"--arch={arch}" for arch in archs), "--", *modules]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return [tuple(item) for item in json.loads(out)]


# ---------------------------------------------------------------------------------------------- CLI

def _row(entry: dict) -> str:
    head = f"sm_{entry['arch']} {entry['module'].rsplit('.', 1)[-1]} {entry['label']}"
    if "error" in entry:
        return f"{head}: ERROR {entry['error']}"
    sass = {k: v for k, v in entry["sass"].items() if v}
    trouble = problems(entry)
    return (f"{head}: {entry['registers']} regs, {entry['spill_bytes']} B spilled, {entry['shared_bytes']} B shared, "
            f"{entry['ctas_per_sm']} CTA/SM, {sass}" + (f"  PROBLEMS: {'; '.join(trouble)}" if trouble else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastscale.kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=list(KERNEL_MODULES), metavar="MODULE",
                        help=f"kernel modules with shipped_configurations(arch) (default: {' '.join(KERNEL_MODULES)})")
    # One value per --arch (repeat it for several), so `--arch 90 MODULE` reads MODULE as a module.
    parser.add_argument("--arch", type=int, action="append", choices=sorted(DEVICE_LIMITS),
                        help=f"a compute capability to compile for; repeat for several (default: {' '.join(map(str, ARCHS))}; "
                             "86, 89 and 120 are the smaller GPUs kernel modules serve with their sm_80 tables)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as a JSON list (one object per configuration)")
    output.add_argument("--labels", action="store_true", help="print [module, arch, label] of each configuration; compile nothing")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args(argv)
    args.arch = args.arch or list(ARCHS)
    from fastscale.backends import interpreting

    if args.labels and interpreting():
        parser.error("--labels needs TRITON_INTERPRET unset: kernel modules cannot build specs from interpreted kernels")
    if args.labels:
        json.dump([[m, a, s.label] for m in args.modules for a in args.arch for s in _shipped(m, a)], sys.stdout)
        return 0
    entries = report(args.modules, args.arch, args.jobs)
    if args.json:
        json.dump(entries, sys.stdout, indent=1)
        print()
    else:
        print("\n".join(map(_row, entries)))
    return 1 if any("error" in entry for entry in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
