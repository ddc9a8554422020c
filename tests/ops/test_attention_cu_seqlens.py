"""cu_seqlens cannot be trusted: the op validates it on every call that reads it, and the Triton
kernels stay inside their tensors whatever it holds.

Each fault of issue 11 is reproduced for real: the offsets change behind the tensor's version counter
(a numpy array shared through torch.from_numpy, a `.data` write, a numpy view, another tensor on the
same storage), after a first call that a version-keyed cache would have remembered. The kernel-level
functions, which validate nothing, are then run on bad offsets between guard regions: NaN around the
inputs (a read outside them would reach the output) and a sentinel around every output (a write
outside them would change it).
"""

import sys

import numpy as np
import pytest
import torch

from fastscale.kernels import attention as kernels
from fastscale.ops.attention import attention

op = sys.modules["fastscale.ops.attention"]  # the module; fastscale.ops.attention is the function


def reference(q, k, v, bounds, *, causal):
    """float64 attention of every document [bounds[i], bounds[i + 1]) on its own."""
    q, k, v = (x.double() for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(group, dim=1) for x in (k, v))
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        scores = torch.einsum("ihd,jhd->hij", q[start:end], k[start:end]) * q.shape[-1] ** -0.5
        if causal:
            scores = scores.masked_fill(torch.ones(end - start, end - start, dtype=torch.bool).triu(1), float("-inf"))
        out[start:end] = torch.einsum("hij,jhd->ihd", scores.softmax(-1), v[start:end])
    return out


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the kernels write starts as NaN, so an element a kernel forgets shows up."""
    monkeypatch.setattr(kernels, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))


# ------------------------------------------------------------------------- offsets changed behind the counter


def _offsets_and_writer(bounds, way):
    """An int32 cu_seqlens holding `bounds`, and a function writing one offset through `way`, which
    leaves the tensor's version counter as it is."""
    buffer = np.array(bounds, dtype=np.int32)
    cu_seqlens = torch.from_numpy(buffer)

    def write(index, value):
        version = cu_seqlens._version
        if way == "numpy_buffer":
            buffer[index] = value
        elif way == "data":
            cu_seqlens.data[index] = value
        elif way == "numpy_view":
            cu_seqlens.numpy()[index] = value
        else:  # another tensor on the same storage
            torch.empty(0, dtype=torch.int32).set_(cu_seqlens.untyped_storage())[index] = value
        assert int(cu_seqlens[index]) == value and cu_seqlens._version == version

    return cu_seqlens, write


# a numpy array shared through torch.from_numpy, `.data`, cu_seqlens.numpy(), a tensor set_ to its storage
WAYS = ["numpy_buffer", "data", "numpy_view", "storage_view"]


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float32), ("triton", torch.bfloat16)], ids=["torch", "triton"])
@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("max_seqlen", [None, 195])
def test_offsets_changed_behind_the_version_counter_are_checked(poisoned, backend, dtype, way, max_seqlen):
    """A first call on good offsets; a bad offset written behind the counter is refused by name
    (the torch backend used to fail in split, the triton one to write outside its outputs); good
    offsets written the same way give their own answer (a remembered longest document of 140 would
    launch too few query tiles for the new one of 195: its last rows would stay NaN)."""
    q, k, v = (torch.randn(200, heads, 16, dtype=dtype) for heads in (2, 1, 1))
    cu_seqlens, write = _offsets_and_writer([0, 60, 200], way)
    attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=backend)

    write(1, 4000)
    with pytest.raises(ValueError, match=r"cu_seqlens: not sorted, cu_seqlens\[2\] = 200 < cu_seqlens\[1\] = 4000"):
        attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=backend)
    write(1, 5)
    out = attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=backend)
    want = reference(q, k, v, [0, 5, 200], causal=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)


# ------------------------------------------------------------------------- error messages

TOTAL = 10


