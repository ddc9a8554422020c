"""fastscale.ops.linear_cross_entropy against an independent float64 reference.

Tolerances (flash-attn's criterion): for float32 inputs the error against float64 is bounded
relative to the largest reference value (ATOL_FP32); for bfloat16/float16 inputs a backend's error
may be at most 2x the error of plain eager PyTorch in the same dtype (logits from F.linear in that
dtype, softmax in float32), plus one rounding in that dtype of the largest reference value (the
output rounding alone can exceed 2x eager's error when eager's happens to be small).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fastscale.kernels import cross_entropy as triton_cross_entropy
from fastscale.ops import linear_cross_entropy

BACKENDS = ["torch", "triton"]
ATOL_FP32 = 2e-5
ALL_OPTIONS = dict(label_smoothing=0.1, z_loss=1e-3, softcap=3.0)


def losses_from_logits(z, targets, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None):
    """Per-token losses and logsumexps, written from the definitions on the full logits."""
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(z, dim=-1)
    log_probs = z - lse[..., None]
    valid = targets != ignore_index
    nll = -log_probs.gather(-1, torch.where(valid, targets, 0)[..., None])[..., 0]
    smooth = -log_probs.mean(dim=-1)
    loss = (1 - label_smoothing) * nll + label_smoothing * smooth + z_loss * lse**2
    return torch.where(valid, loss, 0.0), lse


def full_logits_loss(hidden, weight, targets, *, bias=None, reduction="mean", return_lse=False, logits_dtype=None, **options):
    """The plain implementation: all logits from F.linear in the input dtype, then softmax math in
    logits_dtype (float64 for the reference, float32 for 'eager in the input dtype')."""
    z = F.linear(hidden, weight, bias).to(logits_dtype or hidden.dtype)
    loss, lse = losses_from_logits(z, targets, **options)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / (targets != options.get("ignore_index", -100)).sum().clamp(min=1)
    return (loss, lse) if return_lse else loss


def eager(*args, **kwargs):
    return full_logits_loss(*args, logits_dtype=torch.float32, **kwargs)


def make_inputs(tokens, vocab, d, dtype, *, bias=True, ignored=0.2, scale=1.0):
    hidden = (torch.randn(tokens, d) * scale / d**0.25).to(dtype)
    weight = (torch.randn(vocab, d) / d**0.25).to(dtype)
    b = torch.randn(vocab).to(dtype) if bias else None
    targets = torch.randint(0, vocab, (tokens,))
    targets[torch.rand(tokens) < ignored] = -100
    return hidden, weight, b, targets


def run(fn, hidden, weight, bias, targets, upstream, dtype=None, **kwargs):
    """Loss, lse and the gradients of sum(upstream * loss) w.r.t. hidden, weight (and bias),
    with the inputs cast to dtype first (float64 for the reference)."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (hidden, weight, bias) if t is not None]
    loss, lse = fn(leaves[0], leaves[1], targets, bias=leaves[2] if bias is not None else None, return_lse=True, **kwargs)
    grads = torch.autograd.grad(loss, leaves, upstream.to(loss.dtype))
    return [loss.detach(), lse.detach(), *grads]


def max_error(outputs, reference):
    return [(o.double() - r).abs().max().item() if o.numel() else 0.0 for o, r in zip(outputs, reference)]


def check_against_reference(backend, hidden, weight, bias, targets, reduction="none", **options):
    loss_shape = targets.shape if reduction == "none" else ()
    upstream = torch.randn(loss_shape, dtype=torch.float64)
    ours = run(linear_cross_entropy, hidden, weight, bias, targets, upstream, reduction=reduction, backend=backend, **options)
    reference = run(full_logits_loss, hidden, weight, bias, targets, upstream, dtype=torch.float64, reduction=reduction, **options)
    names = ["loss", "lse", "d_hidden", "d_weight", "d_bias"]
    for out in ours:
        assert torch.isfinite(out).all()
    errors = max_error(ours, reference)
    scales = [max(1.0, r.abs().max().item()) if r.numel() else 0.0 for r in reference]
    if hidden.dtype == torch.float32:
        bounds = [ATOL_FP32 * scale for scale in scales]
    else:
        plain = run(eager, hidden, weight, bias, targets, upstream, reduction=reduction, **options)
        eps = torch.finfo(hidden.dtype).eps
        bounds = [2 * e + eps * scale for e, scale in zip(max_error(plain, reference), scales)]
    for name, error, bound in zip(names, errors, bounds):
        assert error <= bound, f"{name}: error {error:.3g} > bound {bound:.3g} ({backend}, {hidden.dtype})"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens", [1, 7, 129])
