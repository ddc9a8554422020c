"""`LinearCrossEntropyLoss`: the output projection and its cross-entropy in one module, around
fastscale.ops.linear_cross_entropy, so the [tokens, V] logits never exist.

Owning the weight is also what makes it work under DeepSpeed ZeRO-3: ZeRO-3 gathers a module's
parameters around that module's forward and backward, so the op sees the whole [V, d] weight and
returns a whole gradient, which DeepSpeed then reduce-scatters. For tied embeddings pass the
embedding's Parameter as `weight`: both modules then own it and ZeRO-3 gathers it for each.
"""

from __future__ import annotations

import torch
from torch import nn

from fastscale.ops import linear_cross_entropy


class LinearCrossEntropyLoss(nn.Module):
    """forward(hidden [..., d], targets [...], return_lse=False) -> loss (and the per-token logsumexp).

    The options are those of fastscale.ops.linear_cross_entropy, fixed at construction."""

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        *,
        bias: bool = False,
        weight: nn.Parameter | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        if weight is not None and tuple(getattr(weight, "ds_shape", weight.shape)) != (vocab_size, d_model):
            raise ValueError(f"weight: shape {tuple(weight.shape)}; expected ({vocab_size}, {d_model})")
        self.weight = weight if weight is not None else nn.Parameter(torch.empty(vocab_size, d_model))
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None
        self.options = dict(
            ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
            z_loss=z_loss, softcap=softcap, backend=backend,
        )
        if weight is None:
            nn.init.normal_(self.weight, std=d_model**-0.5)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, return_lse: bool = False):
        return linear_cross_entropy(hidden, self.weight, targets, bias=self.bias, return_lse=return_lse, **self.options)

    def extra_repr(self) -> str:
        return f"d_model={self.weight.shape[1]}, vocab_size={self.weight.shape[0]}, bias={self.bias is not None}"