BAD_OFFSETS = [
    # (description, cu_seqlens, max_seqlen, error type, words the message must contain)
    ("int64", torch.tensor([0, 10]), None, TypeError, ["cu_seqlens", "int64", "int32"]),
    ("2_D", torch.tensor([[0, 10]], dtype=torch.int32), None, ValueError, ["cu_seqlens", "1 dimensions", "(1, 2)"]),
    ("no_document", torch.tensor([0], dtype=torch.int32), None, ValueError, ["cu_seqlens", "(1,)", "n_docs >= 1"]),
    ("not_from_0", [1, 10], None, ValueError, ["cu_seqlens[0] = 1", "expected 0"]),
    ("negative_first", [-3, 4, 10], None, ValueError, ["cu_seqlens[0] = -3", "expected 0"]),
    ("not_sorted", [0, 6, 3, 8, 2, 10], None, ValueError, ["not sorted", "cu_seqlens[2] = 3 < cu_seqlens[1] = 6", "non-decreasing"]),
    ("past_the_end", [0, 4, 12], None, ValueError, ["cu_seqlens[2] = 12", "total_tokens = 10", "q.shape[0]"]),
    ("short_of_the_end", [0, 4, 9], None, ValueError, ["cu_seqlens[2] = 9", "total_tokens = 10"]),
    # int32 differences of these wrap around to 2**31 - 1, 2**31 - 1 and 12: all non-negative
    ("wrapping_around_int32", [0, 2**31 - 1, -2, 10], None, ValueError, ["not sorted", "cu_seqlens[2] = -2 < cu_seqlens[1] = 2147483647"]),
    ("max_seqlen_too_small", [0, 3, 10], 5, ValueError, ["max_seqlen=5", "cu_seqlens[2] - cu_seqlens[1] = 7 tokens", "max_seqlen >= 7"]),
    ("max_seqlen_zero", [0, 3, 10], 0, ValueError, ["max_seqlen=0", ">= 1"]),
    ("max_seqlen_a_float", [0, 3, 10], 7.0, TypeError, ["max_seqlen=7.0", "an int"]),
    ("max_seqlen_a_bool", [0, 3, 10], True, TypeError, ["max_seqlen=True", "an int"]),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("bounds,max_seqlen,error,words", [case[1:] for case in BAD_OFFSETS], ids=[case[0] for case in BAD_OFFSETS])
def test_bad_offsets_are_named(poisoned, backend, bounds, max_seqlen, error, words):
    """Each rule's message names the argument, the first bad offset and its value, and what was expected."""
    q, k, v = (torch.randn(TOTAL, 2, 16, dtype=torch.bfloat16) for _ in range(3))
    cu_seqlens = bounds if isinstance(bounds, torch.Tensor) else torch.tensor(bounds, dtype=torch.int32)
    with pytest.raises(error) as info:
        attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=backend)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


def test_max_seqlen_given_is_checked_and_kept():
    """A max_seqlen at least the longest document is what the backends receive; the offsets are
    still checked on CPU, where reading them costs no device synchronization."""
    q, k, v = (torch.randn(TOTAL, 2, 16) for _ in range(3))
    good = torch.tensor([0, 3, 10], dtype=torch.int32)
    assert op._check_cu_seqlens(good, TOTAL, 9) == 9
    assert op._check_cu_seqlens(good, TOTAL, None) == 7
    with pytest.raises(ValueError, match="total_tokens = 10"):
        attention(q, k, v, cu_seqlens=torch.tensor([0, 3, 11], dtype=torch.int32), max_seqlen=11)


def test_only_the_triton_backend_off_cpu_skips_reading_given_offsets():
    """The rule of ops.attention._reads_offsets: CPU offsets are always read; on a device, torch and
    flash_attn read them (a split, kernels that trust them) and triton does not (its kernels clamp)."""
    cpu = torch.zeros(3, dtype=torch.int32)
    device = torch.zeros(3, dtype=torch.int32, device="meta")  # stands for CUDA: a device that is not the host
    assert all(op._reads_offsets(cpu, backend) for backend in ("torch", "triton", "flash_attn"))
    assert op._reads_offsets(device, "torch") and op._reads_offsets(device, "flash_attn")
    assert not op._reads_offsets(device, "triton")


# ------------------------------------------------------------------------- kernels on bad offsets

GUARD = 24  # tokens of guard region on each side of every tensor
SENTINEL = -12345.0  # exactly representable in bfloat16 and float32


