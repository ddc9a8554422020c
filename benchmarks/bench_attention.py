"""`fastscale bench attention`: fastscale.ops.attention against SDPA, FlexAttention and flash-attn.

On a GPU: the Triton kernel, forward and forward+backward, causal and not, head dims 64 and 128,
sequence lengths 512 to 16k at 16k tokens per batch (flash-attn's benchmark shapes: model width
2048), bf16, in TFLOP/s and as a fraction of the device's peak; before it, as on a CPU, a packed
batch of uneven documents and packed against unpacked equal lengths (below).
On a CPU: the torch path on a packed batch of uneven documents against SDPA with a dense
document mask and FlexAttention with a document block mask, and packed against unpacked.
Times are medians; ratios are against a baseline measured in the same process.
Without a GPU it also prints the ESTIMATED H100/A100 speed of the Triton kernels at d 128, T 8k,
causal, B 2, H 16 and at this run's head dim (kernels/roofline.py, from the compiled kernels; nothing
measured on a GPU), beside published FlashAttention-2/3 and Triton numbers.
"""

from __future__ import annotations

import argparse
import random
import sys

import torch
import torch.nn.functional as F

from fastscale.benchmarks import harness
from fastscale.kernels import roofline
from fastscale.ops import _auto, attention

GOAL = ("H100 bf16, head dim 128, T 8k: forward >= 450 TFLOP/s, forward+backward >= 330 TFLOP/s; "
        "packed documents within 10% of the same tokens unpacked")
PASSES = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def flops(lengths, heads: int, head_dim: int, *, causal: bool, passes: str = "fwd") -> float:
    """flash-attn's convention: the forward costs 4 * T^2 * H * D per sequence (two matmuls), half
    of it when causal; the backward 2.5x the forward. Windows and document masks are not discounted
    beyond the per-document sum."""
    forward = sum(4 * t * t * heads * head_dim for t in lengths) / (2 if causal else 1)
    return forward * PASSES[passes]


def document_lengths(total: int, shortest: int, longest: int, rng: random.Random) -> list[int]:
    """Uneven documents that fill `total` tokens exactly (the last one takes the remainder)."""
    lengths = []
    while total > 0:
        n = min(total, rng.randint(shortest, longest))
        lengths.append(n)
        total -= n
    return lengths


