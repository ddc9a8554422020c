"""fastscale._C on a machine without a GPU: it builds and imports, every entry point answers a clear
"no CUDA device" error, the cuda backend refuses CPU tensors, and every csrc/*.cu compiles for sm_80 and
sm_90a without register spills (DESIGN.md, "CUDA C++ (csrc/)")."""

import importlib
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from fastscale.ops import linear_cross_entropy

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CUDA_SOURCES = sorted(CSRC.glob("*.cu"))
ARCHS = ("sm_80", "sm_90a")
NVCC = shutil.which("nvcc")
ENTRY_POINTS = ("cross_entropy_backward", "cross_entropy_forward")


def _extension():
    """fastscale._C, or a skip when this install legitimately has none; a missing build with nvcc
    present and FASTSCALE_BUILD_CUDA not 0 is a failure."""
    try:
        return importlib.import_module("fastscale._C")
    except ImportError as err:
        if os.environ.get("FASTSCALE_BUILD_CUDA") == "0":
            pytest.skip("fastscale._C not built: FASTSCALE_BUILD_CUDA=0")
        if NVCC is None:
            pytest.skip("fastscale._C not built: nvcc is not on PATH")
        pytest.fail(f"fastscale._C does not import although nvcc is at {NVCC} ({err}); reinstall with pip install -e .")


def _dummy_arguments(entry_point: str) -> dict:
    """Arguments that would pass validation on a machine with a GPU (rows=0 launches nothing)."""
    args = dict(logits=0, dtype=0, rows=0, vocab=1, row_stride=1, targets=0, loss=0, lse=0, workspace=0,
                splits=1, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=0.0, device=0, stream=0)
    if entry_point == "cross_entropy_backward":
        args["token_grad"] = 0
    return args


def test_extension_exposes_the_tested_entry_points():
    ext = _extension()
    public = sorted(name for name in dir(ext) if not name.startswith("_") and callable(getattr(ext, name)))
    assert tuple(public) == ENTRY_POINTS, "a new entry point needs its no-device test below"


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_entry_point_without_a_device_raises_a_clear_error(entry_point):
    ext = _extension()
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the no-device error cannot happen here")
    with pytest.raises(RuntimeError, match=r"^fastscale\._C: no CUDA device is available \(cudaGetDeviceCount: .+\)$"):
        getattr(ext, entry_point)(**_dummy_arguments(entry_point))


def test_cuda_backend_refuses_cpu_tensors():
    hidden, weight = torch.randn(5, 8), torch.randn(11, 8)
    with pytest.raises(ValueError, match=r"backend 'cuda': tensors are on cpu; it needs CUDA tensors"):
        linear_cross_entropy(hidden, weight, torch.randint(0, 11, (5,)), backend="cuda")


def test_cuda_backend_refuses_float64():
    hidden, weight = torch.randn(5, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"backend 'cuda': hidden dtype torch.float64 is not supported"):
        linear_cross_entropy(hidden, weight, torch.randint(0, 11, (5,)), backend="cuda")


def parse_ptxas(output: str, arch: str) -> dict[str, dict[str, int]]:
    """Per kernel compiled for `arch`: registers, spill stores and loads (bytes), stack frame and
    static shared memory (bytes), from nvcc -Xptxas -v output."""
    kernels: dict[str, dict[str, int]] = {}
    current = None
    for line in output.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)' for '(\w+)'", line):
            current = m.group(1) if m.group(2) == arch else None
            if current:
                kernels[current] = {}
        elif current and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            kernels[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            kernels[current]["registers"] = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            kernels[current]["smem"] = int(smem.group(1)) if smem else 0
    return kernels


def test_parse_ptxas_reads_spills():
    output = (
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_80'\n"
        "ptxas info    : Function properties for _Z1kv\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 96 bytes smem, 360 bytes cmem[0]\n"
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_90a'\n"
    )
    assert parse_ptxas(output, "sm_80") == {"_Z1kv": dict(stack=8, spill_stores=4, spill_loads=12, registers=255, smem=96)}
    assert parse_ptxas(output, "sm_90a") == {"_Z1kv": {}}


def _include_flags(source: Path) -> list[str]:
    """pybind11's and Python's headers, as setup.py passes them, for the sources that need them."""
    if "pybind11" not in source.read_text():
        return []
    pybind11 = pytest.importorskip(
        "pybind11", reason=f"{source.name} includes pybind11, a build-time requirement only: pip install pybind11 to compile it here"
    )
    return [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_compiles_without_spills(source, arch, tmp_path):
    # -cubin compiles the device code only, which is all ptxas reports on (and 3x faster than -c).
    cmd = [
        NVCC, "-std=c++17", "-O3", "-cubin", f"-arch={arch}", "-Xptxas", "-v", *_include_flags(source),
        str(source), "-o", str(tmp_path / f"{source.stem}.cubin"),
    ]
    result = subprocess.run(["nice", *cmd], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    kernels = parse_ptxas(result.stdout + result.stderr, arch)
    for name, info in kernels.items():
        assert {"spill_stores", "spill_loads", "registers"} <= info.keys(), f"{name}: ptxas reported {info}"
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, f"{source.name} {arch} {name} spills: {info}"
    if "__global__" in source.read_text():
        assert kernels, f"{source.name} defines kernels but ptxas reported none for {arch}"
