"""linear_cross_entropy's float16 gradients at training scale, and its inference path.

Underflow (issue 10): with reduction "mean" over 32k tokens each token's upstream gradient is 1/32768.
A backend that multiplies the logit gradient p - y by it before casting to 16 bits for a matmul flushes
every p below ~2e-3 to zero (float16's smallest subnormal is 6e-8), and a loss scale applied afterwards
cannot bring it back. Here most softmax probabilities are 1e-4..1e-6: 4 frequent classes take the
targets and 33 classes are never a target, so their weight and bias gradient rows are made of small
p alone. Every gradient entry must match float64 (on the same float16 inputs) within what float16
rounding of the logits, of the logit gradients and of the result can cost (float16_error_bounds),
and the never-seen classes' rows must not be flushed to zero, with and without a loss scale.

Inference: under no_grad and inference_mode the op must not compute gradients nor allocate a
gradient buffer, even for parameters that require grad.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from fastscale.backends import normalize_token_grad
from fastscale.ops import linear_cross_entropy

# (backend, reduction, loss scale). The op's two paths (gradients in the forward for "mean", in the
# backward for "none") with and without a loss scale, on the torch backend; the Triton interpreter
# takes ~25 s of CPU per case at 32k tokens, so it runs one case per path, both of which hand the backend
# token gradients of 1/32k.
CASES = [("torch", reduction, scale) for reduction in ("mean", "none") for scale in (1.0, 1024.0)]
CASES += [pytest.param("triton", "mean", 1024.0, marks=pytest.mark.slow), pytest.param("triton", "none", 1.0, marks=pytest.mark.slow)]  # 32768 tokens in the interpreter
TOKENS, VOCAB, D = 32768, 37, 13
FREQUENT = 4  # classes 0..3 are the targets; 4..36 are never seen
U16 = 2.0**-11  # float16's unit roundoff


def training_inputs():
    """Float16 hidden, weight, bias, targets whose softmax puts most classes at p ~ 1e-4..1e-6.

    The bias is a per-class base logit: +3 for the frequent classes, -4.8 .. -9.4 for the others
    (log p = base - lse with lse ~ 4.4); hidden @ weight.T adds a token-dependent part of standard
    deviation ~0.5. Feature 0 of every token is 1, so column 0 of d weight is a sum of same-signed
    terms (the other columns mostly cancel), as d bias is."""
    hidden = torch.randn(TOKENS, D)
    hidden[:, 0] = 1.0
    weight = torch.randn(VOCAB, D) * 0.5 / D**0.5
    bias = torch.cat([3.0 + 0.1 * torch.randn(FREQUENT), torch.linspace(-4.8, -9.4, VOCAB - FREQUENT)])
    targets = torch.randint(0, FREQUENT, (TOKENS,))
    targets[torch.rand(TOKENS) < 1 / 64] = -100
    return hidden.half(), weight.half(), bias.half(), targets


def gradients(fn, hidden, weight, bias, targets, reduction, loss_scale, dtype=None, **kwargs):
    """Gradients of loss_scale * (mean loss over non-ignored tokens) w.r.t. hidden, weight, bias, as
    the caller's dtype gives them; with reduction "none" the mean is taken by the caller."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (hidden, weight, bias)]
    loss = fn(leaves[0], leaves[1], targets, bias=leaves[2], reduction=reduction, **kwargs)
    if reduction == "none":
        loss = loss.sum() / (targets != -100).sum()
    (loss * loss_scale).backward()
    return [leaf.grad for leaf in leaves]


def full_logits_loss(hidden, weight, targets, *, bias, reduction):
    return F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction=reduction)


def float16_spacing(x: torch.Tensor) -> torch.Tensor:
    """The distance between adjacent float16 numbers at |x| (2^-24 in the subnormal range)."""
    exponent = torch.floor(torch.log2(x.abs().clamp(min=2.0**-14)))
    return torch.exp2(exponent - 10)


