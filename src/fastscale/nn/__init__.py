"""Module wrappers around fastscale.ops for users' own models."""

from .attention import Attention  # noqa: F401
from .cross_entropy import LinearCrossEntropyLoss  # noqa: F401
