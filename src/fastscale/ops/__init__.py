"""Public ops: the only doors to fastscale's kernels. Each validates its inputs, picks a backend and
returns; see DESIGN.md, 'One entry per op'."""

from .attention import attention
from .cross_entropy import linear_cross_entropy

__all__ = ["attention", "linear_cross_entropy"]
