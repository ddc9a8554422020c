"""Benchmark of one training step of a Hugging Face transformers Llama: `python benchmarks/bench_hf.py`
(or `python -m fastscale.benchmarks.bench_hf`).

The same small random Llama (vocabulary 32k by default) runs forward + backward of its causal-LM
loss on the same batch, in one process: stock transformers (SDPA attention, full logits), after
fastscale.integrations.transformers.apply_fastscale (fastscale attention, loss without logits), and
after Liger-Kernel's apply_liger_kernel_to_llama when it is installed and a GPU is present (its
kernels are Triton, which needs one). Reported: median wall time and peak memory beyond the model
(CPU: sampled RSS; CUDA: the allocator's peak), with ratios against stock. Liger patches
transformers' Llama classes for the whole process, so it runs last.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from fastscale.benchmarks import harness

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_model(args, device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d, intermediate_size=args.d * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=DTYPES[args.dtype])
    return model.to(device).train()


def fastscale_model(stock):
    from fastscale.integrations.transformers import apply_fastscale

    return apply_fastscale(copy.deepcopy(stock))


def liger_model(stock):
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    model = copy.deepcopy(stock)
    apply_liger_kernel_to_llama(model=model)
    return model


def make_step(model, input_ids):
    def step():
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def methods(device):
    """name -> (build from the stock model, or None where it cannot run here: the reason)."""
    out = {"transformers (SDPA, full logits)": (lambda stock: stock, None),
           "fastscale (apply_fastscale)": (fastscale_model, None)}
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        out["liger-kernel"] = (None, "not installed (pip install 'fastscale[bench]')")
    else:
        out["liger-kernel"] = (liger_model, None if device.type == "cuda" else "not run: its Triton kernels need a GPU")
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench_hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--d", type=int, default=256, help="hidden size")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default: bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per method (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench-results/hf.json", help="JSON results file")
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    env = harness.environment()
    print(harness.describe_environment(env))
    print(f"problem: Llama d {args.d}, {args.layers} layers, {args.heads}/{args.kv_heads} heads, V {args.vocab}, "
          f"batch {args.batch} x {args.seq} tokens, {args.dtype}, one training step (forward + backward), "
          f"median of {args.repeats}")
    stock = build_model(args, device)
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    results = []
    for name, (build, reason) in methods(device).items():
        if reason is not None:
            results.append(harness.Measurement(name, error=reason))
            continue
        print(f"  running {name} ...", file=sys.stderr, flush=True)
        model = build(stock)
        results.append(harness.measure(name, make_step(model, input_ids), device, repeats=args.repeats))
        del model
    logits_bytes = args.batch * args.seq * args.vocab * 4
    print(render(results, logits_bytes))
    harness.write_json(args.out, {
        "benchmark": "hf", "environment": env, "problem": vars(args), "float32_logits_bytes": logits_bytes,
        "results": [harness.as_record(r) for r in results],
    })
    print(f"wrote {args.out}")
    return 0


def render(results, logits_bytes: int) -> str:
    base = results[0]
    header = ["method", "step s", "x stock", "peak MB", "x stock", "saved MB"]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.name, r.error, "", "", "", ""])
            continue
        rows.append([r.name, f"{r.median_s:.3f}", f"{r.median_s / base.median_s:.2f}", f"{r.peak_bytes / 2**20:.0f}",
                     f"{r.peak_bytes / base.peak_bytes:.2f}", f"{(base.peak_bytes - r.peak_bytes) / 2**20:.0f}"])
    note = f"(one float32 copy of the logits is {logits_bytes / 2**20:.0f} MB)"
    return harness.format_table(header, rows) + "\n" + note


if __name__ == "__main__":
    sys.exit(main())
