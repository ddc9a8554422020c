"""The conftest's patches of the Triton interpreter compute what the GPU computes."""

import os

import pytest
import torch
import triton
import triton.language as tl

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="patches apply to the interpreter only")


@triton.jit
def _cast_kernel(x_ptr, y_ptr, N: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(y_ptr + offsets, tl.load(x_ptr + offsets).to(tl.bfloat16))


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, N: tl.constexpr):
    r = tl.arange(0, N)
    a = tl.load(a_ptr + r[:, None] * N + r[None, :])
    b = tl.load(b_ptr + r[:, None] * N + r[None, :])
    tl.store(c_ptr + r[:, None] * N + r[None, :], tl.dot(a, b))


def test_float32_to_bfloat16_rounds_to_nearest_even():
    x = torch.randn(4096) * torch.logspace(-30, 30, 4096)
    x[:3] = torch.tensor([float("nan"), float("inf"), -0.0])
    y = torch.empty(4096, dtype=torch.bfloat16)
    _cast_kernel[(1,)](x, y, 4096)
    torch.testing.assert_close(y, x.to(torch.bfloat16), equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dot_is_a_float32_product(dtype):
    a, b = (torch.randn(32, 32).to(dtype) for _ in range(2))
    c = torch.full((32, 32), float("nan"))
    _dot_kernel[(1,)](a, b, c, 32)
    torch.testing.assert_close(c, (a.double() @ b.double()).float(), rtol=1e-5, atol=1e-5)