@pytest.mark.parametrize("vocab", [1, 3, 257])
@pytest.mark.parametrize("d", [1, 17, 64])
def test_odd_shapes_float32(backend, tokens, vocab, d):
    hidden, weight, bias, targets = make_inputs(tokens, vocab, d, torch.float32)
    check_against_reference(backend, hidden, weight, bias, targets, **ALL_OPTIONS)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt2_vocabulary_float32(backend):
    """GPT-2's 50257 tokens (odd: no power-of-two tile divides it), at odd tokens and width: the online
    logsumexp and the gradients run over many vocabulary tiles (the interpreter's are 2048 wide), the
    last one ragged. One case: in the interpreter it costs as much as the small-vocabulary grid."""
    hidden, weight, bias, targets = make_inputs(7, 50257, 17, torch.float32)
    check_against_reference(backend, hidden, weight, bias, targets, **ALL_OPTIONS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [dict(), dict(label_smoothing=0.2), dict(z_loss=1e-2), dict(softcap=2.0), dict(ignore_index=5), ALL_OPTIONS],
    ids=["plain", "smoothing", "z_loss", "softcap", "ignore5", "all"],
)
def test_options_dtypes_reductions(backend, dtype, reduction, options):
    hidden, weight, bias, targets = make_inputs(129, 300, 40, dtype, ignored=0.0)
    if "ignore_index" in options:
        targets[::3] = options["ignore_index"]
    else:
        targets[::4] = -100
    check_against_reference(backend, hidden, weight, bias, targets, reduction=reduction, **options)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_bias_and_with_batch_dimensions(backend):
    hidden, weight, _, targets = make_inputs(2 * 3 * 5, 70, 24, torch.float32, bias=False)
    check_against_reference(backend, hidden.view(2, 15, 24), weight, None, targets.view(2, 15))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_logits_stay_finite(backend, dtype):
    # |logits| ~ 1e4: a naive exp overflows; the online logsumexp must not.
    hidden, weight, bias, targets = make_inputs(33, 129, 16, dtype, scale=4e3)
    z = (hidden.double() @ weight.double().T).abs().max().item()
    assert z > 5e3
    check_against_reference(backend, hidden, weight, bias, targets, reduction="mean", z_loss=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("tokens", [0, 9])
def test_all_ignored_gives_zero_loss_and_zero_gradients(backend, reduction, tokens):
    hidden, weight, bias, _ = make_inputs(tokens, 50, 8, torch.float32)
    targets = torch.full((tokens,), -100)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss = linear_cross_entropy(leaves[0], leaves[1], targets, bias=leaves[2], reduction=reduction, z_loss=1e-3, backend=backend)
    loss.sum().backward()
    assert torch.equal(loss, torch.zeros_like(loss))
    for leaf in leaves:
        assert torch.equal(leaf.grad, torch.zeros_like(leaf))


def test_reference_matches_torch_cross_entropy():
    # The test oracle's label smoothing and ignore_index are F.cross_entropy's.
    hidden, weight, bias, targets = make_inputs(40, 30, 8, torch.float64)
    for reduction in ("mean", "sum", "none"):
        ours = full_logits_loss(hidden, weight, targets, bias=bias, reduction=reduction, label_smoothing=0.3)
        theirs = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction=reduction, label_smoothing=0.3)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_torch_backend_chunks_give_the_same_answer(monkeypatch):
    from fastscale.ops import cross_entropy_torch

    hidden, weight, bias, targets = make_inputs(50, 64, 8, torch.float64)
    whole = run(linear_cross_entropy, hidden, weight, bias, targets, torch.tensor(1.0, dtype=torch.float64), backend="torch")
    monkeypatch.setattr(cross_entropy_torch, "CHUNK_BYTES", 7 * 64 * 8)  # 7 rows: 8 uneven chunks
    assert cross_entropy_torch.chunk_rows(64, torch.float64) == 7
    chunked = run(linear_cross_entropy, hidden, weight, bias, targets, torch.tensor(1.0, dtype=torch.float64), backend="torch")
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_never_allocates_the_full_logits(backend, monkeypatch, recorder):
    """Every tensor allocated during forward and backward is smaller than the [tokens, V] logits: the
    largest either backend may hold is a chunk (torch) or band (triton) of float32 logits, or the
    weight gradient. Counted in bytes of new storage: the interpreter copies kernel arguments as byte
    tensors."""
    from fastscale.kernels import cross_entropy as triton_backend
    from fastscale.ops import cross_entropy_torch

    tokens, vocab, d = 200, 512, 8
    monkeypatch.setattr(cross_entropy_torch, "CHUNK_BYTES", 16 * vocab * 4)
    band = triton_backend.INTERPRETER_CONFIGS["logits"].block_m
    monkeypatch.setattr(triton_backend, "BAND_BYTES", band * vocab * 4)

    hidden, weight, bias, targets = make_inputs(tokens, vocab, d, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    with recorder:
        loss = linear_cross_entropy(leaves[0], leaves[1], targets, bias=leaves[2], backend=backend)
        loss.backward()
    rows = 16 if backend == "torch" else band
    assert rows < tokens
    assert len(recorder.sizes) > 20, "the recorder must see inside the backend"
    assert max(recorder.sizes) <= 4 * max(rows * vocab, vocab * d), f"{backend} allocated {max(recorder.sizes)} bytes"


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    hidden, weight, bias, targets = make_inputs(31, 40, 12, torch.float32)
    hidden_t = hidden.T.contiguous().T  # column-major: stride (1, 31)
    weight_view = torch.cat([weight, weight], dim=1)[:, ::2]  # row stride 24, element stride 2
    assert not hidden_t.is_contiguous() and not weight_view.is_contiguous()
    check_against_reference(backend, hidden_t, weight_view, bias, targets)


def test_auto_uses_torch_on_cpu(monkeypatch):
    from fastscale.ops import cross_entropy_torch

    calls = []
    original = cross_entropy_torch.forward
    monkeypatch.setattr(cross_entropy_torch, "forward", lambda *a: calls.append(1) or original(*a))
    hidden, weight, bias, targets = make_inputs(5, 7, 3, torch.float32)
    linear_cross_entropy(hidden, weight, targets)
    assert calls


BAD_INPUTS = [
    (dict(hidden=torch.randn(4, 8, dtype=torch.float64)), ValueError, "dtype"),
    (dict(weight=torch.randn(10, 9)), ValueError, "weight"),
    (dict(weight=torch.randn(10)), ValueError, "weight"),
    (dict(targets=torch.zeros(5, dtype=torch.long)), ValueError, "targets"),
    (dict(targets=torch.zeros(4)), TypeError, "targets"),
    (dict(targets=torch.tensor([0, 1, 10, 2])), ValueError, "targets: value 10"),
    (dict(targets=torch.tensor([0, -1, 2, 3])), ValueError, "targets: value -1"),
    (dict(bias=torch.randn(11)), ValueError, "bias"),
    (dict(bias=torch.randn(10, dtype=torch.float16)), ValueError, "bias: dtype"),
    (dict(hidden=torch.randn(4, 8, dtype=torch.float16)), ValueError, "weight: dtype"),
    (dict(reduction="avg"), ValueError, "reduction='avg'"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing=1.5"),
    (dict(z_loss=-1.0), ValueError, "z_loss=-1.0"),
    (dict(softcap=0.0), ValueError, "softcap=0.0"),
    (dict(ignore_index=1.5), TypeError, "ignore_index"),
    (dict(backend="flash_attn"), ValueError, "backend='flash_attn'"),
    (dict(backend="cuda"), NotImplementedError, "backend='cuda' cannot serve these inputs: it needs CUDA tensors"),
    (dict(hidden=[[1.0]]), TypeError, "hidden"),
]


@pytest.mark.parametrize("override, error, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_names_the_argument(override, error, message):
    args = dict(hidden=torch.randn(4, 8), weight=torch.randn(10, 8), targets=torch.tensor([0, 1, -100, 9]), bias=None)
    args.update(override)
    kwargs = {k: v for k, v in args.items() if k not in ("hidden", "weight", "targets")}
    if args["hidden"] is not None and isinstance(args["hidden"], torch.Tensor) and args["hidden"].dtype == torch.float64 and "backend" not in kwargs:
        kwargs["backend"] = "triton"
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        linear_cross_entropy(args["hidden"], args["weight"], args["targets"], **kwargs)


def test_second_backward_through_a_fused_loss_is_refused():
    hidden, weight, bias, targets = make_inputs(6, 10, 4, torch.float32)
    hidden.requires_grad_()
    loss = linear_cross_entropy(hidden, weight, targets, bias=bias)
    (2 * loss).backward(retain_graph=True)
    first = hidden.grad.clone()
    reference = torch.autograd.grad(2 * full_logits_loss(hidden, weight, targets, bias=bias), hidden)[0]
    torch.testing.assert_close(first, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


@pytest.mark.parametrize("arch", [80, 90, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_with_the_gpu_tile_shapes(arch, dtype, monkeypatch):
    """The interpreter normally runs large tiles for speed; here the tiles shipped for the GPU run
    (every kernel: reduction "none" runs the loss-only forward, then the gradients), on a problem
    ragged at every tile edge."""
    from fastscale.kernels import cross_entropy

    monkeypatch.setattr(cross_entropy, "config_for", lambda kernel, dt, device: cross_entropy.CONFIGS[(kernel, dt.itemsize, arch)])
    hidden, weight, bias, targets = make_inputs(130, 300, 40, dtype)
    check_against_reference("triton", hidden, weight, bias, targets, **ALL_OPTIONS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_bands_split_the_tokens(dtype, reduction, monkeypatch):
    """A band budget of 64 rows of logits: 129 tokens run as bands of 64, 64 and 1, so band
    boundaries fall inside the input and d weight accumulates over three bands."""
    from fastscale.kernels import cross_entropy

    monkeypatch.setattr(cross_entropy, "BAND_BYTES", 64 * 300 * dtype.itemsize)
    assert cross_entropy.band_rows(129, 300, dtype, cross_entropy.INTERPRETER_CONFIGS["logits"].block_m) == 64
    hidden, weight, bias, targets = make_inputs(129, 300, 40, dtype)
    check_against_reference("triton", hidden, weight, bias, targets, reduction=reduction, **ALL_OPTIONS)


def test_triton_gradients_are_deterministic(monkeypatch):
    """No atomics: two runs give bit-identical gradients (meaningful on a GPU, where atomics would
    make the summation order vary; FASTSCALE_TEST_NATIVE_TRITON=1 runs it there)."""
    from fastscale.kernels import cross_entropy

    monkeypatch.setattr(cross_entropy, "BAND_BYTES", 64 * 300 * 2)
    hidden, weight, bias, targets = make_inputs(129, 300, 40, torch.bfloat16)
    upstream = torch.randn(129, dtype=torch.float64)
    first, second = (run(linear_cross_entropy, hidden, weight, bias, targets, upstream, reduction="none", backend="triton", **ALL_OPTIONS)
                     for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("logit_scale", [1e-4, 1e-2, 1.0, 30.0], ids=["tiny", "small", "medium", "saturated"])
def test_triton_softcap_float32_is_as_accurate_as_eager(logit_scale):
    """With a softcap, triton's float32 loss and gradients are within 2x eager float32's error
    against float64 (plus one float32 rounding of the largest value, as for 16-bit inputs above),
    for logits / softcap from 1e-4 to saturation. (At these shapes the matmuls' rounding dominates
    the gradients' error; the tanh itself is tested directly below.)"""
    hidden, weight, _, targets = make_inputs(65, 257, 32, torch.float32, bias=False)
    hidden = hidden / (hidden @ weight.T).std() * logit_scale  # logits ~ logit_scale; softcap 1
    upstream = torch.randn(65, dtype=torch.float64)
    kwargs = dict(reduction="none", softcap=1.0)
    ours = run(linear_cross_entropy, hidden, weight, None, targets, upstream, backend="triton", **kwargs)
    plain = run(eager, hidden, weight, None, targets, upstream, **kwargs)
    reference = run(full_logits_loss, hidden, weight, None, targets, upstream, dtype=torch.float64, **kwargs)
    eps = torch.finfo(torch.float32).eps
    for name, error, eager_error, r in zip(["loss", "lse", "d_hidden", "d_weight"], max_error(ours, reference), max_error(plain, reference), reference):
        bound = 2 * eager_error + eps * r.abs().max().item()
        assert error <= bound, f"{name}: error {error:.3g} > 2 x eager's {eager_error:.3g} + one rounding"


@triton.jit
def _tanh_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(y_ptr + i, triton_cross_entropy._tanh(tl.load(x_ptr + i, mask=i < n)), mask=i < n)


def test_triton_softcap_tanh_is_accurate_to_1e7_relative():
    """The kernels' fp32 tanh against float64, from 1e-30 to saturation: within 2.5e-7 relative
    (1 - 2 / (exp(2x) + 1), the formula it replaced, is off by 1.7e-4 at x = 1e-4)."""
    magnitudes = torch.logspace(-30, 1.5, 2000, dtype=torch.float64)
    x = torch.cat([magnitudes, -magnitudes, torch.rand(1000, dtype=torch.float64) * 3]).float()
    y = torch.full_like(x, float("nan"))
    _tanh_kernel[(1,)](x, y, x.numel(), BLOCK=8192)
    exact = torch.tanh(x.double())
    relative = ((y.double() - exact).abs() / exact.abs()).max().item()
    assert relative <= 2.5e-7, f"max relative error {relative:.3g}"
