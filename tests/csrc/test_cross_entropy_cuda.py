"""The "cuda" backend of linear_cross_entropy against a float64 reference.

Without a GPU only the Python layer can run: test_python_layer_* replace fastscale._C with a CPU stand-in
that computes the kernels' contract on the memory behind the pointers it is given, which checks the
chunking, pointer offsets, arguments, the token gradients' scaling and the torch matmuls around the kernels. The kernels themselves
are checked by the tests marked requires_gpu, which skip on a machine without a CUDA device.
"""

import ctypes
import math

import pytest
import torch

from fastscale.ops import cross_entropy_cuda, cross_entropy_torch, linear_cross_entropy
from fastscale.ops.cross_entropy_torch import LossOptions

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; torch.cuda.is_available() is False")
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# Loss/lse are float32 math on the given logits; gradients are stored in the logits' dtype.
GRAD_EPS = {torch.float32: 2e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}
OPTIONS = [
    dict(),
    dict(label_smoothing=0.1),
    dict(z_loss=1e-3),
    dict(softcap=5.0),
    dict(label_smoothing=0.2, z_loss=1e-2, softcap=3.0, ignore_index=-1),
]


def reference(hidden, weight, targets, bias=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
              z_loss=0.0, softcap=None):
    """Loss and lse in float64 from the closed form, differentiable in hidden, weight and bias."""
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    return reference_from_logits(z, targets, ignore_index, reduction, label_smoothing, z_loss, softcap)


def reference_from_logits(z, targets, ignore_index=-100, reduction="none", label_smoothing=0.0, z_loss=0.0, softcap=None):
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    lse = z.logsumexp(dim=-1)
    valid = targets != ignore_index
    target_logit = z.gather(-1, targets.clamp(0, z.shape[-1] - 1)[..., None])[..., 0]
    loss = lse - (1 - label_smoothing) * target_logit - label_smoothing * z.mean(dim=-1) + z_loss * lse**2
    loss = torch.where(valid, loss, 0.0)
    if reduction == "mean":
        loss = loss.sum() / valid.sum().clamp(min=1)
    elif reduction == "sum":
        loss = loss.sum()
    return loss, lse


def random_targets(n, vocab, ignore_index, device="cpu"):
    targets = torch.randint(0, vocab, (n,), device=device)
    targets[::3] = ignore_index
    return targets


def assert_close_grads(actual, expected, dtype, name):
    eps = GRAD_EPS[dtype]
    atol = 4 * eps * expected.abs().max().item() + 1e-7
    torch.testing.assert_close(actual.double(), expected, rtol=4 * eps, atol=atol, msg=lambda m: f"{name}: {m}")


# --- the Python layer on CPU, with a stand-in for fastscale._C ----------------------------------------

