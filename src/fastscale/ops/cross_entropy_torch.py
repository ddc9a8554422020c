"""The PyTorch reference of linear_cross_entropy: the CPU backend and the tests' readable twin.

Per token t with logits z = hidden @ weight.T + bias (then softcap * tanh(z / softcap) if softcap):
    lse  = logsumexp(z)
    loss = lse - (1 - eps) * z[target] - eps * mean(z) + z_loss * lse^2      (0 where ignored)
and the gradient with respect to z, for an upstream per-token gradient g:
    dz = g * ((1 + 2 * z_loss * lse) * softmax(z) - (1 - eps) * onehot(target) - eps / V)
times (1 - (z / softcap)^2) under a softcap. eps is label_smoothing, as in F.cross_entropy.

The work is chunked over tokens, so peak extra memory is one [chunk, V] float32 buffer (two with a
softcap), never the [tokens, V] logits. Matmuls run in the input dtype; softmax, losses and the weight and bias
gradients accumulate in float32 (float64 for float64 inputs), and all gradients are returned in that dtype.

The logit gradient is computed for g / s with s = max|g| and cast to the input dtype for the d hidden
matmul; s multiplies the products afterwards. Its entries are then O(softmax probabilities) rather than
O(g * p): with reduction "mean" over 32k tokens, g = 1/32768 would flush every p below ~2e-3 to zero in
float16 (whose smallest subnormal is 6e-8) before any loss scale could lift it.
"""

from __future__ import annotations

import torch

from fastscale.backends import LossOptions, normalize_token_grad

# One [chunk, V] float32 logits buffer. On a 2-core CPU at V=128k, d=1024, 32 MB chunks (64 rows)
# ran 1.3x slower than eager PyTorch (small-M matmuls re-read the weight per chunk); 128 MB ran
# at eager speed with 1/20 of its extra memory.
CHUNK_BYTES = 128 * 2**20


def unsupported(hidden: torch.Tensor) -> str | None:
    """The reference serves every dtype the op accepts, on every device."""
    return None


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(vocab: int, dtype: torch.dtype) -> int:
    return max(1, CHUNK_BYTES // (vocab * accumulation_dtype(dtype).itemsize))


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, opts: LossOptions) -> torch.Tensor:
    z = (hidden @ weight.T).to(accumulation_dtype(hidden.dtype))
    if bias is not None:
        z += bias
    if opts.softcap is not None:
        z.div_(opts.softcap).tanh_().mul_(opts.softcap)
    return z


def _softmax_(z: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, opts: LossOptions):
    """Per-token loss and logsumexp of a chunk of (capped) logits, overwriting z with softmax(z):
    in place, so a chunk costs one [rows, V] buffer, and the gradient reuses the exponentials."""
    target_logit = z.gather(1, targets.clamp(0, z.shape[1] - 1)[:, None])[:, 0]
    mean_logit = z.mean(dim=-1) if opts.label_smoothing else None
    row_max = z.amax(dim=-1, keepdim=True)
    sum_exp = z.sub_(row_max).exp_().sum(dim=-1, keepdim=True)
    z.div_(sum_exp)
    lse = (row_max + sum_exp.log())[:, 0]
    loss = lse - (1 - opts.label_smoothing) * target_logit
    if opts.label_smoothing:
        loss -= opts.label_smoothing * mean_logit
    if opts.z_loss:
        loss += opts.z_loss * lse.square()
    return torch.where(valid, loss, 0.0), lse


def _logit_grad_(p: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, token_grad: torch.Tensor, opts: LossOptions,
                 cap_derivative: torch.Tensor | None) -> torch.Tensor:
    """Overwrites the chunk of probabilities p with d loss / d (uncapped logits)."""
    vocab = p.shape[1]
    if opts.z_loss:
        p.mul_((1 + 2 * opts.z_loss * lse)[:, None])
    rows = torch.arange(len(targets), device=p.device)
    p[rows, targets.clamp(0, vocab - 1)] -= 1 - opts.label_smoothing
    if opts.label_smoothing:
        p.sub_(opts.label_smoothing / vocab)
    p.mul_(token_grad[:, None])  # ignored tokens have token_grad 0
    if cap_derivative is not None:
        p.mul_(cap_derivative)
    return p


def _chunks(n_tokens: int, rows: int):
    return (slice(start, min(start + rows, n_tokens)) for start in range(0, n_tokens, rows))


def forward(hidden, weight, bias, targets, opts: LossOptions):
    """Per-token losses and logsumexps of 2-D hidden [N, d] against targets [N]."""
    acc = accumulation_dtype(hidden.dtype)
    n = hidden.shape[0]
    loss = torch.empty(n, dtype=acc, device=hidden.device)
    lse = torch.empty(n, dtype=acc, device=hidden.device)
    valid = targets != opts.ignore_index
    for s in _chunks(n, chunk_rows(weight.shape[0], hidden.dtype)):
        loss[s], lse[s] = _softmax_(_logits(hidden[s], weight, bias, opts), targets[s], valid[s], opts)
    return loss, lse


def gradients(hidden, weight, bias, targets, token_grad, opts: LossOptions):
    """Gradients (d hidden, d weight, d bias or None) of sum(token_grad * loss) in the accumulation
    dtype, with the per-token losses and logsumexps computed on the way: one pass over the logits,
    chunk by chunk."""
    acc = accumulation_dtype(hidden.dtype)
    n = hidden.shape[0]
    valid = targets != opts.ignore_index
    loss = torch.empty(n, dtype=acc, device=hidden.device)
    lse_out = torch.empty(n, dtype=acc, device=hidden.device)
    d_hidden = torch.empty(hidden.shape, dtype=acc, device=hidden.device)
    d_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
    d_bias = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if bias is not None else None
    token_grad, scale = normalize_token_grad(token_grad.to(acc))
    for s in _chunks(n, chunk_rows(weight.shape[0], hidden.dtype)):
        z = _logits(hidden[s], weight, bias, opts)
        cap_derivative = None if opts.softcap is None else (z / opts.softcap).square_().neg_().add_(1)
        loss[s], lse_out[s] = _softmax_(z, targets[s], valid[s], opts)
        dz = _logit_grad_(z, lse_out[s], targets[s], token_grad[s], opts, cap_derivative)
        d_hidden[s] = dz.to(hidden.dtype) @ weight
        d_weight.addmm_(dz.T, hidden[s].to(acc))
        if d_bias is not None:
            d_bias += dz.sum(dim=0)
    for grad in (d_hidden, d_weight, d_bias):
        if grad is not None:
            grad.mul_(scale)
    return d_hidden, d_weight, d_bias, loss, lse_out
