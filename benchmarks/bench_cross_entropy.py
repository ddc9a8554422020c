"""Benchmark of fused linear + cross-entropy: `fastscale bench cross-entropy` or
`python benchmarks/bench_cross_entropy.py`.

Each method runs forward + backward of mean cross-entropy of hidden @ weight.T against targets,
from the same inputs in the same process. Reported: median wall time, the peak memory beyond the
inputs, and the peak beyond the inputs and the gradients (dX, dW) every method must hold, with
ratios against eager PyTorch (full logits). FLOPs: 6 * tokens * d * V (the two matmuls of the
forward logits and of the backward, no recomputation counted).
Without a GPU it also prints the ESTIMATED H100/A100 time of the triton and cuda backends at this
shape and at the GPU goal's (kernels/roofline.py, from the compiled kernels; nothing measured on a
GPU), beside published numbers of Liger-Kernel and Cut Cross-Entropy.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from fastscale.benchmarks import harness
from fastscale.kernels import roofline
from fastscale.ops import _auto, linear_cross_entropy

GPU_GOAL = ">= 60% of 989 TFLOP/s at 32k tokens, V 128k, d 4096 bf16 on an H100"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def flops(tokens: int, d: int, vocab: int) -> float:
    return 6.0 * tokens * d * vocab


def eager(h, w, t):
    return F.cross_entropy(F.linear(h, w).float(), t)


CHUNKED = "F.linear_cross_entropy (chunked)"
GPU_METHODS = ("fastscale triton", "fastscale cuda", "liger-kernel", "cut-cross-entropy")


def _has_chunked() -> bool:
    return hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")


def baselines(device: torch.device) -> dict:
    """name -> loss function (hidden, weight, targets) -> scalar loss, for what this machine has
    (skipped() says what is left out and why)."""
    methods = {"eager (full logits)": eager, "torch.compile": torch.compile(eager)}
    if _has_chunked():
        options = torch.nn.LinearCrossEntropyOptions()
        methods[CHUNKED] = lambda h, w, t: F.linear_cross_entropy(h, w, t, options=options)
    methods["fastscale torch"] = lambda h, w, t: linear_cross_entropy(h, w, t, backend="torch")
    if device.type == "cuda":
        methods["fastscale triton"] = lambda h, w, t: linear_cross_entropy(h, w, t, backend="triton")
        methods["fastscale cuda"] = lambda h, w, t: linear_cross_entropy(h, w, t, backend="cuda")
        methods.update(_installed_gpu_baselines()[0])
    return methods


def skipped(device: torch.device) -> list[harness.Skipped]:
    """The methods baselines(device) leaves out, each with the reason."""
    out = [] if _has_chunked() else [harness.Skipped(CHUNKED, f"not in torch {torch.__version__}")]
    if device.type != "cuda":
        return out + [harness.Skipped(name, "needs a CUDA GPU") for name in GPU_METHODS]
    return out + _installed_gpu_baselines()[1]


def _installed_gpu_baselines() -> tuple[dict, list[harness.Skipped]]:
    """(the Liger-Kernel and Cut Cross-Entropy methods that import, the others with their import error)."""
    methods, missing = {}, []
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        methods["liger-kernel"] = lambda h, w, t: liger_fused_linear_cross_entropy(h, w, t)
    except ImportError as error:
        missing.append(harness.Skipped("liger-kernel", f"cannot import it: {error} (pip install liger-kernel)"))
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        methods["cut-cross-entropy"] = lambda h, w, t: cce(h, w, t)
    except ImportError as error:
        missing.append(harness.Skipped("cut-cross-entropy", f"cannot import it: {error} (pip install cut-cross-entropy)"))
    return methods, missing


def estimates(tokens: int, vocab: int, d: int) -> list:
    """Roofline estimates (bf16, forward+backward) of the triton and cuda backends on H100 and A100,
    at this run's shape and at the GPU goal's (the shape the shipped kernels are specialized for)."""
    from fastscale.kernels.cross_entropy import TARGET_SHAPE

    out = []
    for n, v, dim in dict.fromkeys([(tokens, vocab, d), tuple(TARGET_SHAPE.values())]):
        for gpu in (roofline.H100_SXM, roofline.A100_SXM):
            for backend, launches in _auto.cross_entropy_launches(n, v, dim, gpu).items():
                out.append(roofline.estimate(f"fastscale {backend}", f"N {n}, V {v}, d {dim}, bf16", gpu, flops(n, dim, v), launches))
    return out


def make_step(loss_fn, hidden, weight, targets):
    def step():
        loss = loss_fn(hidden, weight, targets)
        loss.backward()
        hidden.grad = weight.grad = None
    return step


def parse_args(argv):
    from fastscale.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="fastscale bench cross-entropy", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="rows of the hidden states (tokens of a batch)")
    parser.add_argument("--d", type=int, default=1024, help="hidden size (columns of hidden and weight)")
    parser.add_argument("--vocab", type=int, default=131072, help="vocabulary size V (rows of the weight)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of hidden and weight")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (min, median and max reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--out", default="bench-results/cross_entropy.json", help="JSON results file")
    args = parser.parse_args(argv)
    for name in ("tokens", "d", "vocab", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: expected a positive integer")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    env = harness.environment()
    print(harness.describe_environment(env))
    print(f"problem: tokens {args.tokens}, d {args.d}, V {args.vocab}, {args.dtype}, forward + backward, {args.repeats} timed runs each")
    hidden = torch.randn(args.tokens, args.d, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(args.vocab, args.d, device=device) / args.d**0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), device=device)
    grad_bytes = (hidden.numel() + weight.numel()) * dtype.itemsize

    results = []
    for name, loss_fn in baselines(device).items():
        print(f"  running {name} ...", file=sys.stderr, flush=True)
        results.append(harness.measure(name, make_step(loss_fn, hidden, weight, targets), device, repeats=args.repeats))
    left_out = skipped(device)

    print(render(results, grad_bytes, flops(args.tokens, args.d, args.vocab), device))
    print("\n".join(harness.skipped_lines(left_out)))
    if device.type != "cuda":
        print(harness.no_gpu_notice(GPU_GOAL))
        print(harness.estimate_section(estimates(args.tokens, args.vocab, args.d), roofline.CROSS_ENTROPY_ANCHORS))
    harness.write_json(args.out, {
        "benchmark": "cross_entropy", "environment": env, "problem": vars(args), "flops": flops(args.tokens, args.d, args.vocab),
        "gradient_bytes": grad_bytes, "results": [harness.as_record(r) for r in results],
        "skipped": [vars(s) for s in left_out],
    })
    print(f"wrote {args.out}")
    failed = harness.failures(results)
    print("\n".join(failed), file=sys.stderr)
    return 1 if failed else 0


def render(results, grad_bytes: int, n_flops: float, device: torch.device) -> str:
    """Times as min / median / max over the repeats (ratios from the medians); memory beyond the inputs,
    and beyond the inputs and gradients."""
    base = results[0]
    peak = harness.device_peak()
    header = ["method", "min s", "median s", "max s", "x eager", "peak extra MB", "beyond grads MB", "x eager"]
    if device.type == "cuda":
        header += ["TFLOP/s", "% of peak" if peak else "% of peak (unknown device)"]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.name, f"failed: {r.error}"] + [""] * (len(header) - 2))
            continue
        beyond = r.peak_bytes - grad_bytes
        row = [
            r.name, f"{r.min_s:.3f}", f"{r.median_s:.3f}", f"{r.max_s:.3f}", f"{r.median_s / base.median_s:.2f}", f"{r.peak_bytes / 2**20:.0f}",
            f"{beyond / 2**20:.0f}", f"{beyond / (base.peak_bytes - grad_bytes):.3f}",
        ]
        if device.type == "cuda":
            tflops = n_flops / r.median_s / 1e12
            row += [f"{tflops:.0f}", f"{100 * tflops / peak[0]:.0f}%" if peak else "-"]
        rows.append(row)
    return harness.format_table(header, rows)


if __name__ == "__main__":
    sys.exit(main())