def _tensor_at(pointer: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    size = numel * torch.empty(0, dtype=dtype).element_size()
    return torch.frombuffer((ctypes.c_byte * size).from_address(pointer), dtype=dtype)


class FakeExtension:
    """fastscale._C's contract (csrc/cross_entropy.h) computed with the torch reference on CPU memory."""

    FLOAT32, BFLOAT16, FLOAT16, MAX_SPLITS = 0, 1, 2, 65535

    def __init__(self):
        self.chunks = []
        self.token_grads = []

    def cross_entropy_forward(self, **kwargs):
        self._run(kwargs, token_grad=None)

    def cross_entropy_backward(self, *, token_grad, **kwargs):
        self._run(kwargs, token_grad)

    def _run(self, a, token_grad):
        rows, vocab, stride = a["rows"], a["vocab"], a["row_stride"]
        dtype = {0: torch.float32, 1: torch.bfloat16, 2: torch.float16}[a["dtype"]]
        assert 1 <= a["splits"] <= self.MAX_SPLITS and stride >= vocab and a["workspace"] != 0
        z = _tensor_at(a["logits"], (rows - 1) * stride + vocab, dtype).as_strided((rows, vocab), (stride, 1))
        targets = _tensor_at(a["targets"], rows, torch.int64)
        opts = LossOptions(a["ignore_index"], a["label_smoothing"], a["z_loss"], a["softcap"] or None)
        capped = z.to(torch.float32, copy=True)  # the forward kernel leaves the logits as they are
        if opts.softcap is not None:
            capped = opts.softcap * torch.tanh(capped / opts.softcap)
        cap_derivative = None if opts.softcap is None else 1 - (capped / opts.softcap) ** 2
        loss, lse = cross_entropy_torch._softmax_(capped, targets, targets != opts.ignore_index, opts)
        _tensor_at(a["loss"], rows, torch.float32).copy_(loss)
        _tensor_at(a["lse"], rows, torch.float32).copy_(lse)
        if token_grad is not None:
            grad = _tensor_at(token_grad, rows, torch.float32)
            self.token_grads.append(grad.clone())
            z.copy_(cross_entropy_torch._logit_grad_(capped, lse, targets, grad, opts, cap_derivative))
        self.chunks.append(rows)


@pytest.fixture
def fake_extension(monkeypatch):
    fake = FakeExtension()
    monkeypatch.setattr(cross_entropy_cuda, "_C", fake)
    monkeypatch.setattr(cross_entropy_cuda, "unsupported", lambda hidden: None)
    monkeypatch.setattr(cross_entropy_cuda, "_stream", lambda device: 0)
    monkeypatch.setattr(cross_entropy_cuda, "_vocab_splits", lambda rows, vocab, device: 2)
    monkeypatch.setattr(cross_entropy_cuda, "chunk_rows", lambda vocab, dtype: 3)  # several chunks
    return fake


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_python_layer_matches_reference(fake_extension, options, reduction, with_bias):
    # float32 only: 16-bit d weight accumulation uses addmm(out_dtype=float32), which CPU torch lacks.
    n, d, vocab = 8, 17, 37
    hidden = torch.randn(n, d, requires_grad=True)
    weight = torch.randn(vocab, d, requires_grad=True)
    bias = torch.randn(vocab, requires_grad=True) if with_bias else None
    targets = random_targets(n, vocab, options.get("ignore_index", -100))
    loss, lse = linear_cross_entropy(hidden, weight, targets, bias=bias, reduction=reduction, return_lse=True,
                                     backend="cuda", **options)
    upstream = torch.randn(n) if reduction == "none" else torch.tensor(1.7)
    loss.backward(upstream)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_loss, ref_lse = reference(ref_leaves[0], ref_leaves[1], targets, ref_leaves[2] if bias is not None else None,
                                  reduction=reduction, **options)
    ref_loss.backward(upstream.double())
    assert fake_extension.chunks and max(fake_extension.chunks) <= 3 and sum(fake_extension.chunks) % n == 0
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse.detach(), rtol=1e-5, atol=1e-5)
    for name, leaf, ref in zip(("hidden", "weight", "bias"), leaves, ref_leaves):
        assert_close_grads(leaf.grad, ref.grad, torch.float32, name)


def test_python_layer_float16_keeps_small_probabilities(fake_extension, monkeypatch):
    """See check_float16_small_probabilities. CPU torch has no float16 x float16 -> float32 matmul, so
    the products are emulated as tensor cores compute them: float32 products, float32 sums."""
    monkeypatch.setattr(cross_entropy_cuda, "chunk_rows", lambda vocab, dtype: 4096)
    monkeypatch.setattr(cross_entropy_cuda, "_add_product_", lambda acc, a, b: acc.add_(a.float() @ b.float()))
    targets = check_float16_small_probabilities("cpu")
    handed = torch.cat(fake_extension.token_grads)
    assert torch.equal(handed, (targets != -100).float()), "the kernel must get token_grad / max|token_grad|"


