"""The doctor's numerics self-check: each backend of each op on small odd shapes against a float64
torch reference written from the definitions, with the test suite's criteria (flash-attn's rule):

- float32 inputs: the largest error is at most FP32_ATOL times the largest reference value (at least 1);
- 16-bit inputs: the largest error is at most 2x the error of the same plain math done eagerly in the
  input dtype, plus slack for the final rounding (cross-entropy: one rounding of the largest reference
  value; attention: SLACK[dtype] plus half a rounding, as tests/ops/test_attention.py).

Outputs and gradients (for a random upstream gradient) are checked. A check's result says "passed",
"FAILED" (with the worst tensor's error and bound), "unsupported" (the op refused the inputs with
NotImplementedError; its message is kept) or "error" (any other exception).

`python -m fastscale.doctor.numerics OUT.json DEVICE QUICK OP=BACKEND...` runs the checks under
Triton's interpreter and writes them to OUT.json: the doctor runs it with TRITON_INTERPRET=1 on a
machine without a GPU, because the interpreter must be chosen before Triton kernels are defined and
must not leak into the rest of the process.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from fastscale.io import write_json
from fastscale.ops import attention, linear_cross_entropy

FP32_ATOL = 2e-5
ATTENTION_SLACK = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}
CROSS_ENTROPY_OPTIONS = dict(label_smoothing=0.1, z_loss=1e-3, softcap=3.0, ignore_index=-100)
SEED = 0  # fixed, so that a user's report can be reproduced; doctor.json records it


@dataclass
class CheckResult:
    op: str
    backend: str
    device: str
    dtype: str
    shape: str
    status: str
    worst: str = ""  # the tensor with the largest error / bound ratio
    error: float = 0.0
    bound: float = 0.0
    reason: str = ""
    errors: dict = field(default_factory=dict)  # tensor name -> [error, bound]


# ------------------------------------------------------------------------------------ tolerances


def max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double().cpu() - want.double().cpu()).abs().max().item() if want.numel() else 0.0


def cross_entropy_bounds(reference, plain, dtype) -> list[float]:
    scales = [max(1.0, r.abs().max().item()) if r.numel() else 0.0 for r in reference]
    if dtype == torch.float32:
        return [FP32_ATOL * s for s in scales]
    eps = torch.finfo(dtype).eps
    return [2 * max_error(p, r) + eps * s for p, r, s in zip(plain, reference, scales)]


def attention_bounds(reference, plain, dtype) -> list[float]:
    eps = torch.finfo(dtype).eps
    return [2 * max_error(p, r) + ATTENTION_SLACK[dtype] + 0.5 * eps * r.abs().max().item() for p, r in zip(plain, reference)]


def verdict(op, backend, device, dtype, shape, names, ours, reference, bounds) -> CheckResult:
    errors = {n: [max_error(o, r), b] for n, o, r, b in zip(names, ours, reference, bounds)}
    finite = all(torch.isfinite(o).all().item() for o in ours)
    worst = max(errors, key=lambda n: errors[n][0] / errors[n][1] if errors[n][1] else float("inf"))
    error, bound = errors[worst]
    status = "passed" if finite and all(e <= b for e, b in errors.values()) else "FAILED"
    reason = "" if finite else "non-finite values in the output or gradients"
    return CheckResult(op, backend, device, str(dtype).removeprefix("torch."), shape, status, worst, error, bound, reason, errors)


# ------------------------------------------------------------------------------------ cross-entropy


def cross_entropy_reference(hidden, weight, bias, targets, *, math_dtype, reduction, ignore_index, label_smoothing, z_loss, softcap):
    """Losses (per token, or their mean over valid tokens) and logsumexps from the definitions on the
    full logits: F.linear in the inputs' dtype, the rest in math_dtype."""
    z = F.linear(hidden, weight, bias).to(math_dtype)
    z = softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(z, dim=-1)
    log_probs = z - lse[:, None]
    valid = targets != ignore_index
    nll = -log_probs.gather(-1, torch.where(valid, targets, 0)[:, None])[:, 0]
    loss = torch.where(valid, (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=-1) + z_loss * lse**2, 0.0)
    if reduction == "mean":
        loss = loss.sum() / valid.sum().clamp(min=1)
    return loss, lse


