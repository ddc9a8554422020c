"""The contract between fastscale.ops and the backends it dispatches to (the torch references in ops/,
the Triton kernels in kernels/, the CUDA extension csrc/): what both sides import, so neither imports
the other. Torch only; no backend is imported here.

Every backend module of an op answers `unsupported(tensor) -> reason or None` for the op's leading
input (hidden for linear_cross_entropy, q for attention): None when it can serve it, else a reason
that completes the sentence "backend 'x' cannot serve these inputs: it ...". The op refuses a named
backend with that reason and lets "auto" skip it.

The two environment switches the ops read live here too, read on every call (tests flip them):
TRITON_INTERPRET=1 runs the Triton kernels in Triton's interpreter on CPU tensors (it must be set
before the kernel modules are imported: @triton.jit reads it), and FASTSCALE_DEBUG=1 makes the ops
check on the host what they otherwise check on the device (linear_cross_entropy's target range on
CUDA and under torch.compile), at the price of one device synchronization per call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """Whether the Triton kernels run in Triton's interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def debug() -> bool:
    """Whether FASTSCALE_DEBUG=1 asks for host-side checks that cost a device synchronization."""
    return os.environ.get("FASTSCALE_DEBUG") == "1"


@dataclass(frozen=True)
class LossOptions:
    """linear_cross_entropy's options, validated, as every backend receives them."""

    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None


def token_grad_scale(token_grad: torch.Tensor) -> torch.Tensor:
    """s = max|token_grad| as a 0-dim tensor (no host sync), 1 where all are 0. Backends that cast a
    logit gradient to 16 bits compute it for token_grad / s and multiply the float32 products by s,
    so its entries are O(softmax probabilities) whatever the reduction."""
    scale = token_grad.abs().amax() if token_grad.numel() else token_grad.new_ones(())
    return torch.where(scale > 0, scale, 1.0)


def normalize_token_grad(token_grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_grad / s, s) with s = token_grad_scale(token_grad)."""
    scale = token_grad_scale(token_grad)
    return token_grad / scale, scale
