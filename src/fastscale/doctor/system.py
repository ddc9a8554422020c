"""What the doctor reports about the machine: package versions, CPU and GPUs, the CUDA driver and
runtimes, and where each backend of each op can run here (and, where it cannot, why)."""

from __future__ import annotations

import importlib
import os
import platform
from importlib import metadata

import torch

from fastscale import hardware

PACKAGES = ("torch", "triton", "deepspeed", "liger-kernel", "cut-cross-entropy", "flash-attn", "fastscale")
# Where a backend's check runs: on the GPU, on the CPU (torch), or under Triton's interpreter.
GPU, CPU, INTERPRETER = "cuda", "cpu", "interpreter"


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def devices() -> dict:
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                         "memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count})
    return {"cpu": hardware.cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpus": gpus}


def _extension():
    """(fastscale._C or None, why it is unusable or None)."""
    try:
        from fastscale import _C
    except ImportError as exc:
        return None, f"fastscale._C is not built ({exc}); install with nvcc on PATH or FASTSCALE_BUILD_CUDA=1"
    try:
        _C.device_count()
    except RuntimeError as exc:  # names a missing or too old driver
        return _C, str(exc)
    return _C, None


def cuda() -> dict:
    """torch's CUDA, the compiled extension's runtime and the driver (CUDA versions as 1000 * major +
    10 * minor; driver 0 means no driver), and the extension's own no-device error if it has one."""
    ext, problem = _extension()
    info = {"torch_cuda": torch.version.cuda, "torch_sees_gpu": torch.cuda.is_available(), "extension_built": ext is not None}
    if ext is not None:
        info.update(ext.cuda_versions())
    info["extension_problem"] = problem
    return info


def no_gpu_reason() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA"
    if not torch.cuda.is_available():
        return "torch finds no CUDA device"
    return None


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def backend_plan() -> dict[str, dict[str, dict]]:
    """op -> backend -> {"runs": GPU/CPU/INTERPRETER or None, "reason": why not (or what is not checked)}."""
    no_gpu = no_gpu_reason()
    _, ext_problem = _extension()
    triton = ({"runs": GPU, "reason": None} if no_gpu is None else
              {"runs": INTERPRETER, "reason": f"{no_gpu}: checked under Triton's interpreter on the CPU (float32/float16 "
                                              "tiny shapes); the compiled GPU kernels and their speed need a GPU"})
    if not _installed("triton"):
        triton = {"runs": None, "reason": "triton is not installed"}
    cuda_backend = {"runs": GPU, "reason": None}
    if no_gpu or ext_problem:  # torch's reason first: the extension's is printed in full under CUDA
        cuda_backend = {"runs": None, "reason": no_gpu or ext_problem}
    flash = {"runs": GPU, "reason": None}
    if not _installed("flash_attn"):
        flash = {"runs": None, "reason": "flash-attn is not installed (pip install 'fastscale[flash]' on a CUDA machine)"}
    elif no_gpu:
        flash = {"runs": None, "reason": no_gpu}
    torch_backend = {"runs": GPU if no_gpu is None else CPU, "reason": None}
    return {
        "linear_cross_entropy": {"torch": torch_backend, "triton": triton, "cuda": cuda_backend},
        "attention": {"torch": torch_backend, "triton": triton, "flash_attn": flash},
    }