def _loss_and_gradients(fn, inputs, targets, upstream):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    loss, lse = fn(*leaves, targets)
    grads = torch.autograd.grad(loss, leaves, upstream.to(device=loss.device, dtype=loss.dtype))
    return [loss.detach(), lse.detach(), *grads]


def check_cross_entropy(backend: str, device: str, dtype: torch.dtype, tokens: int, vocab: int, d: int, reduction: str) -> CheckResult:
    hidden = (torch.randn(tokens, d) / d**0.25).to(dtype)
    weight = (torch.randn(vocab, d) / d**0.25).to(dtype)
    bias = torch.randn(vocab).to(dtype)
    targets = torch.randint(0, vocab, (tokens,))
    targets[torch.rand(tokens) < 0.2] = CROSS_ENTROPY_OPTIONS["ignore_index"]
    upstream = torch.randn(tokens if reduction == "none" else (), dtype=torch.float64)
    shape = f"tokens {tokens}, V {vocab}, d {d}, reduction {reduction}"
    on_device = [x.to(device) for x in (hidden, weight, bias)]

    def ours(h, w, b, t):
        return linear_cross_entropy(h, w, t, bias=b, reduction=reduction, return_lse=True, backend=backend, **CROSS_ENTROPY_OPTIONS)

    def definition(math_dtype):
        return lambda h, w, b, t: cross_entropy_reference(h, w, b, t, math_dtype=math_dtype, reduction=reduction, **CROSS_ENTROPY_OPTIONS)

    try:
        got = _loss_and_gradients(ours, on_device, targets.to(device), upstream)
    except NotImplementedError as exc:
        return CheckResult("linear_cross_entropy", backend, device, str(dtype).removeprefix("torch."), shape, "unsupported", reason=str(exc))
    except Exception as exc:  # a crash of the backend is its result, reported like a wrong number
        return CheckResult("linear_cross_entropy", backend, device, str(dtype).removeprefix("torch."), shape, "error", reason=f"{type(exc).__name__}: {exc}")
    reference = _loss_and_gradients(definition(torch.float64), [x.double() for x in (hidden, weight, bias)], targets, upstream)
    plain = _loss_and_gradients(definition(torch.float32), on_device, targets.to(device), upstream)
    bounds = cross_entropy_bounds(reference, plain, dtype)
    return verdict("linear_cross_entropy", backend, device, dtype, shape, ["loss", "lse", "d_hidden", "d_weight", "d_bias"], got, reference, bounds)


# ------------------------------------------------------------------------------------ attention


def attention_reference(q, k, v, doc, *, causal: bool, scale: float, dtype):
    """Packed q [N, Hq, D], k/v [N, Hkv, D]: an explicit masked softmax, every operation in dtype."""
    q, k, v = (x.to(dtype) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(group, dim=1) for x in (k, v))
    visible = doc[:, None] == doc[None, :]
    if causal:
        visible &= torch.ones_like(visible).tril()
    scores = torch.einsum("ihd,jhd->hij", q, k) * scale
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.einsum("hij,jhd->ihd", probs, v)


