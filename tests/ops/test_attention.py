"""fastscale.ops.attention against an independent float64 reference (explicit masked softmax over a
token list with document ids and positions), on fresh random inputs.

The bar is flash-attn's: a backend's largest error against the float64 reference is at most twice
the largest error of the same plain math done in the input dtype, plus a small slack (SLACK, per
dtype, and half an ulp of the largest reference value for the final rounding). Outputs and gradients
(dq, dk, dv for a random upstream gradient) are checked.
"""

import os

import pytest
import torch

from fastscale.kernels import attention as kernels
from fastscale.ops.attention import attention

SLACK = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}


# --------------------------------------------------------------------------------------- reference


def reference(q, k, v, doc, pos, *, causal, window, scale, dtype):
    """q [N, Hq, D], k/v [N, Hkv, D] for N tokens with document ids `doc` and positions `pos`.
    Every operation runs in `dtype`: float64 for the oracle, the input dtype for the plain baseline."""
    q, k, v = (x.to(dtype) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(group, dim=1) for x in (k, v))
    i, j = pos[:, None], pos[None, :]
    visible = doc[:, None] == doc[None, :]
    if causal:
        visible &= j <= i
    if window is not None:
        visible &= (i - j < window) & (j - i < window)
    scores = torch.einsum("ihd,jhd->hij", q, k) * scale
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.einsum("hij,jhd->ihd", probs, v)


def tokens_of(lengths):
    """Document id and position of every token of documents with these lengths, laid end to end."""
    doc = torch.cat([torch.full((n,), d) for d, n in enumerate(lengths)])
    pos = torch.cat([torch.arange(n) for n in lengths])
    return doc, pos


def max_error(got, want):
    return (got.double() - want).abs().max().item()


def check_against_reference(backend, dtype, lengths, *, heads_q, heads_kv, head_dim, causal, window, packed, fused_qkv=False):
    """Runs attention forward and backward on fresh inputs and asserts the flash-attn error bar.
    fused_qkv: q, k, v are strided views of one [tokens, Hq + 2 Hkv, D] projection, as a model makes them."""
    n = sum(lengths)
    qkv = torch.randn(n, heads_q + 2 * heads_kv, head_dim, dtype=dtype)
    q, k, v = qkv.split([heads_q, heads_kv, heads_kv], dim=1)
    if not fused_qkv:
        q, k, v = (x.contiguous() for x in (q, k, v))
    grad = torch.randn(n, heads_q, head_dim, dtype=dtype)
    scale = head_dim**-0.5
    doc, pos = tokens_of(lengths)

    # Backend under test, on the layout the user passes: packed with cu_seqlens or batched [B, T, H, D].
    fused = qkv.clone().requires_grad_()
    leaves = list(fused.split([heads_q, heads_kv, heads_kv], dim=1)) if fused_qkv else [x.clone().requires_grad_() for x in (q, k, v)]
    if packed:
        cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        out = attention(*leaves, causal=causal, cu_seqlens=cu_seqlens, window=window, backend=backend)
    else:
        batch, length = len(lengths), lengths[0]
        batched = [x.unflatten(0, (batch, length)) for x in leaves]
        out = attention(*batched, causal=causal, window=window, backend=backend).reshape(n, heads_q, head_dim)
    assert out.dtype == dtype and out.shape == q.shape
    out.backward(grad)
    grads = fused.grad.split([heads_q, heads_kv, heads_kv], dim=1) if fused_qkv else [x.grad for x in leaves]
    results = [out.detach(), *grads]

    expected, plain = [], []
    for ref_dtype, store in ((torch.float64, expected), (dtype, plain)):
        ref_leaves = [x.to(ref_dtype, copy=True).requires_grad_() for x in (q, k, v)]
        ref = reference(*ref_leaves, doc, pos, causal=causal, window=window, scale=scale, dtype=ref_dtype)
        ref.backward(grad.to(ref_dtype))
        store += [ref.detach(), *(x.grad for x in ref_leaves)]

    for name, got, want, base in zip(("out", "dq", "dk", "dv"), results, expected, plain):
        assert torch.isfinite(got).all(), f"{name}: non-finite values"
        # Slack: a small constant plus half an ulp of the largest value, the final rounding to dtype
        # that the plain computation may escape by luck on one tensor and not on another.
        bar = 2 * max_error(base, want) + SLACK[dtype] + 0.5 * torch.finfo(dtype).eps * want.abs().max().item()
        assert max_error(got, want) <= bar, f"{name}: error {max_error(got, want):.3g} > bar {bar:.3g} (plain {dtype}: {max_error(base, want):.3g})"


