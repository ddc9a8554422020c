"""Backend choice, one way for both ops. Each op names its backends as {name: loader}, a loader being
a function that imports the backend's module with an import statement (torch.compile traces those,
not importlib, and the module is only imported when first used); every module answers `unsupported(tensor) -> reason or None` (fastscale.backends has the contract). A named
backend serves the inputs or is refused with its reason; "auto" runs the torch reference off CUDA and,
on CUDA, the available backend that the op's estimate (ops/_auto.py) ranks fastest.

The choice reads shapes, dtypes and devices only, so under torch.compile it is made once, at trace time.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Callable

import torch

from ._checks import check_choice

log = logging.getLogger(__name__)


Backends = dict[str, Callable[[], ModuleType]]


def unsupported(backends: Backends, name: str, tensor: torch.Tensor) -> str | None:
    return backends[name]().unsupported(tensor)


def choose(op: str, backend: str, backends: Backends, tensor: torch.Tensor,
           fastest: Callable[[tuple[str, ...]], str]) -> str:
    """The name of the backend that runs `op` on inputs led by `tensor`. `backends` lists "torch"
    first; fastest(available) ranks the others that can serve a CUDA tensor (never empty)."""
    check_choice("backend", backend, ("auto", *backends))
    if backend != "auto":
        reason = unsupported(backends, backend, tensor)
        if reason is not None:
            raise NotImplementedError(f"{op}: backend={backend!r} cannot serve these inputs: it {reason}")
        return backend
    if not tensor.is_cuda:
        return "torch"
    available = []
    for name in backends:
        if name == "torch":
            continue
        reason = unsupported(backends, name, tensor)
        if reason is None:
            available.append(name)
        else:
            log.debug("%s: auto skips backend %s: it %s", op, name, reason)
    return fastest(tuple(available)) if available else "torch"
