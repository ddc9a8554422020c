"""kernels/roofline.py on closed-form cases, the labelling of everything it prints, and the compiled-code
constants of ops/_auto.py checked against a fresh compile (so they cannot silently drift)."""

import random

import pytest

from fastscale.kernels import roofline as r

H100, A100 = r.H100_SXM, r.A100_SXM


def facts(mma="wgmma", n=128, ctas=1, warps=8, arch=90):
    return r.Compiled("k", arch, mma, n, ctas, warps, 0, 0)


def test_pure_mma_launch_takes_its_flops_at_the_sustained_tensor_peak():
    flops = random.uniform(1e12, 1e14)
    launch = r.Launch("gemm", facts(ctas=2), programs=H100.sms * 2 * random.randint(1, 9), mma_flops=flops)
    t = r.launch_time(launch, H100)
    assert t.seconds == pytest.approx(flops / (989.4e12 * r.TENSOR_SUSTAINED), rel=1e-12)
    assert (t.bound, t.imbalance) == ("tensor", 1.0)


def test_mma_sync_runs_at_two_thirds_of_wgmma_on_hopper_and_at_full_rate_on_ampere():
    flops = random.uniform(1e12, 1e14)
    time = lambda mma, gpu: r.launch_time(r.Launch("g", facts(mma, arch=gpu.arch), gpu.sms, mma_flops=flops), gpu).seconds
    assert time("mma_sync", H100) == pytest.approx(1.5 * time("wgmma", H100), rel=1e-12)
    assert time("mma_sync", A100) == pytest.approx(flops / (312e12 * r.TENSOR_SUSTAINED), rel=1e-12)


def test_pure_copy_takes_its_bytes_at_hbm_bandwidth():
    nbytes = random.uniform(1e8, 1e11)
    t = r.launch_time(r.Launch("copy", facts("none", 0), programs=A100.sms * 3, hbm_bytes=nbytes), A100)
    assert t.seconds == pytest.approx(nbytes / 2.039e12, rel=1e-12)
    assert t.bound == "HBM"


def test_one_program_more_than_the_slots_takes_two_waves():
    slots, per_program = H100.sms * 2, random.uniform(1e8, 1e10)
    rate = H100.tensor_flops * r.TENSOR_SUSTAINED
    uniform = r.Launch("g", facts(ctas=2), programs=slots + 1, mma_flops=(slots + 1) * per_program)
    listed = r.Launch("g", facts(ctas=2), programs=slots + 1, mma_flops=(slots + 1) * per_program, program_work=[1.0] * (slots + 1))
    for launch in (uniform, listed):
        # Each slot runs one program at 1/slots of the GPU's rate; the last program waits a wave.
        assert r.launch_time(launch, H100).seconds == pytest.approx(2 * per_program * slots / rate, rel=1e-12)


def test_a_program_longer_than_all_others_together_sets_the_time():
    slots = H100.sms
    work = [float(slots)] + [1.0] * slots  # launched first; the others share the remaining slots
    assert r.imbalance(work, len(work), slots) == pytest.approx(slots / (2 * slots / slots), rel=1e-12)


def test_gpu_scope_fences_serialize_within_a_warp():
    fences = random.randint(10, 10_000)
    t = r.launch_time(r.Launch("atomics", facts(ctas=1), programs=H100.sms, fences_per_warp=fences), H100)
    assert t.seconds == pytest.approx(fences * r.FENCE_CYCLES / 1.83e9, rel=1e-12)
    assert t.bound == "fences"


def test_a_gemm_whose_wave_fits_in_l2_reads_each_operand_once():
    m, n, k = 128 * random.randint(1, 8), 256 * random.randint(1, 4), 64 * random.randint(1, 16)
    tile = r.Tile(128, 256, 64, group_m=8)
    assert r.gemm_hbm_bytes(m, n, k, tile, concurrent=10_000, elem=2, l2_bytes=2**40) == (m * k + n * k) * 2


def test_without_l2_room_every_wave_rereads_its_row_blocks():
    rows, cols, k = 16, 64, 512
    tile = r.Tile(128, 128, 64, group_m=1)
    waves = rows * cols // 32  # row-major waves of 32 programs: 1 row block, 32 column blocks each
    expected = waves * (128 + 32 * 128) * k * 2
    assert r.gemm_hbm_bytes(rows * 128, cols * 128, k, tile, concurrent=32, elem=2, l2_bytes=0) == expected


