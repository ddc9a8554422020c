"""Test set-up shared by every test.

TRITON_INTERPRET is read when @triton.jit runs, so it is set here, before any kernel module is
imported: the Triton kernels then run on CPU tensors in the interpreter. A machine with a GPU can
run them natively with FASTSCALE_TEST_NATIVE_TRITON=1.
"""

import os
import zlib

if os.environ.get("FASTSCALE_TEST_NATIVE_TRITON") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def _patch_interpreter_bf16_dot() -> None:
    """Triton 3.9's interpreter multiplies the raw bit patterns of bfloat16 dot operands (triton
    issue 11584). Upcast them to float32 first, which is what the GPU's fp32 accumulation computes."""
    from triton.runtime import interpreter
    import triton.language as tl

    original = interpreter.InterpreterBuilder.create_dot

    def as_float32(handle):
        if handle.dtype.scalar == tl.bfloat16:
            bits = handle.data.view(np.uint16).astype(np.uint32) << 16
            return interpreter.TensorHandle(bits.view(np.float32), tl.float32)
        return handle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, as_float32(a), as_float32(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot


if INTERPRETING:
    _patch_interpreter_bf16_dot()


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Random inputs differ from test to test but reproduce run to run: the seed is the test id's CRC."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    yield
