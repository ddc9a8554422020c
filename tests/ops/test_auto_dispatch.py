"""backend="auto" on CUDA asks ops/_auto.py's estimate with the caller's shape, and falls back when
the estimated winner cannot run. No GPU here: the device capability is faked and the op's own
choice functions are called on CPU tensors."""

import importlib

import pytest
import torch

from fastscale.ops import _auto

# fastscale.ops.attention is also the name of the op the package exports: take the modules by name.
attention_op = importlib.import_module("fastscale.ops.attention")
cross_entropy_op = importlib.import_module("fastscale.ops.cross_entropy")
_dispatch = importlib.import_module("fastscale.ops._dispatch")


@pytest.fixture
def hopper(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


def test_cross_entropy_asks_the_estimate_with_the_callers_shape(hopper, monkeypatch):
    asked = []
    monkeypatch.setattr(_auto, "fastest_cross_entropy_backend", lambda *args: asked.append(args) or "triton")
    hidden = torch.randn(3, 5, 16, dtype=torch.bfloat16)
    assert cross_entropy_op._fastest_on_cuda(hidden, 1000, ("triton", "cuda")) == "triton"
    assert asked == [(15, 1000, 16, torch.bfloat16, (9, 0))]


def test_cross_entropy_falls_back_to_triton_when_cuda_cannot_run(hopper, monkeypatch):
    monkeypatch.setattr(_auto, "fastest_cross_entropy_backend", lambda *args: "cuda")
    hidden = torch.randn(4, 16, dtype=torch.bfloat16)
    # CPU tensors: the cuda backend refuses them, as it refuses a machine without fastscale._C.
    assert "needs CUDA tensors" in _dispatch.unsupported(cross_entropy_op._BACKENDS, "cuda", hidden)
    assert cross_entropy_op._fastest_on_cuda(hidden, 1000, ("triton",)) == "triton"


def test_cross_entropy_estimate_prefers_the_band_kernels_at_the_target_shape():
    # The model's verdict at tokens 32k, V 128k, d 4096 bf16 on an H100 (benchmarks/results/estimates.md).
    assert _auto.fastest_cross_entropy_backend(32768, 131072, 4096, torch.bfloat16, (9, 0)) == "triton"


@pytest.mark.parametrize("packed", [False, True])
def test_attention_asks_the_estimate_with_the_callers_shape(hopper, monkeypatch, packed):
    asked = []
    monkeypatch.setattr(_auto, "fastest_attention_backend", lambda *args, **kw: asked.append((args, kw)) or "flash_attn")
    shape = (2 * 24, 4, 64) if packed else (2, 24, 4, 64)
    q = torch.randn(shape, dtype=torch.float16, requires_grad=True)
    k = v = torch.randn(shape, dtype=torch.float16)
    cu = torch.tensor([0, 24, 48], dtype=torch.int32) if packed else None
    choice = attention_op._fastest_on_cuda(q, k, v, True, cu, 24 if packed else None, ("triton", "flash_attn"))
    assert choice == "flash_attn"
    assert asked == [((48, 24, 4, 64, torch.float16, True, (9, 0), ("triton", "flash_attn")), {"backward": True})]


def test_attention_forward_only_under_no_grad(hopper, monkeypatch):
    asked = []
    monkeypatch.setattr(_auto, "fastest_attention_backend", lambda *args, **kw: asked.append(kw) or "triton")
    q = torch.randn(1, 8, 2, 32, dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        attention_op._fastest_on_cuda(q, q, q, True, None, None, ("triton",))
    assert asked == [{"backward": False}]