def check_float16_small_probabilities(device) -> torch.Tensor:
    """At 32k tokens with reduction "mean" and a loss scale, the kernel must be handed the token
    gradients divided by their maximum (so it writes O(p) into the float16 chunk rather than p / 32768,
    which float16 flushes to 0 below p ~ 2e-3), and the float32 gradients multiplied back. The classes
    that are never a target have d bias and d weight[:, 0] (hidden[:, 0] is 1) made of p ~ 1e-4..1e-6
    alone: they must match float64 within 1%. Returns the targets."""
    n, vocab, d, frequent, loss_scale = 32768, 37, 13, 4, 1024.0
    hidden = torch.randn(n, d)
    hidden[:, 0] = 1.0
    weight = torch.randn(vocab, d) * 0.5 / d**0.5
    bias = torch.cat([3.0 + 0.1 * torch.randn(frequent), torch.linspace(-4.8, -9.4, vocab - frequent)])
    targets = torch.randint(0, frequent, (n,), device=device)
    targets[::50] = -100
    leaves = [t.to(device, torch.float16).requires_grad_() for t in (hidden, weight, bias)]
    (linear_cross_entropy(leaves[0], leaves[1], targets, bias=leaves[2], backend="cuda") * loss_scale).backward()
    refs = [t.detach().double().requires_grad_() for t in leaves]
    reference(refs[0], refs[1], targets, refs[2])[0].backward()
    rare = slice(frequent, None)
    assert refs[2].grad[rare].abs().min() < 2e-6
    torch.testing.assert_close(leaves[2].grad[rare].double() / loss_scale, refs[2].grad[rare], rtol=1e-2, atol=0)
    torch.testing.assert_close(leaves[1].grad[rare, 0].double() / loss_scale, refs[1].grad[rare, 0], rtol=1e-2, atol=0)
    row_error = (leaves[0].grad.double() / loss_scale - refs[0].grad).abs().amax(dim=1)
    assert (row_error <= 1e-2 * refs[0].grad.abs().amax(dim=1)).all()
    return targets


# --- the kernels, on a GPU ---------------------------------------------------------------------------

def _extension():
    return pytest.importorskip("fastscale._C", reason="fastscale._C is not built (FASTSCALE_BUILD_CUDA=0 or no nvcc)")


def _run_kernels(ext, z, targets, opts, splits, token_grad=None):
    """Calls the extension on z (a view with unit column stride); returns (loss, lse), poisoned first."""
    rows, vocab = z.shape
    loss = torch.full((rows,), float("nan"), device=z.device)
    lse = torch.full((rows,), float("nan"), device=z.device)
    workspace = torch.full((3, splits, rows), float("nan"), device=z.device)
    args = dict(logits=z.data_ptr(), dtype=DTYPE_CODES[z.dtype], rows=rows, vocab=vocab, row_stride=z.stride(0),
                targets=targets.data_ptr(), loss=loss.data_ptr(), lse=lse.data_ptr(), workspace=workspace.data_ptr(),
                splits=splits, ignore_index=opts.ignore_index, label_smoothing=opts.label_smoothing,
                z_loss=opts.z_loss, softcap=opts.softcap or 0.0, device=z.device.index,
                stream=torch.cuda.current_stream(z.device).cuda_stream)
    if token_grad is None:
        ext.cross_entropy_forward(**args)
    else:
        ext.cross_entropy_backward(token_grad=token_grad.data_ptr(), **args)
    torch.cuda.synchronize(z.device)
    return loss, lse


@requires_gpu
@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_kernels_match_float64(dtype, options):
    for vocab in (1, 3, 257, 50257):
        for splits in (1, 3, 64):
            for aligned in (True, False):
                check_kernels(dtype, vocab, splits, aligned, options)