# --------------------------------------------------------------------------------------- torch backend

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 7, 129, 300])
def test_torch_batched(dtype, causal, length):
    check_against_reference("torch", dtype, [length, length], heads_q=4, heads_kv=2, head_dim=32, causal=causal, window=None, packed=False)


@pytest.mark.parametrize("heads_q,heads_kv", [(2, 2), (4, 2), pytest.param(8, 1, marks=pytest.mark.slow)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 1, 5, 64])
def test_torch_packed(heads_q, heads_kv, causal, window):
    lengths = [1, 7, 129, 1, 40]
    check_against_reference("torch", torch.float32, lengths, heads_q=heads_q, heads_kv=heads_kv, head_dim=16, causal=causal, window=window, packed=True)


@pytest.mark.parametrize("window", [1, 6, 33, 500])
@pytest.mark.parametrize("causal", [True, False])
def test_torch_window(window, causal):
    check_against_reference("torch", torch.bfloat16, [77, 77, 77], heads_q=2, heads_kv=1, head_dim=64, causal=causal, window=window, packed=False)


def test_torch_float64_and_empty_documents():
    """float64 is served by the torch backend; a document of length 0 holds no tokens."""
    check_against_reference("torch", torch.float64, [5, 0, 3, 0], heads_q=3, heads_kv=1, head_dim=8, causal=True, window=2, packed=True)


def test_auto_is_torch_on_cpu():
    q, k, v = (torch.randn(2, 9, 4, 16) for _ in range(3))
    assert torch.equal(attention(q, k, v), attention(q, k, v, backend="torch"))


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = (torch.randn(1, 5, 2, 16) for _ in range(3))
    assert torch.equal(attention(q, k, v), attention(q, k, v, scale=0.25))
    assert not torch.equal(attention(q, k, v), attention(q, k, v, scale=0.5))


# --------------------------------------------------------------------------------------- bad input


def _inputs(shape_q=(2, 8, 4, 16), shape_kv=(2, 8, 2, 16), dtype=torch.float32):
    return torch.randn(shape_q, dtype=dtype), torch.randn(shape_kv, dtype=dtype), torch.randn(shape_kv, dtype=dtype)


def _packed(total=10, heads=2):
    return [torch.randn(total, heads, 16) for _ in range(3)]


BAD_INPUTS = [
    # (description, call, error type, words the message must contain)
    ("q not a tensor", lambda: attention([1.0], *_inputs()[1:]), TypeError, ["q", "torch.Tensor"]),
    ("integer dtype", lambda: attention(*(x.long() for x in _inputs())), TypeError, ["q", "int64"]),
    ("dtype mismatch", lambda: attention(_inputs()[0], *(x.half() for x in _inputs()[1:])), ValueError, ["k", "dtype", "float16"]),
    ("3-D without cu_seqlens", lambda: attention(*_packed()), ValueError, ["q", "[B, T, H, D]"]),
    ("4-D with cu_seqlens", lambda: attention(*_inputs(), cu_seqlens=torch.tensor([0, 8], dtype=torch.int32)), ValueError, ["q", "packed"]),
    ("k/v shapes differ", lambda: attention(*_inputs()[:2], torch.randn(2, 8, 1, 16)), ValueError, ["v", "(2, 8, 1, 16)"]),
    ("sequence lengths differ", lambda: attention(*_inputs((2, 8, 4, 16), (2, 7, 2, 16))), ValueError, ["k", "(2, 7, 2, 16)"]),
    ("head dims differ", lambda: attention(*_inputs((2, 8, 4, 16), (2, 8, 2, 32))), ValueError, ["k", "head dim"]),
    ("Hq not a multiple of Hkv", lambda: attention(*_inputs((2, 8, 3, 16), (2, 8, 2, 16))), ValueError, ["q", "3 heads", "multiple", "2 heads"]),
    ("empty sequence", lambda: attention(*_inputs((2, 0, 4, 16), (2, 0, 2, 16))), ValueError, ["q", "empty"]),
    ("causal not a bool", lambda: attention(*_inputs(), causal=1), TypeError, ["causal=1"]),
    ("window zero", lambda: attention(*_inputs(), window=0), ValueError, ["window=0", ">= 1"]),
    ("window a float", lambda: attention(*_inputs(), window=2.0), TypeError, ["window=2.0"]),
    ("negative scale", lambda: attention(*_inputs(), scale=-1.0), ValueError, ["scale=-1.0"]),
    ("unknown backend", lambda: attention(*_inputs(), backend="cudnn"), ValueError, ["backend='cudnn'", "torch"]),
    ("max_seqlen without cu_seqlens", lambda: attention(*_inputs(), max_seqlen=8), ValueError, ["max_seqlen=8", "cu_seqlens"]),
    # cu_seqlens's own checks: test_attention_cu_seqlens.py
    ("flash_attn unavailable on CPU", lambda: attention(*_inputs(), backend="flash_attn"), NotImplementedError, ["flash_attn"]),
]


