"""What the kernel modules' launchers launch on each GPU architecture, recorded without a GPU.

Run as a script in a fresh interpreter without TRITON_INTERPRET (the launchers then pick their GPU
tables, not the interpreter's): `python launches.py MODULE ...` prints
{module: {capability: {"launched": [...], "shipped": [...]}}} as JSON, where each item is a compile's
identity {"kernel", "constexprs", "num_warps", "num_stages"}. "launched" comes from calling the
module's launchers on small CPU tensors over every input class they serve (dtypes, head dims,
bias/softcap, causal/window/packed), with torch.cuda.get_device_capability answering the compute
capability (the report's sm_80/90/100 and the smaller GPUs served by sm_80 tables) and
every @triton.jit kernel of the module replaced by a recorder of its launch arguments (nothing
runs). "shipped" comes from the module's shipped_configurations(capability) for the report's archs.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
from triton.backends.nvidia.compiler import CUDAOptions  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

CAPABILITIES = (80, 86, 89, 90, 100, 120)
REPORTED = (80, 90, 100)


class Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the compile the
    launch would ask for (constexpr values, with defaults; num_warps/num_stages, with Triton's)."""

    def __init__(self, fn: JITFunction, launches: list):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, num_warps=CUDAOptions.num_warps, num_stages=CUDAOptions.num_stages, **kwargs):
        given = dict(zip(self.fn.arg_names, args)) | kwargs
        constexprs = {p.name: given.get(p.name, p.default) for p in self.fn.params if p.is_constexpr}
        self.launches.append({"kernel": self.fn.__name__, "constexprs": constexprs,
                              "num_warps": num_warps, "num_stages": num_stages})


def _exercise_cross_entropy(module) -> None:
    from fastscale.backends import LossOptions

    n, vocab, d = 37, 101, 48
    targets = torch.randint(0, vocab, (n,))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        hidden, weight = torch.randn(n, d, dtype=dtype), torch.randn(vocab, d, dtype=dtype)
        for has_bias, softcap in itertools.product((False, True), (None, 30.0)):
            bias = torch.randn(vocab, dtype=dtype) if has_bias else None
            opts = LossOptions(softcap=softcap)
            module.forward(hidden, weight, bias, targets, opts)
            module.gradients(hidden, weight, bias, targets, torch.ones(n), opts)


def _exercise_attention(module) -> None:
    total, heads_q, heads_kv, seqlen = 32, 2, 1, 16
    cu_seqlens = torch.tensor([0, 11, 32], dtype=torch.int32)
    for dtype, head_dim in itertools.product((torch.bfloat16, torch.float16), range(1, 257)):
        if module.unsupported(dtype, head_dim):
            continue
        q = torch.randn(total, heads_q, head_dim, dtype=dtype)
        k, v = (torch.randn(total, heads_kv, head_dim, dtype=dtype) for _ in range(2))
        for causal, window, packed in itertools.product((True, False), (None, 8), (True, False)):
            cu, length = (cu_seqlens, 21) if packed else (None, seqlen)
            options = dict(causal=causal, window=window, scale=head_dim ** -0.5)
            out, lse = module.forward(q, k, v, cu, length, **options)
            module.backward(torch.randn_like(q), q, k, v, out, lse, cu, max_seqlen=length, **options)


EXERCISES = {
    "fastscale.kernels.cross_entropy": _exercise_cross_entropy,
    "fastscale.kernels.attention": _exercise_attention,
}


def _identity(spec) -> dict:
    return {"kernel": spec.kernel, "constexprs": dict(spec.constexprs),
            "num_warps": spec.num_warps, "num_stages": spec.num_stages}


def record(module_name: str, capability: int) -> dict:
    module = importlib.import_module(module_name)
    launches: list = []
    kernels = {name: value for name, value in vars(module).items() if isinstance(value, JITFunction)}
    real_capability = torch.cuda.get_device_capability
    try:
        torch.cuda.get_device_capability = lambda device=None: divmod(capability, 10)
        for name, fn in kernels.items():
            setattr(module, name, Recorder(fn, launches))
        EXERCISES[module_name](module)
    finally:
        torch.cuda.get_device_capability = real_capability
        for name, fn in kernels.items():
            setattr(module, name, fn)
    shipped = module.shipped_configurations(capability) if capability in REPORTED else ()
    return {"launched": launches, "shipped": [_identity(spec) for spec in shipped]}


if __name__ == "__main__":
    torch.manual_seed(0)  # the inputs' values do not matter, only which compiles they ask for; seeded all the same
    json.dump({name: {c: record(name, c) for c in CAPABILITIES} for name in sys.argv[1:]}, sys.stdout)