def check_kernels(dtype, vocab, splits, aligned, options):
    ext = _extension()
    # Rows 16-byte aligned (a row stride of a multiple of 8 elements) take the vector path; offset 1
    # misaligns every row start and takes the scalar path. The padding shows stray writes.
    rows, offset, row_stride = 7, 0 if aligned else 1, (vocab + 8) // 8 * 8 + 8
    opts = LossOptions(**options)
    buffer = torch.randn(rows, row_stride, device="cuda").mul_(4).to(dtype)
    z = buffer[:, offset:offset + vocab]
    padding = buffer.clone()
    targets = random_targets(rows, vocab, opts.ignore_index, device="cuda")
    # As linear_cross_entropy passes it: zero on ignored rows, whose loss does not depend on the logits.
    token_grad = torch.randn(rows, device="cuda") * (targets != opts.ignore_index)
    kw = dict(ignore_index=opts.ignore_index, label_smoothing=opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap)
    logits = z.double().requires_grad_()
    ref_loss, ref_lse = reference_from_logits(logits, targets, **kw)
    ref_loss.backward(token_grad.double())

    loss, lse = _run_kernels(ext, z, targets, opts, splits)
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse.detach(), rtol=1e-5, atol=1e-5)

    loss, lse = _run_kernels(ext, z, targets, opts, splits, token_grad=token_grad)
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-5)
    assert_close_grads(z, logits.grad, dtype, "d logits")
    outside = torch.ones_like(buffer, dtype=torch.bool)
    outside[:, offset:offset + vocab] = False
    assert torch.equal(buffer[outside], padding[outside]), "the kernels wrote outside the logits"


@requires_gpu
def test_backend_float16_keeps_small_probabilities():
    _extension()
    check_float16_small_probabilities("cuda")


@requires_gpu
def test_kernels_stay_finite_on_large_logits():
    ext = _extension()
    z = torch.randn(5, 1000, device="cuda").mul_(1e4)
    targets = torch.randint(0, 1000, (5,), device="cuda")
    opts = LossOptions(z_loss=1e-4)
    ref_loss, ref_lse = reference_from_logits(z.double(), targets, z_loss=1e-4)
    loss, lse = _run_kernels(ext, z, targets, opts, splits=3, token_grad=torch.ones(5, device="cuda"))
    assert torch.isfinite(loss).all() and torch.isfinite(lse).all() and torch.isfinite(z).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-2)


@requires_gpu
def test_kernels_index_past_2_to_the_31():
    ext = _extension()
    vocab = 131072
    rows = 2**31 // vocab + 2  # rows * vocab > 2^31 elements (4 GiB of bfloat16)
    z = torch.empty(rows, vocab, device="cuda", dtype=torch.bfloat16).normal_()
    targets = torch.randint(0, vocab, (rows,), device="cuda")
    loss, lse = _run_kernels(ext, z, targets, LossOptions(), splits=4)
    last = z[-2:].double()
    ref_loss, ref_lse = reference_from_logits(last, targets[-2:])
    torch.testing.assert_close(lse[-2:].double(), ref_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss[-2:].double(), ref_loss, rtol=1e-5, atol=1e-5)


@requires_gpu
@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_backend_matches_float64(dtype, reduction, options):
    for shape in ((1, 1, 1), (7, 17, 3), (129, 64, 257), (7, 64, 50257)):
        check_backend(dtype, shape, reduction, options)


def check_backend(dtype, shape, reduction, options):
    _extension()
    n, d, vocab = shape
    # 16-bit inputs: the reference starts from the same rounded inputs; what remains is the rounding of
    # the logits chunk and of the gradients to the input dtype.
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    hidden = (torch.randn(n, d, device="cuda") / math.sqrt(d)).to(dtype).requires_grad_()
    weight = torch.randn(vocab, d, device="cuda").to(dtype).requires_grad_()
    bias = torch.randn(vocab, device="cuda").to(dtype).requires_grad_()
    targets = random_targets(n, vocab, options.get("ignore_index", -100), device="cuda")
    loss, lse = linear_cross_entropy(hidden, weight, targets, bias=bias, reduction=reduction, return_lse=True,
                                     backend="cuda", **options)
    upstream = torch.randn(n, device="cuda") if reduction == "none" else torch.tensor(1.3, device="cuda")
    loss.backward(upstream)
    refs = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    ref_loss, ref_lse = reference(*refs[:2], targets, refs[2], reduction=reduction, **options)
    ref_loss.backward(upstream.double())
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), ref_lse.detach(), rtol=tol, atol=tol)
    for name, leaf, ref in zip(("hidden", "weight", "bias"), (hidden, weight, bias), refs):
        scale = ref.grad.abs().max().item() + 1e-6
        torch.testing.assert_close(leaf.grad.double(), ref.grad, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")
