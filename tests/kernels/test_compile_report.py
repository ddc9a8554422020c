"""The kernels that really run, compiled for sm_80, sm_90 and sm_100 with their launch specialization
and read from the compiled code (fastscale.kernels.aot): no spills, shared memory within the device,
no GPU- or system-scope fences or acquire/release atomics, 16-bit matmuls on the architecture's
tensor-core path (HGMMA with N >= 64 on sm_90, tcgen05 or mma.sync on sm_100, HMMA on sm_80). One
test per shipped configuration. Every launch the launchers make (recorded on CPU, launches.py) must
be one the report compiles, and the sm_80 tables must fit the smaller GPUs they also serve.

Kernel modules cannot build specs under TRITON_INTERPRET, so the configurations are listed at
collection by one fresh interpreter (aot.labels) and compiled once per session in two worker
processes (aot.report, conftest.shipped_reports). The checks themselves are shown to fail on sample kernels with known faults
(sample_kernels.py), through the command line, and on hand-made entries.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastscale.kernels import aot

HERE = Path(__file__).parent
REPORT_KEYS = {"module", "kernel", "label", "signature", "constexprs", "attrs", "arch", "num_warps", "num_stages",
               "registers", "spill_bytes", "stack_bytes", "shared_bytes", "ctas_per_sm", "sass", "tl_dots",
               "ptx_acquire_release"}
SASS_KEYS = {"HGMMA", "HMMA", "UTCHMMA", "LDGSTS", "UTMALDG", "ATOMG", "REDG", "MEMBAR", "MUFU.EX2"}
INPUT_KEYS = ("module", "kernel", "signature", "constexprs", "attrs", "arch", "num_warps", "num_stages")


def _fresh_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


def _configurations():
    try:
        listed = aot.labels()
    except subprocess.CalledProcessError as error:  # reported by the test, not as a collection error
        return [pytest.param(("", 0, error.stderr[-3000:]), id="listing-shipped-configurations-failed")]
    return [pytest.param(c, id=f"sm{c[1]}-{c[0].rsplit('.', 1)[-1]}-{c[2]}") for c in listed]


CONFIGURATIONS = _configurations()


@pytest.fixture(scope="module")
def reports(shipped_reports):
    return {(e["module"], e["arch"], e["label"]): e for e in shipped_reports}


@pytest.mark.slow
@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_shipped_kernel(reports, configuration):
    module, arch, label = configuration
    if not module:
        pytest.fail(f"shipped_configurations failed:\n{label}")
    entry = reports[module, arch, label]
    assert "error" in entry or set(entry) == REPORT_KEYS, sorted(entry)
    found = aot.problems(entry)
    waived = _known_narrow_mma(entry)
    if waived:
        narrow = aot.tensor_core_problems(entry)
        assert narrow, f"sm_{arch} {label} is listed in SM90_NARROW_MMA ({waived}) but compiles to wide HGMMA: remove it"
        found = [p for p in found if p not in narrow]
    assert not found, f"sm_{arch} {label}: " + "; ".join(found)


def _known_narrow_mma(entry: dict) -> str | None:
    """The reason a kernel module gives for an sm_90 tile whose matmuls are not all HGMMA with N >= 64."""
    if "error" in entry or entry["arch"] != 90:
        return None
    listed = getattr(importlib.import_module(entry["module"]), "SM90_NARROW_MMA", {})
    return listed.get((entry["kernel"], entry["constexprs"].get("BLOCK_D")))


def test_labels_name_one_configuration_each():
    listed = [c.values[0] for c in CONFIGURATIONS]
    assert len(set(listed)) == len(listed), "duplicate labels: " + str(sorted(c for c in listed if listed.count(c) > 1))
    assert {c[1] for c in listed} == set(aot.ARCHS)
    assert {c[0] for c in listed} == set(aot.KERNEL_MODULES)


@pytest.mark.slow
def test_report_recompiles_from_its_json_alone(reports):
    """A reader recompiles entries from kernel/signature/constexprs/attrs (+ warps, stages, arch) and
    gets the same registers, resources and SASS: one entry per module and one per arch."""
    entries = [e for e in reports.values() if "error" not in e]
    chosen = {e["module"]: e for e in entries if e["arch"] == 90 and e["tl_dots"]}
    chosen |= {e["arch"]: e for e in entries if e["arch"] != 90 and e["tl_dots"]}
    inputs = [{key: json.loads(json.dumps(entry))[key] for key in INPUT_KEYS} for entry in chosen.values()]
    assert len(inputs) == 4
    for entry, again in zip(chosen.values(), aot.recompile(inputs)):
        assert "error" not in again, again
        measured = set(REPORT_KEYS) - set(INPUT_KEYS) - {"label"}
        assert {k: again[k] for k in measured} == {k: entry[k] for k in measured}, entry["label"]


def _unshipped(launched: set, shipped) -> str:
    """'' when every launched identity is shipped, else how many are not, by kernel, with examples."""
    missing = sorted(launched - set(shipped))
    by_kernel = {kernel: sum(m[0] == kernel for m in missing) for kernel in sorted({m[0] for m in missing})}
    return f"{len(missing)} launched configurations not compiled in the report {by_kernel}, e.g. {missing[:2]}" if missing else ""


def _launch_identity(item: dict) -> tuple:
    # The tile configuration: every non-boolean constexpr (tile sizes, head dim, precision) with warps
    # and stages. Boolean variants (causal, bias, ...) may be deduplicated by the module when they
    # compile to the same resources (it says so beside shipped_configurations).
    # Attention's HEAD_DIM (1..256) only bounds the masked columns of its BLOCK_D-wide tiles; the
    # module compiles each tile at a full and a padded head dim in six variants (see its TILES notes),
    # so the report ships one head dim per BLOCK_D rather than 256 compiles per kernel.
    tiles = sorted((k, v) for k, v in item["constexprs"].items() if not isinstance(v, bool) and k != "HEAD_DIM")
    return item["kernel"], tuple(tiles), item["num_warps"], item["num_stages"]


@pytest.fixture(scope="module")
def launches():
    command = [sys.executable, str(HERE / "launches.py"), *aot.KERNEL_MODULES]
    result = subprocess.run(command, env=_fresh_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("module", aot.KERNEL_MODULES)
@pytest.mark.parametrize("arch", aot.ARCHS)
def test_every_launch_is_shipped(launches, module, arch):
    """Every compile the launchers ask for on sm_<arch>, over every input class they serve, is one
    the report covers: same kernel, same tile constexprs, warps and stages."""
    recorded = launches[module][str(arch)]
    assert recorded["launched"], "the launchers launched nothing"
    shipped = {_launch_identity(item) for item in recorded["shipped"]}
    missing = _unshipped({_launch_identity(item) for item in recorded["launched"]}, shipped)
    assert not missing, missing


# sm_86/89 and sm_120 have mma.sync only, like sm_80, and 99 KB of shared memory per block: the kernel
# modules serve them with their sm_80 tables, whose sm_80 compile stands for theirs (same instructions
# up to scheduling, same shared memory).
STAND_IN = {86: 80, 89: 80, 120: 80}


@pytest.mark.slow
@pytest.mark.parametrize("module", aot.KERNEL_MODULES)
@pytest.mark.parametrize("capability", STAND_IN)
def test_smaller_gpus_launch_shipped_kernels_that_fit_them(reports, launches, module, capability):
    arch, limits = STAND_IN[capability], aot.DEVICE_LIMITS[capability]
    compiled = {}
    for entry in reports.values():
        if entry["module"] == module and entry["arch"] == arch and "error" not in entry:
            compiled.setdefault(_launch_identity(entry), []).append(entry)
    launched = {_launch_identity(item) for item in launches[module][str(capability)]["launched"]}
    assert launched, "the launchers launched nothing"
    too_big = {e["label"]: (e["registers"], e["shared_bytes"]) for identity in launched for e in compiled.get(identity, ())
               if aot.ctas_per_sm(e["registers"], e["shared_bytes"], e["num_warps"], limits) == 0}
    failures = [_unshipped(launched, compiled), f"cannot launch on {limits.gpu} (registers, shared bytes): {too_big}" if too_big else ""]
    assert not any(failures), "; ".join(filter(None, failures))


# ---------------------------------------------------------------------------------------------- the checks can fail


@pytest.fixture(scope="module")
def samples():
    """The sample kernels' report for sm_90, through the command line in the issue's form
    (`--json --arch 90 MODULE`: --arch takes one value, so MODULE is not read as an arch)."""
    command = [sys.executable, "-m", "fastscale.kernels.aot", "--json", "--arch", "90", "sample_kernels"]
    result = subprocess.run(command, env=_fresh_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return {entry["label"]: entry for entry in json.loads(result.stdout)}


@pytest.mark.slow
def test_command_line_prints_the_documented_keys(samples):
    assert len(samples) == 5
    for entry in samples.values():
        assert set(entry) == REPORT_KEYS and set(entry["sass"]) == SASS_KEYS
        assert entry["module"] == "sample_kernels" and entry["arch"] == 90


@pytest.mark.slow
def test_acq_rel_atomics_fail_and_relaxed_pass(samples):
    fenced, relaxed = samples["atomic acq_rel"], samples["atomic relaxed"]
    assert fenced["sass"]["MEMBAR"].get("MEMBAR.ALL.GPU", 0) > 0 and fenced["sass"]["ATOMG"] > 0
    assert any(".acq_rel." in op for op in fenced["ptx_acquire_release"])
    assert any("fences" in p for p in aot.problems(fenced)) and any("acquire/release" in p for p in aot.problems(fenced))
    assert relaxed["sass"]["REDG"] > 0 and relaxed["sass"]["MEMBAR"] == {} and relaxed["ptx_acquire_release"] == {}
    assert aot.problems(relaxed) == []


@pytest.mark.slow
def test_wide_hgmma_passes_and_narrow_fails(samples):
    wide, narrow = samples["matmul wide"], samples["matmul narrow"]
    assert wide["tl_dots"] == {"bf16": 1} and wide["sass"]["HGMMA"] == {"64x128x16": 4} and wide["sass"]["HMMA"] == 0
    assert wide["sass"]["LDGSTS"] > 0  # the divisibility attrs give cp.async, as at launch
    assert aot.problems(wide) == []
    assert set(narrow["sass"]["HGMMA"]) == {"64x32x16"}
    assert aot.problems(narrow) == ["HGMMA narrower than N=64: " + str(narrow["sass"]["HGMMA"])]


@pytest.mark.slow
def test_spills_and_shared_memory_over_the_limit_fail(samples):
    huge = samples["matmul huge"]
    # 128x256 fp32 accumulator over 128 threads is 256 registers a thread before anything else, and
    # 3 stages of 128x128 + 128x256 bf16 operand tiles are 288 KiB of shared memory.
    assert huge["spill_bytes"] > 0 and huge["shared_bytes"] >= 3 * (128 * 128 + 128 * 256) * 2
    assert huge["ctas_per_sm"] == 0
    spills, shared = aot.problems(huge)
    assert spills.startswith("spills: ") and shared.endswith("over the sm_90 limit of 232448 B")


def _entry(arch: int, sass: dict, dots: dict) -> dict:
    base = dict(HGMMA={}, HMMA=0, UTCHMMA=0, LDGSTS=0, UTMALDG=0, ATOMG=0, REDG=0, MEMBAR={}, **{"MUFU.EX2": 0})
    return dict(arch=arch, spill_bytes=0, stack_bytes=0, shared_bytes=1024, sass=base | sass, tl_dots=dots,
                ptx_acquire_release={})


@pytest.mark.parametrize("arch, sass, dots, expected", [
    (80, {}, {"bf16": 1}, ["16-bit matmuls without HMMA (mma.sync)"]),
    (80, {"HMMA": 8}, {"f16": 2}, []),
    (80, {}, {"f32": 1}, []),  # fp32 matmuls run on FMA units by design
    (80, {}, {}, []),  # an elementwise kernel
    (90, {"HMMA": 8}, {"bf16": 1}, ["16-bit matmuls without HGMMA (HMMA 8)", "HMMA (mma.sync) in an sm_90 16-bit kernel: 8"]),
    (90, {"HGMMA": {"64x64x16": 4}, "HMMA": 2}, {"bf16": 1}, ["HMMA (mma.sync) in an sm_90 16-bit kernel: 2"]),
    (90, {"HGMMA": {"64x256x16": 4, "64x64x16": 2}}, {"bf16": 2}, []),
    (90, {"MEMBAR": {"MEMBAR.SC.SYS": 1, "MEMBAR.ALL.CTA": 3}}, {}, ["GPU/system-scope fences {'MEMBAR.SC.SYS': 1}"]),
    (100, {}, {"bf16": 1}, ["16-bit matmuls without tensor-core instructions (no UTCHMMA, no HMMA)"]),
    (100, {"UTCHMMA": 4}, {"bf16": 1}, []),
])
def test_tensor_core_and_fence_rules(arch, sass, dots, expected):
    assert aot.problems(_entry(arch, sass, dots)) == expected


def test_shared_memory_limit_is_the_opt_in_maximum():
    assert aot.problems(_entry(90, {}, {}) | {"shared_bytes": 227 * 1024}) == []
    assert aot.problems(_entry(90, {}, {}) | {"shared_bytes": 227 * 1024 + 1})
    assert aot.problems(_entry(80, {}, {}) | {"shared_bytes": 163 * 1024 + 1})


# ---------------------------------------------------------------------------------------------- reading


SASS = """
        /*0100*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT, gsb0 ;   /* 0x00e0000004187df0 */
        /*0110*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ;         /* 0x00e0000008187df0 */
        /*0120*/              @!P0 HGMMA.64x32x16.F32.BF16 R88, gdesc[UR8], R88 ;                /* 0x00e00000085879f0 */
        /*0130*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;                         /* 0x0000000c0804723c */
        /*0140*/               @P1 LDGSTS.E.BYPASS.128 [R3], desc[UR6][R4.64] ;                  /* 0x0000000004037fae */
        /*0150*/                   MEMBAR.ALL.GPU ;                                              /* 0x0000000000007992 */
        /*0160*/              @!PT MEMBAR.ALL.CTA ;                                              /* 0x0000000000007992 */
        /*0170*/                   ATOMG.E.ADD.F32x4.FTZ.RN.STRONG.GPU PT, RZ, [R2.64], R8 ;     /* 0x000000080200798e */
        /*0180*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU [R2.64], R8 ;                 /* 0x000000080200798e */
        /*0190*/                   REDUX.SUM UR4, R5 ;                                           /* 0x00000000050473c4 */
        /*01a0*/                   MUFU.EX2 R5, R5 ;                                             /* 0x0000000500057308 */
        /*01b0*/              @UP0 UTMALDG.2D [UR8], [UR4] ;                                     /* 0x0000000804007db4 */
        /*01c0*/                   UTCHMMA gdesc[UR4], gdesc[UR6], tmem[UR8], tmem[UR10], idesc[UR11], UPT ; /* 0x0 */
        /*01d0*/                   MUFU.RCP R6, R6 ;                                             /* 0x0000000600067308 */