def _guarded(shape, dtype, fill):
    """A tensor of `shape` inside a larger allocation: GUARD rows of `fill` on each side (and the
    tensor itself filled with `fill`), returned with the whole allocation."""
    whole = torch.full((GUARD + shape[0] + GUARD, *shape[1:]), fill, dtype=dtype)
    return whole[GUARD:GUARD + shape[0]], whole


@pytest.fixture
def guarded_outputs(monkeypatch):
    """Every buffer the kernels write (out, lse, delta, dq, dk, dv) sits between SENTINEL guards;
    returns the list of whole allocations. lse and delta are [heads, total]: guarded along heads."""
    allocations = []

    def guarded_empty(shape, dtype, device):
        inner, whole = _guarded(shape, dtype, SENTINEL)
        allocations.append(whole)
        return inner

    monkeypatch.setattr(kernels, "_empty", guarded_empty)
    return allocations


def _guards_intact(whole) -> bool:
    return bool((whole[:GUARD] == SENTINEL).all() and (whole[-GUARD:] == SENTINEL).all())


def _run_kernels(q, k, v, grad, bounds, max_seqlen, causal, window):
    """kernels.forward and kernels.backward directly: no validation."""
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
    options = dict(causal=causal, window=window, scale=q.shape[-1] ** -0.5)
    out, lse = kernels.forward(q, k, v, cu_seqlens, max_seqlen, **options)
    grads = kernels.backward(grad, q, k, v, out, lse, cu_seqlens, max_seqlen=max_seqlen, **options)
    return out, lse, *grads


# bad offsets -> the offsets the kernels clamp them to (every document inside [0, total), start <= end)
CLAMPED = {
    "past_the_end": ([0, 9, 37 + 50], [0, 9, 37]),
    "before_the_start": ([-20, 9, 37], [0, 9, 37]),
    "int32_max": ([0, 2**31 - 1, 37], [0, 37, 37]),
    "int32_min": ([-(2**31), -5, 37], [0, 0, 37]),
}


@pytest.mark.parametrize("causal,window", [(True, None), (False, 7)], ids=["causal", "window"])
@pytest.mark.parametrize("bad,clamped", CLAMPED.values(), ids=CLAMPED.keys())
def test_kernels_on_bad_offsets_stay_inside_their_tensors(guarded_outputs, causal, window, bad, clamped):
    """Bad offsets compute exactly what the offsets they clamp to compute (checked against the
    float64 reference in test_attention.py), reading no NaN guard row of q, k, v, dO and writing
    no sentinel guard row of any output."""
    total, max_seqlen = 37, 28
    inputs = [_guarded((total, heads, 16), torch.bfloat16, float("nan"))[0] for heads in (2, 1, 1, 2)]
    for x in inputs:
        x.copy_(torch.randn(x.shape))
    results = _run_kernels(*inputs, bad, max_seqlen, causal, window)
    assert all(_guards_intact(whole) for whole in guarded_outputs), "a kernel wrote outside its output"
    expected = _run_kernels(*inputs, clamped, max_seqlen, causal, window)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), results, expected):
        assert torch.equal(got, want), f"{name} differs from the clamped offsets' result"
        assert torch.isfinite(got).all(), f"{name}: a guard row was read"


def test_kernels_on_overlapping_offsets_stay_inside_their_tensors(guarded_outputs):
    """Offsets out of order and out of range whose clamped documents overlap ([0, 30), [0, 37)): values are wrong, as
    validation would have refused them, but finite and written inside the outputs only."""
    total = 37
    inputs = [_guarded((total, heads, 16), torch.bfloat16, float("nan"))[0] for heads in (2, 1, 1, 2)]
    for x in inputs:
        x.copy_(torch.randn(x.shape))
    results = _run_kernels(*inputs, [0, 30, -5, 37], total, True, None)
    assert all(_guards_intact(whole) for whole in guarded_outputs), "a kernel wrote outside its output"
    for name, got in zip(("out", "lse", "dq", "dk", "dv"), results):
        assert torch.isfinite(got).all(), f"{name}: a guard row was read, or a row was never written"