def cu_seqlens_of(lengths, device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


def runner(fn, inputs, passes: str):
    """A benchmark body: fn(*inputs) alone, or with a backward pass; it keeps nothing."""
    if passes == "fwd":
        def run():
            with torch.no_grad():
                fn(*inputs)
    else:
        def run():
            out = fn(*inputs)
            out.backward(torch.ones_like(out))
            for x in inputs:
                x.grad = None
    return run


def leaves(shape_q, shape_kv, dtype, device, grad: bool):
    return [torch.randn(s, dtype=dtype, device=device, requires_grad=grad) for s in (shape_q, shape_kv, shape_kv)]


# ---------------------------------------------------------------------------------------------- baselines


def sdpa_bthd(q, k, v, causal=True):
    """torch SDPA on flash-attn's [B, T, H, D] layout."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                         enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def document_mask(lengths, causal: bool, device) -> torch.Tensor:
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    pos = torch.arange(doc.shape[0], device=device)
    mask = doc[:, None] == doc[None, :]
    return mask & (pos[None, :] <= pos[:, None]) if causal else mask


def sdpa_dense_mask(mask):
    """Packed [N, H, D] through SDPA as one sequence with an [N, N] document mask."""
    def run(q, k, v):
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                             attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
        return out[0].transpose(0, 1)
    return run


def flex_document(lengths, causal: bool, device):
    """(FlexAttention on packed [N, H, D] with a document block mask, seconds to build the mask)."""
    import time

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))

    def mask_mod(b, h, q_idx, kv_idx):
        same = doc[q_idx] == doc[kv_idx]
        return same & (kv_idx <= q_idx) if causal else same

    n = doc.shape[0]
    t0 = time.perf_counter()
    block_mask = create_block_mask(mask_mod, None, None, n, n, device=str(device))
    harness.synchronize(device)
    build_s = time.perf_counter() - t0
    compiled = torch.compile(flex_attention)

    def run(q, k, v):
        out = compiled(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                       block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
        return out[0].transpose(0, 1)
    return run, build_s


def estimates(head_dim: int) -> list:
    """Roofline estimates of the Triton kernels (bf16, causal, B 2 x T 8192, H*d 2048: flash-attn's
    16k-token setup) forward and forward+backward on H100 and A100, at d 128 and this run's d."""
    out = []
    for d in dict.fromkeys([128, head_dim]):
        heads = 2048 // d
        for gpu in (roofline.H100_SXM, roofline.A100_SXM):
            for passes in ("fwd", "fwd+bwd"):
                launches = _auto.triton_attention_launches(2, 8192, heads, d, True, gpu, backward=passes != "fwd")
                work = flops([8192] * 2, heads, d, causal=True, passes=passes)
                out.append(roofline.estimate(f"fastscale triton {passes}", f"B 2, T 8192, H {heads}, d {d}, causal, bf16", gpu, work, launches))
    return out


def flash_attn_missing(device) -> str | None:
    """Why flash-attn is not measured here, or None when it is."""
    if device.type != "cuda":
        return "needs a CUDA GPU"
    try:
        import flash_attn  # noqa: F401
    except ImportError as error:
        return f"cannot import it: {error} (pip install flash-attn)"
    return None


# ---------------------------------------------------------------------------------------------- sections


def row(m: harness.Measurement, work: float, baseline: harness.Measurement | None, gpu: bool) -> list[str]:
    """Times as min / median / max over the repeats; the ratio and the throughput from the medians."""
    if m.error:
        return [m.name, "-", "-", "-", "-", "-", "-", m.error]
    times = [f"{t * 1e3:.2f}" for t in (m.min_s, m.median_s, m.max_s)]
    ratio = f"{baseline.median_s / m.median_s:.2f}x" if baseline and not baseline.error else "-"
    if not gpu:
        return [m.name, *times, ratio, f"{m.peak_bytes / 2**20:.0f}", f"{work / m.median_s / 1e9:.1f} GFLOP/s", ""]
    peak = harness.device_peak()
    tflops = work / m.median_s / 1e12
    share = f"{tflops / peak[0]:.0%} of peak" if peak else "peak unknown"
    return [m.name, *times, ratio, f"{m.peak_bytes / 2**20:.0f}", f"{tflops:.0f} TFLOP/s ({share})", ""]


HEADER = ["method", "min ms", "median ms", "max ms", "speed vs baseline", "peak MiB", "throughput", "note"]


def measure_all(cases, inputs_for, passes, work, device, repeats):
    """cases: [(name, fn)], the first being the baseline. Returns (measurements, table rows)."""
    results = []
    for name, fn in cases:
        inputs = inputs_for()
        results.append(harness.measure(name, runner(fn, inputs, passes), device, repeats=repeats))
    rows = [row(m, work, results[0], device.type == "cuda") for m in results]
    return results, rows


def print_section(title: str, rows, skipped: list[harness.Skipped]) -> None:
    print("\n".join([f"\n{title}", harness.format_table(HEADER, rows), *harness.skipped_lines(skipped)]))


def section_record(results, skipped: list[harness.Skipped], **fields) -> dict:
    return dict(**fields, rows=[harness.as_record(m) for m in results], skipped=[vars(s) for s in skipped])


def packed_section(args, device, dtype, rng) -> dict:
    """A packed batch of uneven documents: fastscale against masks in SDPA and FlexAttention."""
    lengths = document_lengths(args.tokens, args.shortest, args.longest, rng)
    heads, heads_kv, d = args.heads, args.heads_kv, args.head_dim
    cu = cu_seqlens_of(lengths, device)
    mask = document_mask(lengths, args.causal, device)
    backend = "triton" if device.type == "cuda" else "torch"
    ours = lambda q, k, v: attention(q, k, v, causal=args.causal, cu_seqlens=cu, max_seqlen=max(lengths), backend=backend)
    flex, flex_build_s = flex_document(lengths, args.causal, device)
    sections, failed = {}, []
    no_flash = flash_attn_missing(device)
    for passes in args.passes:
        cases = [("SDPA, dense [N, N] document mask", sdpa_dense_mask(mask)), (f"fastscale attention ({backend}, cu_seqlens)", ours)]
        skipped = [harness.Skipped("flash-attn varlen", no_flash)] if no_flash else []
        if not no_flash:
            cases.append(("flash-attn varlen", lambda q, k, v: attention(q, k, v, causal=args.causal, cu_seqlens=cu, max_seqlen=max(lengths), backend="flash_attn")))
        if passes == "fwd" or device.type == "cuda":
            cases.append(("FlexAttention (compiled), document block mask", flex))
        else:
            skipped.append(harness.Skipped("FlexAttention (compiled), document block mask", "FlexAttention has no backward on CPU"))
        work = flops(lengths, heads, d, causal=args.causal, passes=passes)
        inputs_for = lambda: leaves((args.tokens, heads, d), (args.tokens, heads_kv, d), dtype, device, passes != "fwd")
        results, rows = measure_all(cases, inputs_for, passes, work, device, args.repeats)
        title = (f"packed, {passes}: {len(lengths)} documents of {min(lengths)}..{max(lengths)} tokens, {args.tokens} tokens, "
                 f"Hq={heads} Hkv={heads_kv} D={d}, {str(dtype)[6:]}, causal={args.causal}")
        print_section(title, rows, skipped)
        sections[f"packed {passes}"] = section_record(results, skipped, title=title, lengths=lengths, flops=work)
        failed += harness.failures(results)
    print(f"FlexAttention block mask built in {flex_build_s * 1e3:.1f} ms (not in the times above)")
    sections["flex_block_mask_build_s"] = flex_build_s
    return sections, failed


def packing_overhead_section(args, device, dtype) -> dict:
    """The same tokens as a [B, T] batch and as a pack of B documents of T: the cost of cu_seqlens."""
    batch, length = args.tokens // args.unpacked_length, args.unpacked_length
    heads, heads_kv, d = args.heads, args.heads_kv, args.head_dim
    cu = cu_seqlens_of([length] * batch, device)
    backend = "triton" if device.type == "cuda" else "torch"
    unpacked = lambda q, k, v: attention(q.view(batch, length, heads, d), k.view(batch, length, heads_kv, d),
                                         v.view(batch, length, heads_kv, d), causal=args.causal, backend=backend)
    packed = lambda q, k, v: attention(q, k, v, causal=args.causal, cu_seqlens=cu, max_seqlen=length, backend=backend)
    sections, failed = {}, []
    for passes in args.passes:
        work = flops([length] * batch, heads, d, causal=args.causal, passes=passes)
        inputs_for = lambda: leaves((batch * length, heads, d), (batch * length, heads_kv, d), dtype, device, passes != "fwd")
        results, rows = measure_all([("unpacked [B, T]", unpacked), ("packed, cu_seqlens", packed)], inputs_for, passes, work, device, args.repeats)
        title = f"packing overhead, {passes}: B={batch} x T={length} ({backend}), Hq={heads} Hkv={heads_kv} D={d}, {str(dtype)[6:]}"
        print_section(title, rows, [])
        sections[f"packing {passes}"] = section_record(results, [], title=title, flops=work)
        failed += harness.failures(results)
    return sections, failed


def gpu_sweep_section(args, device) -> dict:
    """flash-attn's benchmark grid: 16k tokens per batch, model width 2048, bf16."""
    sections, failed = {}, []
    no_flash = flash_attn_missing(device)
    skipped = [harness.Skipped("flash-attn", no_flash)] if no_flash else []
    for d in (64, 128):
        heads = 2048 // d
        for causal in (False, True):
            for t in (512, 1024, 2048, 4096, 8192, 16384):
                batch = 16384 // t
                shape = (batch, t, heads, d)
                cases = [("SDPA", lambda q, k, v: sdpa_bthd(q, k, v, causal)),
                         ("fastscale triton", lambda q, k, v: attention(q, k, v, causal=causal, backend="triton"))]
                if not no_flash:
                    cases.append(("flash-attn", lambda q, k, v: attention(q, k, v, causal=causal, backend="flash_attn")))
                for passes in args.passes:
                    work = flops([t] * batch, heads, d, causal=causal, passes=passes)
                    inputs_for = lambda: leaves(shape, shape, torch.bfloat16, device, passes != "fwd")
                    results, rows = measure_all(cases, inputs_for, passes, work, device, args.repeats)
                    title = f"{passes}: B={batch} T={t} H={heads} D={d} bf16 causal={causal}"
                    print_section(title, rows, skipped)
                    sections[title] = section_record(results, skipped, flops=work)
                    failed += harness.failures(results)
    return sections, failed


def build_parser() -> argparse.ArgumentParser:
    from fastscale.cli import HelpFormatter

    p = argparse.ArgumentParser(prog="fastscale bench attention", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--device", default="cuda" if harness.has_gpu() else "cpu", help="torch device")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--tokens", type=int, default=None, help="tokens per packed batch (default 16384 GPU, 4096 CPU)")
    p.add_argument("--shortest", type=int, default=32, help="shortest document of the packed batch")
    p.add_argument("--longest", type=int, default=None, help="longest document (default 4096 GPU, 1024 CPU)")
    p.add_argument("--unpacked-length", type=int, default=None, help="T of the packed-vs-unpacked comparison (default 2048 GPU, 512 CPU)")
    p.add_argument("--heads", type=int, default=8, help="query heads")
    p.add_argument("--heads-kv", type=int, default=None, help="key/value heads, dividing --heads (default: --heads, no grouping)")
    p.add_argument("--head-dim", type=int, default=64, help="head dimension D")
    p.add_argument("--non-causal", dest="causal", action="store_false", help="attend to the whole document, not only the past")
    p.add_argument("--passes", nargs="+", choices=list(PASSES), default=["fwd", "fwd+bwd"], help="forward alone and/or forward+backward")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case; min, median and max reported (default 20 GPU, 5 CPU)")
    p.add_argument("--no-sweep", action="store_true", help="GPU: skip the head dim x T x causal sweep")
    p.add_argument("--seed", type=int, default=0, help="seed of the document lengths and the inputs")
    p.add_argument("--json", default="bench-results/attention.json", help="where to write the results")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options with their device-dependent defaults filled in, checked together."""
    p = build_parser()
    args = p.parse_args(argv)
    gpu = torch.device(args.device).type == "cuda"
    args.tokens = args.tokens or (16384 if gpu else 4096)
    args.longest = args.longest or (4096 if gpu else 1024)
    args.unpacked_length = args.unpacked_length or (2048 if gpu else 512)
    args.repeats = args.repeats or (20 if gpu else 5)
    args.heads_kv = args.heads_kv or args.heads
    for name in ("tokens", "shortest", "longest", "unpacked_length", "heads", "heads_kv", "head_dim", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive integer")
    if args.heads % args.heads_kv:
        p.error(f"--heads {args.heads} --heads-kv {args.heads_kv}: --heads-kv must divide --heads (grouped-query attention)")
    if args.shortest > args.longest:
        p.error(f"--shortest {args.shortest} --longest {args.longest}: the shortest document is longer than the longest")
    if args.tokens % args.unpacked_length:
        p.error(f"--tokens {args.tokens} --unpacked-length {args.unpacked_length}: --unpacked-length must divide --tokens")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    env = harness.environment()
    print(harness.describe_environment(env))
    if not gpu:
        print(harness.no_gpu_notice(GOAL))
    torch.manual_seed(args.seed)
    results = dict(environment=env, gpu=gpu, goal=GOAL, args=vars(args))
    packed, failed = packed_section(args, device, dtype, random.Random(args.seed))
    overhead, overhead_failed = packing_overhead_section(args, device, dtype)
    results.update(**packed, **overhead)
    failed += overhead_failed
    if gpu and not args.no_sweep:
        results["sweep"], sweep_failed = gpu_sweep_section(args, device)
        failed += sweep_failed
    harness.write_json(args.json, results)
    print(f"\nresults written to {args.json}")
    if not gpu:
        print(harness.no_gpu_notice(GOAL))
        print(harness.estimate_section(estimates(args.head_dim), roofline.ATTENTION_ANCHORS))
    print("\n".join(failed), file=sys.stderr)
    return 1 if failed else 0