"""


def test_sass_counts_read_predicated_instructions_and_full_opcodes():
    assert aot.sass_counts(SASS) == {
        "HGMMA": {"64x128x16": 2, "64x32x16": 1}, "HMMA": 1, "UTCHMMA": 1, "LDGSTS": 1, "UTMALDG": 1,
        "ATOMG": 1, "REDG": 1, "MEMBAR": {"MEMBAR.ALL.CTA": 1, "MEMBAR.ALL.GPU": 1}, "MUFU.EX2": 1,
    }


def test_ptx_acquire_release_finds_ordered_atomics_and_gpu_fences_only():
    ptx = """
	@%p1 atom.global.gpu.acq_rel.add.v4.f32 	{%r1, %r2, %r3, %r4}, [%rd1], {%r5, %r6, %r7, %r8};
	atom.global.gpu.relaxed.add.f32 	%r9, [%rd2], %r10;
	red.global.gpu.release.add.f32 	[%rd2], %r10;
	red.global.add.f32 	[%rd2], %r10;
	fence.acq_rel.gpu;
	fence.proxy.async.shared::cta;
	fence.mbarrier_init.release.cluster;
	membar.gl;
	membar.cta;
	mbarrier.try_wait.parity.shared::cta.b64 	%p2, [%r11], %r12;
