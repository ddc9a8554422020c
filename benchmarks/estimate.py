"""Estimated H100/A100 speed of the shipped kernels, from their compiled code: `python -m
fastscale.benchmarks.estimate [--write] [--before REV]`.

Compiles the configurations the estimates need (bf16; the plain variants) for sm_90 and sm_80 in
fresh processes without TRITON_INTERPRET (kernels/aot.py), reads their instruction mix and occupancy,
and runs the roofline model of kernels/roofline.py on the kernels' own tile tables:
  * cross-entropy forward+backward at tokens 32k, V 128k, d 4096 (6*N*V*d FLOPs) and the loss-only
    forward (2*N*V*d);
  * causal attention at B 2, H 16, T 8k, d 128 (flash-attn's 16k-token setup with model width
    2048), forward and forward+backward, flash-attn's FLOP convention;
  * the calibration: Liger-Kernel's fused linear cross-entropy (its Triton cross-entropy kernel
    compiled the same way, its GEMMs as ideal cuBLAS) at the shapes of its published A100 numbers,
    and FlashAttention-2's forward (its tile configuration as flash-attn's source states it) against
    its published H100 number.
Every number printed is an ESTIMATE: no GPU ran. --before REV also estimates the kernel modules as
they were at git revision REV (needs the git checkout). --write stores the table, the calibration and
the assumptions in benchmarks/results/estimates.md and estimates.json.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fastscale.io import json_text, write_atomically
from fastscale.kernels import roofline
from fastscale.tables import format_table

RESULTS = Path(__file__).resolve().parent / "results"
ATTENTION_SHAPE = dict(batch=2, heads=16, seqlen=8192, head_dim=128)
LIGER_SHAPES = ((32768, 128256, 4096, 0), (8192, 128256, 4096, 1), (8192, 256000, 2304, 3))  # index into ANCHORS
FA2_FORWARD = 5  # roofline.ANCHORS index of FlashAttention-2's causal forward on H100
ARCHS = (90, 80)
MODULES = {"cross-entropy": "fastscale.kernels.cross_entropy", "attention": "fastscale.kernels.attention"}
# The band design's kernels (keys of kernels/cross_entropy.py's CONFIGS); d_hidden and d_weight are
# its _matmul_kernel on dz and on dz^T, d_weight modelled in the variant that accumulates (every
# band but the first).
BAND_KERNELS = ("logits", "logit_grad", "d_hidden", "d_weight")
D_WEIGHT_VARIANT = dict(A_K_CONTIGUOUS=False, ACCUMULATE=True)
LIGER = "liger"


# ---------------------------------------------------------------------------------------------- compiling


def _wanted(signature: dict, cx: dict, every_head_dim: bool) -> bool:
    """The configurations the estimates use: bf16, no bias/softcap/window/packing, causal, d 128
    (every head dim for ops/_auto.py's constants)."""
    return ("*bf16" in signature.values()
            and not any(cx.get(k) for k in ("HAS_BIAS", "HAS_SOFTCAP", "WINDOWED", "VARLEN"))
            and (every_head_dim or cx.get("HEAD_DIM", ATTENTION_SHAPE["head_dim"]) == ATTENTION_SHAPE["head_dim"])
            and cx.get("CAUSAL", True))


def liger_spec():
    """Liger's cross-entropy kernel as its fused linear cross-entropy launches it for bf16 logits of a
    large vocabulary (BLOCK_SIZE 32768, 32 warps, default stages), aligned like a real launch."""
    from liger_kernel.ops.cross_entropy import liger_cross_entropy_kernel as fn

    from fastscale.kernels import aot

    pointers = {"X_ptr": "*bf16", "Y_ptr": "*i64", "weight_ptr": "*fp32", "loss_ptr": "*fp32", "z_loss_ptr": "*bf16",
                "token_accuracy_ptr": "*fp32", "predicted_tokens_ptr": "*i64"}
    constexprs = dict(lse_square_scale=0.0, label_smoothing=0.0, reduction="mean", softcap=None, RETURN_Z_LOSS=False,
                      RETURN_TOKEN_ACCURACY=False, RETURN_PREDICTED_TOKENS=False, BLOCK_SIZE=32768, HAS_WEIGHT=False,
                      HAS_SOFTCAPPING=False, HAS_GRADIENTS=True)
    signature = {p.name: "constexpr" if p.name in constexprs else pointers.get(p.name, "fp32" if p.name == "weight_sum" else "i32")
                 for p in fn.params}
    attrs = aot.divisibility_attrs(fn, signature, {"X_stride", "n_cols"})
    return aot.CompileSpec(fn, signature, constexprs, attrs, 32, 3, "liger cross-entropy bf16 BLOCK_SIZE 32768")


def _specs(module: str, arch: int, every_head_dim: bool) -> list:
    if module == LIGER:
        return [liger_spec()]
    return [s for s in importlib.import_module(module).shipped_configurations(arch) if _wanted(s.signature, s.constexprs, every_head_dim)]


def _compile_group(module: str, arch: int, path: str | None, every_head_dim: bool) -> list[dict]:
    if path:
        sys.path.insert(0, path)
    from fastscale.kernels import aot

    return [dict(aot.compile_report(spec, arch), module=module) for spec in _specs(module, arch, every_head_dim)]


def _start_worker() -> None:
    # TRITON_INTERPRET makes @triton.jit functions uncompilable; it is read at kernel-module import.
    os.environ.pop("TRITON_INTERPRET", None)


def compile_reports(modules: list[str], archs=ARCHS, path: str | None = None, jobs: int = 2, every_head_dim: bool = False) -> list[dict]:
    """aot report entries of the configurations the estimates use, compiled in `jobs` fresh
    processes; `path` is put first on their sys.path (for modules written out from git)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_start_worker) as pool:
        groups = [pool.submit(_compile_group, m, a, path, every_head_dim) for m in modules for a in archs]
        return [entry for group in groups for entry in group.result()]


def estimated_entries(entries: list[dict], every_head_dim: bool = False) -> list[dict]:
    """The entries of a full aot report (fastscale.kernels.aot.report) that compile_reports would compile
    for MODULES: the same configurations, without compiling them again."""
    return [e for e in entries if e["module"] in MODULES.values() and e["arch"] in ARCHS and _wanted(e["signature"], e["constexprs"], every_head_dim)]


def modules_at(revision: str, directory: str) -> dict[str, str]:
    """Writes the kernel modules as they were at a git revision into `directory` (as importable
    before_<name> modules) and returns {benchmark: module name}."""
    repo = Path(__file__).resolve().parent.parent
    names = {}
    for name, module in MODULES.items():
        stem = module.rsplit(".", 1)[1]
        shown = subprocess.run(["git", "-C", str(repo), "show", f"{revision}:kernels/{stem}.py"], capture_output=True, text=True)
        if shown.returncode:
            raise SystemExit(f"--before {revision}: git cannot show kernels/{stem}.py at that revision in {repo} "
                             f"(a git checkout of fastscale is needed): {shown.stderr.strip()}")
        source = shown.stdout
        Path(directory, f"before_{stem}.py").write_text(source)
        names[name] = f"before_{stem}"
    return names


# ---------------------------------------------------------------------------------------------- estimates


def compiled(entries: list[dict], module: str, kernel: str, arch: int, **constexprs) -> roofline.Compiled:
    for entry in entries:
        if (entry["module"] == module and entry["kernel"] == kernel and entry["arch"] == arch
                and all(entry["constexprs"].get(k) == v for k, v in constexprs.items())):
            if "error" in entry:
                raise RuntimeError(f"{module}.{kernel} sm_{arch} did not compile: {entry['error']}")
            return roofline.Compiled.from_report(entry)
    raise LookupError(f"no compiled {module}.{kernel} for sm_{arch} with {constexprs} in the report")



def cross_entropy(module_name: str, entries: list[dict], arch: int) -> list[roofline.Estimate]:
    """Forward+backward (and, for the band design, the loss-only forward) at the shape the shipped
    kernels are specialized for (kernels/cross_entropy.py's TARGET_SHAPE), with the module's own
    tiles: the band design (band_rows) or the atomic design before it."""
    import torch

    from fastscale.kernels.cross_entropy import TARGET_SHAPE

    module = importlib.import_module(module_name)
    gpu, (n, vocab, d) = roofline.GPUS[arch], TARGET_SHAPE.values()
    shape = f"N {n}, V {vocab}, d {d}, bf16"
    pick = lambda kernel, **cx: compiled(entries, module_name, kernel, arch, **cx)
    if not hasattr(module, "band_rows"):
        tiles = {k: roofline.Tile.of(module.CONFIGS[(k, 2)]) for k in ("forward", "backward")}
        forward, backward = roofline.cross_entropy_atomic(n, vocab, d, tiles, {k: pick(f"_{k}_kernel") for k in tiles}, gpu)
        return [roofline.estimate("cross-entropy forward+backward", shape, gpu, roofline.cross_entropy_flops(n, vocab, d), [forward, backward]),
                roofline.estimate("cross-entropy forward (loss only)", shape, gpu, roofline.cross_entropy_flops(n, vocab, d, backward=False), [forward])]
    cfg = lambda kernel: module.CONFIGS[(kernel, 2, arch)]
    tiles = {k: roofline.Tile.of(cfg(k)) for k in BAND_KERNELS}
    kernels = {"logits": pick("_logits_kernel"), "logit_grad": pick("_logit_grad_kernel"),
               "d_hidden": pick("_matmul_kernel", A_K_CONTIGUOUS=True), "d_weight": pick("_matmul_kernel", **D_WEIGHT_VARIANT)}
    rows = module.band_rows(n, vocab, torch.bfloat16, tiles["logits"].bm)
    forward_cfg = cfg("forward")
    row_blocks = -(-n // forward_cfg.block_m)
    splits, _ = module.vocab_splits(row_blocks, -(-vocab // forward_cfg.block_n), gpu.sms, forward_cfg.group_m)
    forward = roofline.vocab_sweep("forward (loss only)", n, vocab, d, roofline.Tile.of(forward_cfg), pick("_forward_kernel"), gpu, row_blocks * splits)
    return [
        roofline.estimate("cross-entropy forward+backward", shape, gpu, roofline.cross_entropy_flops(n, vocab, d),
                          roofline.cross_entropy_bands(n, vocab, d, rows, tiles, kernels, gpu)),
        roofline.estimate("cross-entropy forward (loss only)", shape, gpu, roofline.cross_entropy_flops(n, vocab, d, backward=False), [forward]),
    ]


def attention(module_name: str, entries: list[dict], arch: int) -> list[roofline.Estimate]:
    """Causal attention forward and forward+backward at ATTENTION_SHAPE with the module's tiles
    (per-arch tables, or the single table of earlier revisions)."""
    module = importlib.import_module(module_name)
    gpu = roofline.GPUS[arch]
    b, h, t, d = ATTENTION_SHAPE.values()
    block_d = module.width(d) if hasattr(module, "width") else d
    table = module.CONFIGS[arch] if arch in module.CONFIGS else module.CONFIGS
    names = ("forward", "dkdv", "dq")
    tiles = {k: roofline.Tile.of(table[(k, block_d)]) for k in names}
    kernels = {k: compiled(entries, module_name, f"_{k}_kernel", arch, BLOCK_D=block_d) for k in names}
    kernels["delta"] = compiled(entries, module_name, "_delta_kernel", arch, BLOCK_D=block_d)
    shape = f"B {b}, H {h}, T {t}, d {d}, causal, bf16"
    return [roofline.estimate(f"attention {'forward+backward' if backward else 'forward'}", shape, gpu,
                              roofline.attention_flops(b, h, t, d, causal=True, backward=backward),
                              roofline.attention(b, h, t, d, block_d, True, tiles, kernels, gpu, backward=backward))
            for backward in (False, True)]


def calibrations(entries: list[dict]) -> list[tuple[str, roofline.Estimate, roofline.Anchor]]:
    """(family, estimate, published anchor) pairs: Liger-Kernel's fused linear cross-entropy at the
    shapes of its published A100 numbers (its Triton cross-entropy kernel compiled here, its GEMMs
    as ideal cuBLAS), and FlashAttention-2's forward on H100 (its published tile configuration)."""
    pairs = []
    for n, v, d, anchor in LIGER_SHAPES:
        gpu = roofline.A100_SXM
        kernel = compiled(entries, LIGER, "liger_cross_entropy_kernel", gpu.arch)
        pairs.append(("cross-entropy", roofline.estimate(
            "Liger fused linear cross-entropy", f"N {n}, V {v}, d {d}, bf16", gpu, roofline.cross_entropy_flops(n, v, d),
            roofline.liger_fused_linear_cross_entropy(n, v, d, kernel, gpu)), roofline.ANCHORS[anchor]))
    b, h, t, d = ATTENTION_SHAPE.values()
    pairs.append(("attention", roofline.estimate(
        "FlashAttention-2 forward", f"B {b}, H {h}, T {t}, d {d}, causal, bf16", roofline.H100_SXM,
        roofline.attention_flops(b, h, t, d, causal=True, backward=False),
        roofline.flash_attention2_forward(b, h, t, d, True, roofline.H100_SXM)), roofline.ANCHORS[FA2_FORWARD]))
    return pairs


def ratio(estimate: roofline.Estimate, anchor: roofline.Anchor) -> float:
    """Estimated over published throughput: above 1, the model is optimistic by that factor."""
    return estimate.tflops / anchor.tflops


def family_ratios(pairs) -> dict[str, float]:
    """The calibration applied to each kernel family: the pair closest to its target shape (the
    first cross-entropy pair, N 32k; the attention pair)."""
    ratios = {}
    for family, estimate, anchor in pairs:
        ratios.setdefault(family, ratio(estimate, anchor))
    return ratios


def all_estimates(entries: list[dict], modules: dict[str, str], archs=ARCHS) -> list[roofline.Estimate]:
    builders = {"cross-entropy": cross_entropy, "attention": attention}
    return [e for arch in archs for name, module in modules.items() for e in builders[name](module, entries, arch)]


def auto_facts(entries: list[dict]) -> dict[int, dict[str, roofline.Compiled]]:
    """What ops/_auto.py keeps of the compiled kernels, by arch and name ("cross_entropy.logits",
    "cross_entropy.d_hidden", "attention.forward.d128", ...), from report entries (these
    compile_reports' or a whole aot.report's)."""
    facts = {}
    for entry in entries:
        if "error" in entry or not _wanted(entry["signature"], entry["constexprs"], every_head_dim=True):
            continue
        kernel = entry["kernel"].removeprefix("_").removesuffix("_kernel")
        if entry["module"] == MODULES["cross-entropy"]:
            if kernel == "matmul":
                cx = entry["constexprs"]
                if not cx["A_K_CONTIGUOUS"] and not cx.get("ACCUMULATE", True):
                    continue  # the first band's dW stores instead of accumulating: not modelled apart
                kernel = "d_hidden" if cx["A_K_CONTIGUOUS"] else "d_weight"
            name = f"cross_entropy.{kernel}"
        elif entry["module"] == MODULES["attention"]:
            name = f"attention.{kernel}.d{entry['constexprs']['BLOCK_D']}"
        else:
            continue
        facts.setdefault(entry["arch"], {})[name] = roofline.Compiled.from_report(entry)
    return facts


def auto_constants_source(facts: dict[int, dict[str, roofline.Compiled]]) -> str:
    """The COMPILED literal of ops/_auto.py."""
    lines = ["COMPILED = {"]
    for arch in sorted(facts):
        lines.append(f"    {arch}: {{")
        for name, c in sorted(facts[arch].items()):
            lines.append(f"        {name!r}: Compiled({c.kernel!r}, {c.arch}, {c.mma!r}, {c.mma_n}, {c.ctas_per_sm}, {c.num_warps}, {c.gpu_fences}, {c.atomics}),")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- output


def _family(estimate: roofline.Estimate) -> str:
    return estimate.kernel.split(" ", 1)[0]


def table(estimates: list[roofline.Estimate], ratios: dict[str, float]) -> str:
    header = ["kernel", "shape", "GPU", "est. ms", "est. TFLOP/s", "% of peak", "calibrated TFLOP/s", "bound"]
    rows = [[e.kernel, e.shape, e.gpu.name, f"{e.seconds * 1e3:.2f}", f"{e.tflops:.0f}", f"{100 * e.fraction_of_peak:.0f}%",
             f"{e.tflops / ratios[_family(e)]:.0f}", e.bound] for e in estimates]
    return format_table(header, rows)


def calibration_lines(pairs) -> list[str]:
    return [f"{family}: {e.kernel}, {e.shape} on {e.gpu.name}: estimate {e.seconds * 1e3:.2f} ms = {e.tflops:.0f} TFLOP/s; "
            f"published {a.value} = {a.tflops:.0f} TFLOP/s ({a.gpu}); estimate / published = {ratio(e, a):.2f}"
            for family, e, a in pairs]


def anchor_lines() -> list[str]:
    return [f"{a.name}: {a.value} on {a.gpu}, {a.setting} [{a.source}]" for a in roofline.ANCHORS]


def target_lines(estimates: list[roofline.Estimate], ratios: dict[str, float]) -> list[str]:
    lines = []
    for e in estimates:
        if e.gpu.arch == 90 and e.kernel in roofline.TARGETS:
            target, calibrated = roofline.TARGETS[e.kernel], e.tflops / ratios[_family(e)]
            lines.append(f"{e.kernel} >= {target:.0f} TFLOP/s on H100: estimate {e.tflops:.0f}, calibrated {calibrated:.0f}: "
                         f"the estimate {'meets' if calibrated >= target else 'misses'} it (nothing measured)")
    return lines


def report_text(after, before, pairs, revision) -> str:
    ratios = family_ratios(pairs)
    parts = [f"{roofline.LABEL}.", "calibrated = estimate / the family's calibration ratio (below).", "", table(after, ratios)]
    if before:
        parts += ["", f"Before (kernel modules at {revision}):", table(before, ratios)]
    parts += ["", "Targets (issue 10):", *target_lines(after, ratios), "",
              "Calibration (the same model on kernels with published numbers):", *calibration_lines(pairs), "",
              "Published anchors:", *anchor_lines()]
    return "\n".join(parts)


LIMITS = (
    "Limits. The model sees the instruction mix, occupancy and tile schedule, not Triton's code-generation losses "
    "(a wait after each wgmma, register-bound scheduling, no warp specialization). FlashAttention-3's authors measured "
    "the Triton tutorial's causal attention forward at 369 TFLOP/s in this H100 setup (anchors above), below the "
    "calibrated figure this model gives our kernel of the same design: read the attention rows as upper estimates until "
    "a GPU measures them. Cross-entropy's calibration is on cuBLAS GEMMs (Liger-Kernel), so it too assumes our Triton "
    "GEMMs sustain cuBLAS's rate.")


def write_results(after, before, pairs, revision, text: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = dict(label=roofline.LABEL, assumptions=dict(tensor_sustained=roofline.TENSOR_SUSTAINED, fence_cycles=roofline.FENCE_CYCLES,
                                                          fp32_ops_per_softmax_element=roofline.FP32_OPS_PER_SOFTMAX_ELEMENT),
                   after=[e.row() for e in after], before=[e.row() for e in before], before_revision=revision,
                   calibration=[dict(family=f, estimate=e.row(), published=a.value, source=a.source, ratio=ratio(e, a)) for f, e, a in pairs],
                   anchors=[vars(a) for a in roofline.ANCHORS])
    write_atomically(RESULTS / "estimates.json", json_text(payload, indent=1) + "\n")
    command = "python -m fastscale.benchmarks.estimate --write" + (f" --before {revision}" if revision else "")
    write_atomically(RESULTS / "estimates.md",
        f"# Estimated kernel speed (no GPU measured)\n\nWritten by `{command}`. Every number below is an ESTIMATE "
        "of a roofline model fed with the compiled code (sm_90 and sm_80 cubins of the shipped configurations) and the "
        "kernels' own tile tables; no GPU ran them. `calibrated` divides an estimate by the ratio the same model shows "
        "on a published measurement of a kernel of the same family (estimate / published above 1: the model is "
        "optimistic by that factor): Liger-Kernel at 32k tokens on A100 for cross-entropy, FlashAttention-2's forward on "
        "H100 for attention, each applied to both GPUs. The published numbers are their authors' measurements, cited."
        + (f" Before: the kernel modules as committed at {revision}." if revision else "") + "\n\n"
        f"```\n{text}\n```\n\n{LIMITS}\n\n## The model, its constants and their sources (kernels/roofline.py)\n\n"
        f"```\n{roofline.__doc__.strip()}\n```\n")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fastscale.benchmarks.estimate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="store benchmarks/results/estimates.md and estimates.json")
    parser.add_argument("--before", metavar="REV",
                        help="also estimate the kernel modules at this git revision; they must have shipped_configurations(arch): "
                             "6d1bcad or later (6d1bcad holds a6f817a's kernels, the design before issue 10)")
    parser.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    parser.add_argument("--auto-constants", action="store_true",
                        help="print the COMPILED table of src/fastscale/ops/_auto.py from a fresh compile (every head dim) and stop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.auto_constants:
        print(auto_constants_source(auto_facts(compile_reports(list(MODULES.values()), jobs=args.jobs, every_head_dim=True))))
        return 0
    entries = compile_reports([*MODULES.values(), LIGER], jobs=args.jobs)
    after = all_estimates(entries, MODULES)
    pairs = calibrations(entries)
    before = []
    if args.before:
        with tempfile.TemporaryDirectory() as directory:
            old = modules_at(args.before, directory)
            sys.path.insert(0, directory)
            try:
                before = all_estimates(compile_reports(list(old.values()), path=directory, jobs=args.jobs), old)
            finally:
                sys.path.remove(directory)
    text = report_text(after, before, pairs, args.before)
    print(text)
    if args.write:
        write_results(after, before, pairs, args.before, text)
        print(f"\nwrote {RESULTS / 'estimates.md'} and {RESULTS / 'estimates.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
