"""Fixtures of the op tests."""

import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

BACKEND_MODULES = ("fastscale.ops.cross_entropy_torch", "fastscale.kernels.cross_entropy")


class Recorder(TorchDispatchMode):
    """Records every aten op called (ops) and the bytes of every new storage one returns (sizes;
    views of its inputs are not new)."""

    def __init__(self):
        super().__init__()
        self.sizes = [0]
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(t.untyped_storage().nbytes())
        return out


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    """A Recorder that also sees inside linear_cross_entropy's custom ops. A dispatch mode
    sees a custom op as one call whose outputs are all it records, and runs the op with the mode off;
    so the backends' forward and gradients, which the ops run, enter the recorder themselves."""
    import importlib

    recorder = Recorder()
    for path in BACKEND_MODULES:
        module = importlib.import_module(path)
        for name in ("forward", "gradients"):
            monkeypatch.setattr(module, name, _recorded(recorder, getattr(module, name)))
    return recorder


def _recorded(recorder: Recorder, function):
    @functools.wraps(function)
    def run(*args):
        with recorder:
            return function(*args)
    return run
