"""What `fastscale bench cross-entropy|attention` print without a GPU beside their CPU measurements:
roofline estimates, labelled as such, and the published numbers with their sources."""

import random

from fastscale.benchmarks import bench_attention, bench_cross_entropy, harness
from fastscale.kernels import roofline


def _check(text: str, estimates, anchors) -> None:
    lines = text.splitlines()
    assert lines[0].startswith(roofline.LABEL)
    assert all(a.source in text and a.value in text for a in anchors)
    for e in estimates:
        assert f"{e.seconds * 1e3:.2f}" in text and 0 < e.tflops < e.gpu.tensor_flops / 1e12


def test_cross_entropy_bench_prints_labelled_estimates_at_its_shape_and_the_goals():
    tokens, vocab, d = random.choice([(4096, 131072, 1024), (1000, 32000, 512)])
    estimates = bench_cross_entropy.estimates(tokens, vocab, d)
    shapes = {e.shape for e in estimates}
    assert shapes == {f"N {tokens}, V {vocab}, d {d}, bf16", "N 32768, V 131072, d 4096, bf16"}
    assert {e.kernel for e in estimates} == {"fastscale triton", "fastscale cuda"}
    _check(harness.estimate_section(estimates, roofline.CROSS_ENTROPY_ANCHORS), estimates, roofline.CROSS_ENTROPY_ANCHORS)


def test_attention_bench_prints_labelled_estimates_at_d128_and_its_head_dim():
    head_dim = random.choice([64, 96])
    estimates = bench_attention.estimates(head_dim)
    assert {e.shape.split("d ")[1].split(",")[0] for e in estimates} == {"128", str(head_dim)}
    forward, both = (next(e for e in estimates if e.kernel.endswith(p) and e.gpu.arch == 90) for p in ("fwd", "fwd+bwd"))
    assert forward.flops * 3.5 == both.flops  # flash-attn's convention: the backward counts 2.5 forwards
    _check(harness.estimate_section(estimates, roofline.ATTENTION_ANCHORS), estimates, roofline.ATTENTION_ANCHORS)
