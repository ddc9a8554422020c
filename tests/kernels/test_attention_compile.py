"""Every shipped attention kernel configuration (kernel x head dim x causal x dtype x variant) compiles ahead
of time for sm_80 (A100) and sm_90 (H100) without spilling registers to local memory or the stack,
within the device's shared memory, on tensor cores (wgmma on sm_90 for the forward, mma.sync on sm_80).

Under TRITON_INTERPRET=1 @triton.jit yields functions that cannot be compiled, so the compiles run in
fresh processes started without it, two at a time, once per session.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from fastscale.kernels import attention as kernels

# The packed + windowed variant holds every code path; the plain batched variant (bfloat16 only: the
# two 16-bit types compile to the same resources) is the other one training runs most.
CONFIGURATIONS = [
    (kernel, head_dim, dtype, causal, arch, packed_windowed)
    for arch in (80, 90)
    for kernel in kernels.KERNELS
    for head_dim in kernels.HEAD_DIMS
    for dtype in kernels.DTYPES
    for causal in (True, False)
    for packed_windowed in (True, False)
    if packed_windowed or dtype == torch.bfloat16
]


def _name(config) -> str:
    kernel, head_dim, dtype, causal, arch, packed_windowed = config
    variant = "packed-window" if packed_windowed else "plain"
    return f"{kernel}-d{head_dim}-{str(dtype).removeprefix('torch.')}-{'causal' if causal else 'full'}-{variant}-sm{arch}"


@pytest.fixture(scope="module")
def reports():
    """{configuration: KernelResources or the exception its compile raised}."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1), mp_context=context) as pool:
            futures = {config: pool.submit(kernels.compile_report, *config) for config in CONFIGURATIONS}
            return {config: future.exception() or future.result() for config, future in futures.items()}
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


@pytest.mark.parametrize("config", CONFIGURATIONS, ids=_name)
def test_compiles_without_spills(reports, config):
    report = reports[config]
    if isinstance(report, BaseException):
        raise report
    kernel, head_dim, dtype, causal, arch, _ = config
    assert report.local_bytes == 0 and report.stack_bytes == 0, f"spills: {report.row()}, {report.stack_bytes} B stack"
    assert report.fits_shared_memory, f"shared memory over the sm_{arch} limit: {report.row()}"
    if arch == 90 and kernel == "forward":
        assert report.uses_wgmma, f"sm_90 forward without wgmma: {report.row()}"
    assert report.uses_wgmma or report.uses_mma_sync, f"no tensor-core instructions: {report.row()}"


def test_every_shipped_configuration_is_covered():
    """The compiled matrix is the one the launchers pick from: no configuration ships untested."""
    assert {(k, d) for k, d, *_ in CONFIGURATIONS} == set(kernels.CONFIGS)
    assert kernels.unsupported(torch.float32, 64) and kernels.unsupported(torch.bfloat16, 80)