def float16_error_bounds(hidden, weight, bias, targets):
    """Per entry of d hidden, d weight, d bias of the mean loss: what the float16 roundings before the
    output's own may cost, to first order, doubled (for second-order terms and float32 accumulation).

    A float16 pipeline rounds each logit z (by <= U16 |z|, so lse moves by <= U16 max|z| and each p
    by <= 2 U16 max|z| p) and each logit gradient (p - y) / s that it feeds a matmul (<= U16 |p - y|);
    these add up over the terms of each gradient entry."""
    h, w, b = hidden.double(), weight.double(), bias.double()
    z = h @ w.T + b
    p = torch.softmax(z, dim=-1)
    valid = targets != -100
    y = F.one_hot(targets.clamp(min=0), VOCAB).double()
    token_grad = valid.double() / valid.sum()
    per_logit = (2 * U16 * z.abs().amax(dim=1, keepdim=True) * p + U16 * (p - y).abs()) * token_grad[:, None]
    first_order = (per_logit @ w.abs(), per_logit.T @ h.abs(), per_logit.sum(dim=0))
    return [2 * bound for bound in first_order]


def check_within(name: str, ours: torch.Tensor, expected: torch.Tensor, allowed: torch.Tensor) -> None:
    assert ours.dtype == torch.float16
    assert torch.isfinite(ours).all(), f"{name}: non-finite entries"
    excess = (ours.double() - expected).abs() / allowed
    worst = excess.argmax().item()
    assert excess.max() <= 1, (
        f"{name}: entry {worst} is {ours.flatten()[worst].item():.6g}, float64 gives {expected.flatten()[worst].item():.6g}; "
        f"{excess.max().item():.3g}x the float16 rounding bound {allowed.flatten()[worst].item():.3g}"
    )


@pytest.fixture(scope="module")
def inputs_and_reference():
    torch.manual_seed(10)
    inputs = training_inputs()
    expected = gradients(full_logits_loss, *inputs, "mean", 1.0, dtype=torch.float64)
    return inputs, expected, float16_error_bounds(*inputs)


def test_inputs_put_most_probabilities_at_1e4_to_1e6(inputs_and_reference):
    (hidden, weight, bias, targets), _, _ = inputs_and_reference
    p = torch.softmax(hidden.double() @ weight.double().T + bias.double(), dim=-1)
    rare = p[:, FREQUENT:]
    assert ((rare > 5e-7) & (rare < 3e-4)).double().mean() > 0.95
    assert rare.median() < 1e-4 and rare.min() < 1e-6
    assert not torch.isin(targets, torch.arange(FREQUENT, VOCAB)).any()


@pytest.mark.parametrize("backend, reduction, loss_scale", CASES)
def test_float16_gradients_of_small_probabilities_survive(inputs_and_reference, backend, reduction, loss_scale):
    inputs, expected, bounds = inputs_and_reference
    ours = gradients(linear_cross_entropy, *inputs, reduction, loss_scale, backend=backend)
    for name, grad, ref, bound in zip(("d_hidden", "d_weight", "d_bias"), ours, expected, bounds):
        # Plus the rounding of the float16 output, a whole spacing (half would be exact rounding).
        check_within(name, grad, loss_scale * ref, loss_scale * bound + float16_spacing(loss_scale * ref))
    # The never-seen classes: every entry of their rows that float16 can hold is held, none flushed to 0.
    d_weight, d_bias = ours[1][FREQUENT:], ours[2][FREQUENT:]
    representable = (loss_scale * expected[1][FREQUENT:]).abs() > 2.0**-23
    assert representable.double().mean() > (0.8 if loss_scale == 1 else 0.99)
    assert (d_weight[representable] != 0).all(), f"{(d_weight[representable] == 0).sum().item()} entries flushed to 0"
    assert (d_bias != 0).all()
    assert expected[2][FREQUENT:].abs().min() < 2e-6  # down to p ~ 1e-6