def check_attention(backend: str, device: str, dtype: torch.dtype, lengths: list[int], heads_q: int, heads_kv: int, head_dim: int) -> CheckResult:
    n = sum(lengths)
    q, k, v = (torch.randn(n, h, head_dim).to(dtype) for h in (heads_q, heads_kv, heads_kv))
    upstream = torch.randn(n, heads_q, head_dim).to(dtype)
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    scale = head_dim**-0.5
    shape = f"documents {lengths}, heads {heads_q}/{heads_kv}, head dim {head_dim}, causal"
    name = str(dtype).removeprefix("torch.")

    def run(fn, inputs, on):
        leaves = [x.to(on, copy=True).requires_grad_() for x in inputs]
        out = fn(*leaves)
        out.backward(upstream.to(device=on, dtype=out.dtype))
        return [out.detach(), *(x.grad for x in leaves)]

    try:
        got = run(lambda *x: attention(*x, causal=True, cu_seqlens=cu_seqlens, backend=backend), (q, k, v), device)
    except NotImplementedError as exc:
        return CheckResult("attention", backend, device, name, shape, "unsupported", reason=str(exc))
    except Exception as exc:  # a crash of the backend is its result
        return CheckResult("attention", backend, device, name, shape, "error", reason=f"{type(exc).__name__}: {exc}")
    reference = run(lambda *x: attention_reference(*x, doc, causal=True, scale=scale, dtype=torch.float64), (q, k, v), "cpu")
    plain = run(lambda *x: attention_reference(*x, doc.to(device), causal=True, scale=scale, dtype=dtype), (q, k, v), device)
    return verdict("attention", backend, device, dtype, shape, ["out", "dq", "dk", "dv"], got, reference, attention_bounds(reference, plain, dtype))


# ------------------------------------------------------------------------------------ the plan


def planned_checks(backends: dict[str, list[str]], device: str, quick: bool, interpreted: bool):
    """(function, arguments) of every check: op -> backends to check on `device`. Shapes are small
    and odd so that tile edges and masks are exercised; the interpreter gets the smallest ones."""
    gpu = device.startswith("cuda")
    # The mean is the training path (the gradient is computed in the forward); "none" checks each token.
    ce_shapes = [(37, 253, 29, "mean")] if quick or interpreted else [(37, 253, 29, "mean"), (129, 4099, 96, "none")]
    attention_shapes = [([5, 19, 1], 4, 2, 32)] if quick or interpreted else [([5, 19, 1], 4, 2, 32), ([70, 129], 6, 3, 64)]
    for backend in backends.get("linear_cross_entropy", []):
        for dtype in _cross_entropy_dtypes(gpu, interpreted):
            for shape in ce_shapes:
                yield check_cross_entropy, (backend, device, dtype, *shape)
    for backend in backends.get("attention", []):
        for dtype in _attention_dtypes(backend, gpu, interpreted):
            for shape in attention_shapes:
                yield check_attention, (backend, device, dtype, *shape)


def _cross_entropy_dtypes(gpu: bool, interpreted: bool) -> list[torch.dtype]:
    # Triton 3.9's interpreter multiplies bfloat16 bit patterns in tl.dot (triton issue 11584):
    # interpreted checks stay in float32 and float16, which it computes correctly.
    if interpreted:
        return [torch.float32, torch.float16]
    return [torch.float32, torch.bfloat16, torch.float16] if gpu else [torch.float32, torch.bfloat16]


def _attention_dtypes(backend: str, gpu: bool, interpreted: bool) -> list[torch.dtype]:
    if interpreted:  # the kernels take 16-bit inputs only; bfloat16 as above
        return [torch.float16]
    if backend == "torch":
        return [torch.float32, torch.bfloat16]
    return [torch.bfloat16, torch.float16]


def run_checks(backends: dict[str, list[str]], device: str, *, quick: bool, interpreted: bool = False) -> list[CheckResult]:
    torch.manual_seed(SEED)
    return [fn(*args) for fn, args in planned_checks(backends, device, quick, interpreted)]


def main(argv: list[str]) -> int:
    """OUT.json DEVICE QUICK(0/1) OP=BACKEND...: the interpreted checks as a JSON list."""
    out, device, quick, *pairs = argv
    backends: dict[str, list[str]] = {}
    for pair in pairs:
        op, backend = pair.split("=")
        backends.setdefault(op, []).append(backend)
    results = run_checks(backends, device, quick=quick == "1", interpreted=True)
    write_json(out, [asdict(replace(r, device=f"{device} (Triton interpreter)")) for r in results])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