@pytest.mark.parametrize("call,error,words", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("causal,window,window_size", [(True, None, (-1, -1)), (False, None, (-1, -1)), (True, 8, (7, 0)), (False, 8, (7, 7))])
def test_flash_attn_backend_passes_flash_attn_conventions(monkeypatch, causal, window, window_size):
    """flash-attn cannot be installed here; a stand-in module records what the backend hands it."""
    import sys
    import types

    from fastscale.ops import attention_flash

    calls = []
    fake = types.ModuleType("flash_attn")
    fake.flash_attn_func = lambda q, k, v, **kw: calls.append(("dense", kw)) or q
    fake.flash_attn_varlen_func = lambda q, k, v, *args, **kw: calls.append(("varlen", args, kw)) or q
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    monkeypatch.setattr(attention_flash, "unsupported", lambda q: None)
    expected = dict(softmax_scale=0.25, causal=causal, window_size=window_size, deterministic=True)

    attention(*_inputs(), causal=causal, window=window, backend="flash_attn")
    cu_seqlens = torch.tensor([0, 3, 10], dtype=torch.int32)
    attention(*_packed(), causal=causal, window=window, cu_seqlens=cu_seqlens, backend="flash_attn")
    assert calls[0] == ("dense", expected)
    assert calls[1] == ("varlen", (cu_seqlens, cu_seqlens, 7, 7), expected)


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(NotImplementedError, match="backend='triton'.*CUDA tensors"):
        attention(*_inputs(), backend="triton")


# --------------------------------------------------------------------------------------- triton backend
# Under TRITON_INTERPRET=1 (tests/conftest.py) the kernels run on CPU tensors, one program at a time.


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the kernels write (output, lse, delta, dq, dk, dv) starts as NaN, so an element a
    kernel forgets to write shows up."""
    def nan_filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(kernels, "_empty", nan_filled)


TRITON_BATCHED = [
    *[(torch.bfloat16, causal, length) for causal in (True, False) for length in (1, 7)],
    (torch.bfloat16, True, 129),
    pytest.param(torch.bfloat16, False, 129, marks=pytest.mark.slow),
    *[pytest.param(torch.bfloat16, causal, 300, marks=pytest.mark.slow) for causal in (True, False)],
    pytest.param(torch.float16, True, 129, marks=pytest.mark.slow),
    (torch.float16, False, 7),
]


@pytest.mark.parametrize("dtype,causal,length", TRITON_BATCHED, ids=lambda x: str(x).replace("torch.", ""))
def test_triton_batched(poisoned, dtype, causal, length):
    check_against_reference("triton", dtype, [length, length], heads_q=4, heads_kv=2, head_dim=32, causal=causal, window=None, packed=False)


TRITON_PACKED = [
    # (heads_q, heads_kv, causal, window)
    (2, 2, True, None),
    (4, 2, False, None),
    pytest.param(8, 1, True, 5, marks=pytest.mark.slow),  # 8 query heads: the interpreter's longest cases
    pytest.param(8, 1, False, 5, marks=pytest.mark.slow),
    (2, 2, True, 64),
    (4, 2, False, 33),
    (2, 1, True, 1),
]


@pytest.mark.parametrize("heads_q,heads_kv,causal,window", TRITON_PACKED)
def test_triton_packed(poisoned, heads_q, heads_kv, causal, window):
    lengths = [1, 7, 129, 1, 40, 0, 3]
    check_against_reference("triton", torch.bfloat16, lengths, heads_q=heads_q, heads_kv=heads_kv, head_dim=32, causal=causal, window=window, packed=True)


@pytest.mark.parametrize("head_dim,dtype", [(8, torch.bfloat16), (40, torch.float16), (64, torch.bfloat16), (80, torch.bfloat16),
                                            (96, torch.float16), (160, torch.bfloat16), (256, torch.float16)], ids=str)
def test_triton_head_dims(poisoned, head_dim, dtype):
    """Every head dim up to 256 is served, the odd ones on zero-padded columns of the next tile width."""
    check_against_reference("triton", dtype, [37, 70], heads_q=2, heads_kv=1, head_dim=head_dim, causal=True, window=50, packed=True)


def test_tile_widths_pad_to_the_next_power_of_two():
    assert [kernels.width(d) for d in (1, 32, 33, 80, 96, 128, 129, 160, 256)] == [32, 32, 64, 128, 128, 128, 256, 256, 256]


@pytest.mark.parametrize("major,table", [(8, 80), (8.6, 80), (8.9, 80), (9, 90), (10, 100), (10.3, 100), (12, 80)])
def test_launcher_picks_the_table_of_the_device(monkeypatch, major, table):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (int(major), round(major % 1 * 10)))
    monkeypatch.setattr(kernels, "interpreting", lambda: False)
    assert kernels.arch(torch.device("cuda", 0)) == table
    assert kernels.config_for("dkdv", 100, torch.device("cuda", 0)) == kernels.CONFIGS[table]["dkdv", 128]


def _shipped_tiles():
    """(arch, width) for every distinct set of (forward, dkdv, dq) tiles the tables ship."""
    seen = {}
    for arch in sorted(kernels.CONFIGS):
        for block_d in kernels.WIDTHS:
            seen.setdefault(tuple(kernels.CONFIGS[arch][kernel, block_d] for kernel in ("forward", "dkdv", "dq")), (arch, block_d))
    return list(seen.values())


SHIPPED = _shipped_tiles()


@pytest.mark.slow
@pytest.mark.parametrize("arch,block_d", SHIPPED, ids=lambda x: str(x))
def test_triton_shipped_tiles(poisoned, monkeypatch, arch, block_d):
    """Each architecture's own tile shapes (CONFIGS[arch]), not the interpreter's, on ragged packed
    documents, at a head dim that pads the width (the full width where nothing is smaller)."""
    used = []

    def shipped(kernel, head_dim, device):
        used.append(kernels.CONFIGS[arch][kernel, kernels.width(head_dim)])
        return used[-1]

    monkeypatch.setattr(kernels, "config_for", shipped)
    head_dim = block_d * 3 // 4 if block_d > 32 else block_d
    check_against_reference("triton", torch.bfloat16, [1, 100, 170], heads_q=2, heads_kv=1, head_dim=head_dim, causal=True, window=90, packed=True)
    assert used == [kernels.CONFIGS[arch][kernel, block_d] for kernel in ("forward", "dkdv", "dq")]


def test_triton_fused_qkv_views(poisoned):
    """Strided q/k/v views of one projection, as GPT makes them, need no copy and give the same answer."""
    check_against_reference("triton", torch.bfloat16, [45, 45], heads_q=4, heads_kv=1, head_dim=32, causal=True, window=None, packed=False, fused_qkv=True)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs programs one at a time: determinism shows only on a GPU")
def test_triton_backward_is_deterministic():
    q, k, v = (torch.randn(4096, h, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for h in (8, 2, 2))
    cu_seqlens = torch.tensor([0, 1000, 1001, 4096], dtype=torch.int32, device="cuda")
    grads = []
    for _ in range(2):
        out = attention(q, k, v, cu_seqlens=cu_seqlens, backend="triton")
        grads.append(torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("dtype,head_dim,words", [(torch.float32, 32, ["float32"]), (torch.bfloat16, 264, ["head dims up to 256", "264"])], ids=["float32", "head_dim_264"])
def test_triton_unsupported_inputs_say_why(dtype, head_dim, words):
    q, k, v = (torch.randn(1, 5, 2, head_dim, dtype=dtype) for _ in range(3))
    with pytest.raises(NotImplementedError, match="backend='triton'") as info:
        attention(q, k, v, backend="triton")
    assert all(word in str(info.value) for word in words)