def test_a_narrow_hgmma_reads_its_a_operand_once_per_instruction():
    wide, narrow = facts(n=128), facts(n=16)
    extra = r.mma_operand_bytes(128, 128, 64, narrow, 2) - r.mma_operand_bytes(128, 128, 64, wide, 2)
    assert extra == 128 * 64 * 2 * (128 // 16 - 1)


def test_every_printed_number_is_labelled_an_estimate():
    from fastscale.benchmarks import estimate

    assert r.LABEL.startswith("ESTIMATE")
    e = r.estimate("cross-entropy forward+backward", "shape", H100, 1e12,
                   [r.Launch("g", facts(), H100.sms, mma_flops=1e12)])
    pairs = [("cross-entropy", e, r.ANCHORS[0]), ("attention", e, r.ANCHORS[estimate.FA2_FORWARD])]
    assert estimate.report_text([e], [], pairs, None).startswith(r.LABEL)
    written = (estimate.RESULTS / "estimates.md").read_text()
    assert r.LABEL in written and "no GPU measured" in written.splitlines()[0]


@pytest.fixture(scope="module")
def fresh_entries(shipped_reports):
    """Report entries of this session's compile of the shipped configurations the estimates and
    ops/_auto.py read: bf16, plain variants, every head dim, sm_90 and sm_80."""
    from fastscale.benchmarks import estimate

    return estimate.estimated_entries(shipped_reports, every_head_dim=True)


@pytest.mark.slow
def test_the_estimates_take_from_a_full_report_what_they_would_compile(shipped_reports, fresh_entries):
    """estimated_entries against compile_reports itself, on the cross-entropy kernels for sm_90."""
    from fastscale.benchmarks import estimate

    module = estimate.MODULES["cross-entropy"]
    compiled = estimate.compile_reports([module], archs=(90,), every_head_dim=True)
    chosen = [e for e in fresh_entries if e["module"] == module and e["arch"] == 90]
    key = lambda e: (e["kernel"], e["label"])  # noqa: E731
    assert sorted(map(key, chosen)) == sorted(map(key, compiled)) and len(compiled) > 0
    for entry in compiled:
        assert {k: v for k, v in entry.items() if k != "sass"} == next(
            {k: v for k, v in e.items() if k != "sass"} for e in chosen if key(e) == key(entry))


@pytest.mark.slow
def test_auto_constants_match_the_compiled_kernels(fresh_entries):
    from fastscale.benchmarks import estimate
    from fastscale.ops import _auto

    assert estimate.auto_facts(fresh_entries) == _auto.COMPILED, (
        "kernels changed: regenerate COMPILED in src/fastscale/ops/_auto.py with "
        "`python -m fastscale.benchmarks.estimate --auto-constants`")


@pytest.mark.slow
def test_the_estimate_command_reads_the_shipped_kernels_and_their_tables(fresh_entries):
    from fastscale.benchmarks import estimate

    estimates = estimate.all_estimates(fresh_entries, estimate.MODULES)
    assert {(e.kernel, e.gpu.arch) for e in estimates} == {(k, a) for k in r.TARGETS for a in (80, 90)} | {
        ("cross-entropy forward (loss only)", a) for a in (80, 90)}
    for e in estimates:
        assert 0 < e.fraction_of_peak < r.TENSOR_SUSTAINED and e.bound in ("tensor", "tensor+softmax", "shared memory", "HBM", "fences")


def test_auto_picks_the_backend_with_the_shortest_estimate():
    from fastscale.ops import _auto
    import torch

    n, vocab, d = random.choice([(4096, 32000, 2048), (32768, 131072, 4096)])
    for capability in ((9, 0), (8, 0)):
        estimates = _auto.cross_entropy_estimates(n, vocab, d, capability)
        assert all(0 < t < 10 for t in estimates.values())
        assert _auto.fastest_cross_entropy_backend(n, vocab, d, torch.bfloat16, capability) == min(estimates, key=estimates.get)
        times = _auto.attention_estimates(16384, 8192, 16, 128, True, capability, True)
        best = _auto.fastest_attention_backend(16384, 8192, 16, 128, torch.bfloat16, True, capability, ("triton", "flash_attn"))
        assert best == min(("triton", "flash_attn"), key=times.get)
    assert _auto.fastest_attention_backend(16384, 8192, 16, 128, torch.bfloat16, True, (9, 0), ()) == "torch"


def test_the_band_design_issues_six_n_v_d_flops_when_the_tiles_divide_the_shape():
    n, vocab, d = 256 * random.randint(1, 4), 512 * random.randint(1, 8), 128 * random.randint(1, 8)
    tile = r.Tile(128, 128, 64, group_m=8)
    tiles = {"logits": tile, "logit_grad": r.Tile(8, 1024, 1), "d_hidden": tile, "d_weight": tile}
    compiled = {k: facts() for k in tiles}
    launches = r.cross_entropy_bands(n, vocab, d, 128, tiles, compiled, H100)
    assert sum(l.mma_flops for l in launches) == r.cross_entropy_flops(n, vocab, d)
    assert sum(l.exp2 for l in launches) == 2 * n * vocab  # statistics epilogue, then the gradient


def test_the_atomic_design_takes_every_fence_of_its_d_loop_once_per_step():
    # The issue's reading of the old backward on sm_90: 6 MEMBAR.ALL.GPU per d step of 32.
    tiles = {"forward": r.Tile(128, 64, 32), "backward": r.Tile(128, 64, 32)}
    compiled = {"forward": facts(), "backward": r.Compiled("k", 90, "wgmma", 16, 1, 8, 6, 6)}
    forward, backward = r.cross_entropy_atomic(32768, 131072, 4096, tiles, compiled, H100)
    assert backward.fences_per_warp == 6 * 4096 // 32 == 768
    assert backward.mma_flops == 3 * forward.mma_flops  # recomputed logits, then dX and dW