"""
    assert aot.ptx_acquire_release(ptx) == {
        "atom.global.gpu.acq_rel.add.v4.f32": 1, "fence.acq_rel.gpu": 1, "membar.gl": 1,
        "red.global.gpu.release.add.f32": 1,
    }


@pytest.mark.parametrize("registers, shared, warps, arch, expected", [
    # 255 regs -> 8192 a warp (256-register units) -> 2 warps per 16384-register sub-partition -> 8 warps.
    (255, 0, 8, 90, 1),
    (255, 0, 4, 90, 2),
    # 128 regs x 4 warps: 16 warps by registers -> 4 blocks.
    (128, 0, 4, 80, 4),
    # 32 regs x 4 warps: 64 warps by registers and by the warp limit -> 16 blocks.
    (32, 0, 4, 80, 16),
    # 16 regs x 1 warp: 64 blocks by warps, capped at 32 blocks per SM.
    (16, 0, 1, 90, 32),
    # 100 KiB + the 1 KiB reservation: 2 blocks in H100's 228 KiB, 1 in A100's 164 KiB.
    (64, 100 * 1024, 4, 90, 2),
    (64, 100 * 1024, 4, 80, 1),
    # 113 KiB + 1 KiB reserved = 114 KiB: exactly 2 in 228 KiB.
    (64, 113 * 1024, 4, 90, 2),
    (64, 113 * 1024 + 1, 4, 90, 1),
    # over the opt-in limit: cannot launch.
    (64, 227 * 1024 + 128, 4, 90, 0),
])
def test_occupancy_as_cuda_occupancy_computes_it(registers, shared, warps, arch, expected):
    assert aot.ctas_per_sm(registers, shared, warps, aot.DEVICE_LIMITS[arch]) == expected


def test_tensor_memory_bounds_sm100_occupancy():
    # 32 regs x 4 warps allow 16 blocks; 256 of the 512 tensor-memory columns allow 2.
    assert aot.ctas_per_sm(32, 0, 4, aot.DEVICE_LIMITS[100], tensor_memory_columns=256) == 2
    assert aot.ctas_per_sm(32, 0, 4, aot.DEVICE_LIMITS[100], tensor_memory_columns=512) == 1
    assert aot.ctas_per_sm(32, 0, 4, aot.DEVICE_LIMITS[100]) == 16


def test_a_spec_without_the_launch_specialization_is_refused():
    import sample_kernels

    signature = {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr", "SEM": "constexpr"}
    spec = aot.CompileSpec(sample_kernels.atomic_kernel, signature, {"BLOCK": 1024, "SEM": "relaxed"}, None, 4, 1, "unspecialized")
    with pytest.raises(ValueError, match=r"spec.attrs of atomic_kernel \(unspecialized\) must be the launch specialization.*got None"):
        aot.compile_report(spec, 90)


def test_bad_arch_is_refused_by_name():
    with pytest.raises(ValueError, match=r"archs must be among \[80, 86, 89, 90, 100, 120\] \(got 75\)"):
        aot.report(archs=(75,))