def test_normalize_token_grad():
    token_grad = torch.tensor([0.0, -3.0, 1.5, 0.0])
    normalized, scale = normalize_token_grad(token_grad)
    assert scale.dim() == 0 and scale.item() == 3.0
    assert torch.equal(normalized, torch.tensor([0.0, -1.0, 0.5, 0.0]))
    for zeros in (torch.zeros(3), torch.zeros(0)):
        normalized, scale = normalize_token_grad(zeros)
        assert scale.item() == 1.0 and torch.equal(normalized, zeros)


# --- inference: no gradient work, no gradient buffer -------------------------------------------------

INFERENCE_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def counted_backend(monkeypatch, backend: str) -> dict[str, int]:
    """Counts the calls of the backend module's forward and gradients."""
    module = importlib.import_module({"torch": "fastscale.ops.cross_entropy_torch", "triton": "fastscale.kernels.cross_entropy"}[backend])
    calls = {"forward": 0, "gradients": 0}
    for name in calls:
        def counted(*args, _original=getattr(module, name), _name=name):
            calls[_name] += 1
            return _original(*args)
        monkeypatch.setattr(module, name, counted)
    return calls


def parameters_requiring_grad(tokens=16, vocab=64, d=32):
    """hidden, weight, bias requiring grad, and targets: weight's [V, d] is the largest tensor around
    (a logits chunk is at most tokens x V)."""
    hidden = torch.randn(tokens, d, requires_grad=True)
    weight = torch.randn(vocab, d, requires_grad=True)
    bias = torch.randn(vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    targets[::5] = -100
    return hidden, weight, bias, targets


@pytest.mark.parametrize("mode", INFERENCE_MODES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_inference_computes_no_gradients(monkeypatch, backend, reduction, mode):
    hidden, weight, bias, targets = parameters_requiring_grad()
    calls = counted_backend(monkeypatch, backend)
    with INFERENCE_MODES[mode]():
        loss = linear_cross_entropy(hidden, weight, targets, bias=bias, reduction=reduction, backend=backend)
    assert calls == {"forward": 1, "gradients": 0}
    assert not loss.requires_grad and loss.grad_fn is None
    expected = full_logits_loss(hidden.detach().double(), weight.detach().double(), targets, bias=bias.detach().double(), reduction=reduction)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", INFERENCE_MODES)
def test_inference_allocates_no_gradient_buffer(mode, recorder):
    hidden, weight, bias, targets = parameters_requiring_grad()
    with INFERENCE_MODES[mode](), recorder:
        linear_cross_entropy(hidden, weight, targets, bias=bias, backend="torch")
    weight_bytes = weight.numel() * weight.element_size()
    assert max(recorder.sizes) < weight_bytes, f"a buffer of {max(recorder.sizes)} bytes (d weight has {weight_bytes})"


def test_training_still_computes_gradients(monkeypatch, recorder):
    """The same call with grad enabled: the recorder sees the [V, d] weight gradient, and it is right."""
    hidden, weight, bias, targets = parameters_requiring_grad()
    calls = counted_backend(monkeypatch, "torch")
    with recorder:
        loss = linear_cross_entropy(hidden, weight, targets, bias=bias, backend="torch")
    assert calls == {"forward": 0, "gradients": 1}
    assert max(recorder.sizes) >= weight.numel() * weight.element_size()
    loss.backward()
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    full_logits_loss(leaves[0], leaves[1], targets, bias=leaves[2], reduction="mean").backward()
    for ours, ref in zip((hidden, weight, bias), leaves):
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_take_the_forward_path(monkeypatch):
    hidden, weight, bias, targets = (t.detach() if t.is_floating_point() else t for t in parameters_requiring_grad())
    calls = counted_backend(monkeypatch, "torch")
    linear_cross_entropy(hidden, weight, targets, bias=bias, backend="torch")
    assert calls == {"forward": 1, "gradients": 0}
