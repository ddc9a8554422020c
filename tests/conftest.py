"""Test set-up shared by every test.

TRITON_INTERPRET is read when @triton.jit runs, so it is set here, before any kernel module is
imported: the Triton kernels then run on CPU tensors in the interpreter. A machine with a GPU can
run them natively with FASTSCALE_TEST_NATIVE_TRITON=1.
"""

import os
import random
import zlib
from pathlib import Path
from typing import NamedTuple

if os.environ.get("FASTSCALE_TEST_NATIVE_TRITON") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
# The interpreter's tile matmuls are tiny numpy calls; multi-threaded OpenBLAS makes each one ~7x
# slower (more when the cores are busy). Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_configure(config):
    # CI runs every test; `pytest -m "not slow"` is the inner loop.
    config.addinivalue_line(
        "markers", "slow: starts a training run, sweep, compile or subprocess, or runs a long interpreter case; "
                   "deselect with -m 'not slow'"
    )


def _patch_interpreter() -> None:
    """Three gaps of Triton 3.9's interpreter, patched so kernels are judged by what the GPU computes:
    tl.dot multiplies the raw bit patterns of bfloat16 operands (triton issue 11584); it runs
    np.matmul with a dtype argument, which bypasses BLAS and costs ~10 ms per 64x64x512 tile; and
    float32 -> bfloat16 casts truncate where the GPU rounds to nearest even. Dots of 16- and 32-bit
    float operands are computed as float32 products with float32 accumulation, as on the GPU."""
    from triton.runtime import interpreter
    import triton.language as tl

    original_dot = interpreter.InterpreterBuilder.create_dot
    original_cast = interpreter.InterpreterBuilder.cast_impl

    def as_float32(handle):
        if handle.dtype.scalar == tl.bfloat16:
            return (handle.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return handle.data.astype(np.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        floats = (tl.float32, tl.float16, tl.bfloat16)
        if a.dtype.scalar in floats and b.dtype.scalar in floats and d.dtype.scalar == tl.float32:
            product = np.matmul(as_float32(a), as_float32(b))
            return interpreter.TensorHandle(product + d.data, d.dtype.scalar)
        return original_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = src.data.astype(np.float32).view(np.uint32)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            rounded = np.where(np.isnan(src.data), 0x7FC0, rounded).astype(np.uint16)
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        return original_cast(self, src, dst_type)

    interpreter.InterpreterBuilder.create_dot = create_dot
    interpreter.InterpreterBuilder.cast_impl = cast_impl


if INTERPRETING:
    _patch_interpreter()


def _test_seed(request) -> int:
    """Random inputs differ from test to test but reproduce run to run: the seed is the test id's CRC
    (the module's id for module-scoped fixtures)."""
    return zlib.crc32(request.node.nodeid.encode())


def _seed_global_generators(seed: int) -> None:
    """torch's, numpy's legacy global and Python's random generators, so a test that draws from any of
    them without a generator of its own still reproduces (and a module-scoped fixture does not depend
    on which tests ran before it)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.fixture(autouse=True, scope="module")
def _module_seed(request):
    _seed_global_generators(_test_seed(request))


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    _seed_global_generators(_test_seed(request))


@pytest.fixture
def rng(request) -> np.random.Generator:
    """numpy's generator for the test, seeded like torch's."""
    return np.random.default_rng(_test_seed(request))


class TrainedRun(NamedTuple):
    run_dir: Path
    data_dir: Path
    config: dict  # the run config it was trained with
    deepspeed: dict  # and the DeepSpeed config


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> TrainedRun:
    """A one-layer GPT trained 6 steps on the prepared 8x8 digits (one process, ZeRO 0, micro-batches
    of 2 whole documents; eval at step 6 on 2 micro-batches; checkpoints at steps 3 and 6): trained
    once per session for the tests that only read a trained run (the studies' evaluation, the classify
    study). Copy it before changing anything in it."""
    import processes
    from fastscale.data.prepare import prepare

    root = tmp_path_factory.mktemp("digits_run")
    prepare("digits", root / "data")
    config = {"model": {"n_layer": 1, "d_model": 16, "n_head": 2}, "data": {"path": str(root / "data")}, "seq_len": 193,
              "train": {"steps": 6, "lr": 3e-3, "warmup_steps": 1, "seed": 0, "eval_interval": 6, "eval_batches": 2,
                        "checkpoint_interval": 3, "noise_scale_interval": 0}}
    deepspeed = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}
    return TrainedRun(processes.train(root, config, deepspeed), root / "data", config, deepspeed)
