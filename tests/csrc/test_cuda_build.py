"""fastscale._C on a machine without a GPU: it builds and imports, reports the CUDA versions it was
built with and finds, every entry point answers a clear "no CUDA device" error that says why (no driver,
or a driver older than the runtime compiled in), the cuda backend refuses CPU tensors, setup.py picks
the nvcc matching torch's CUDA, and every csrc/*.cu compiles for sm_80 and sm_90a without register
spills (DESIGN.md, "CUDA C++ (csrc/)")."""

import ctypes
import importlib
import importlib.util
import os
import sys
import warnings
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from fastscale.ops import linear_cross_entropy

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CUDA_SOURCES = sorted(CSRC.glob("*.cu"))
ARCHS = ("sm_80", "sm_90a")
NVCC = shutil.which("nvcc")
ENTRY_POINTS = ("cross_entropy_backward", "cross_entropy_forward", "device_count")
DIAGNOSTICS = ("cuda_versions", "no_device_message")


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
    if entry_point == "device_count":
        return {}
    args = dict(logits=0, dtype=0, rows=0, vocab=1, row_stride=1, targets=0, loss=0, lse=0, workspace=0,
                splits=1, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=0.0, device=0, stream=0)
    if entry_point == "cross_entropy_backward":
        args["token_grad"] = 0
    return args


def test_extension_exposes_the_tested_entry_points():
    ext = _extension()
    public = sorted(name for name in dir(ext) if not name.startswith("_") and callable(getattr(ext, name)))
    assert tuple(public) == tuple(sorted(ENTRY_POINTS + DIAGNOSTICS)), "a new entry point needs its no-device test below"


def _release(nvcc: str) -> int:
    """nvcc's release as CUDART_VERSION spells it (13.0 -> 13000)."""
    major, minor = re.search(r"release (\d+)\.(\d+)", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout).groups()
    return 1000 * int(major) + 10 * int(minor)


def _has_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def test_cuda_versions_report_the_build_toolkit_and_the_driver():
    versions = _extension().cuda_versions()
    assert set(versions) == {"runtime_compiled", "runtime", "driver"}
    assert versions["runtime"] == versions["runtime_compiled"], "the runtime is linked statically: it is the one compiled in"
    toolkit_choice = ("CUDA_HOME", "CUDA_PATH", "FASTSCALE_TORCH_CUDA")
    if NVCC is not None and torch.version.cuda is None and not any(os.environ.get(v) for v in toolkit_choice):
        assert versions["runtime_compiled"] == _release(NVCC), "with a CPU torch setup.py builds with the nvcc on PATH"
    if not _has_driver():
        assert versions["driver"] == 0
    else:
        assert versions["driver"] >= 1000


def _expected_no_driver_message(runtime: int) -> str:
    return (
        r"^fastscale\._C: no CUDA device is available \(cudaGetDeviceCount: cuda\w+: .+\); no NVIDIA driver was found "
        r"\(cudaDriverGetVersion: 0\), so no GPU can be used: if this machine has one, install an NVIDIA driver for CUDA "
        + re.escape(f"{runtime // 1000}.{runtime % 1000 // 10}") + " or newer$"
    )


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_entry_point_without_a_device_raises_a_clear_error(entry_point):
    ext = _extension()
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the no-device error cannot happen here")
    if _has_driver():
        pattern = r"^fastscale\._C: no CUDA device is available \(cudaGetDeviceCount: .+\)"
    else:
        pattern = _expected_no_driver_message(ext.cuda_versions()["runtime_compiled"])
    with pytest.raises(RuntimeError, match=pattern):
        getattr(ext, entry_point)(**_dummy_arguments(entry_point))


def test_no_device_message_names_an_old_driver_and_the_runtime():
    message = _extension().no_device_message(error_name="cudaErrorInsufficientDriver", error_text="too old", driver=12020, runtime=13000)
    assert message == (
        "fastscale._C: no CUDA device is available (cudaGetDeviceCount: cudaErrorInsufficientDriver: too old); "
        "the NVIDIA driver supports CUDA up to 12.2 (cudaDriverGetVersion: 12020) but fastscale._C was compiled with "
        "the CUDA 13.0 runtime (13000): update the driver to one for CUDA 13.0 or newer, or reinstall fastscale "
        "with CUDA_HOME set to a CUDA toolkit no newer than 12.2"
    )


def test_no_device_message_without_a_version_problem_gives_the_runtime_error():
    message = _extension().no_device_message(error_name="cudaErrorNoDevice", error_text="no CUDA-capable device is detected", driver=13010, runtime=13000)
    assert message == "fastscale._C: no CUDA device is available (cudaGetDeviceCount: cudaErrorNoDevice: no CUDA-capable device is detected)"
    assert re.match(_expected_no_driver_message(12040), _extension().no_device_message(error_name="cudaErrorInsufficientDriver", error_text="x", driver=0, runtime=12040))


# ------------------------------------------------------------------ setup.py: which nvcc builds _C


@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module (it calls setup() only when run as __main__)."""
    spec = importlib.util.spec_from_file_location("fastscale_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CANDIDATES = {"/opt/cuda-13.0/bin/nvcc": (13, 0), "/usr/local/cuda-12.4/bin/nvcc": (12, 4), "/usr/local/cuda-12.1/bin/nvcc": (12, 1)}


@pytest.mark.parametrize("torch_cuda,chosen", [
    (None, "/opt/cuda-13.0/bin/nvcc"),  # CPU torch: the first candidate, as before
    ((12, 4), "/usr/local/cuda-12.4/bin/nvcc"),  # the exact match wins over the preferred one
    ((12, 6), "/usr/local/cuda-12.4/bin/nvcc"),  # no match: the newest not newer than torch's
])
@pytest.mark.parametrize("mode", ["", "1"])
def test_setup_picks_the_nvcc_matching_torch(setup_py, torch_cuda, chosen, mode):
    assert setup_py.choose_nvcc(CANDIDATES, torch_cuda, mode) == chosen


def test_setup_refuses_or_warns_when_every_nvcc_is_newer_than_torch(setup_py):
    with pytest.raises(SystemExit, match=r"torch was built with CUDA 11\.8 but every nvcc found is newer: .*cuda-12\.1/bin/nvcc \(CUDA 12\.1\)"):
        setup_py.choose_nvcc(CANDIDATES, (11, 8), "1")
    with pytest.warns(UserWarning, match=r"fastscale\._C: torch was built with CUDA 11\.8 .* building with the first one"):
        assert setup_py.choose_nvcc(CANDIDATES, (11, 8), "") == "/opt/cuda-13.0/bin/nvcc"


def test_setup_without_nvcc_skips_or_fails(setup_py):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert setup_py.choose_nvcc({"/broken/nvcc": None}, (12, 4), "") is None
    with pytest.raises(SystemExit, match="FASTSCALE_BUILD_CUDA=1 but no working nvcc was found"):
        setup_py.choose_nvcc({}, None, "1")


def test_setup_reads_torch_cuda_version_without_importing_torch(setup_py, tmp_path, monkeypatch):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the probe must not import torch')\n")
    (fake / "version.py").write_text("cuda: Optional[str] = '12.4'\n")
    probe = subprocess.run([sys.executable, "-c", setup_py.TORCH_CUDA_PROBE], cwd=tmp_path, capture_output=True, text=True)
    assert probe.stdout.strip() == "12.4", probe.stderr
    # pip's isolated build puts its own paths on PYTHONPATH; the probe reads the installing interpreter's torch.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv("FASTSCALE_TORCH_CUDA", raising=False)
    expected = None if torch.version.cuda is None else tuple(int(x) for x in torch.version.cuda.split(".")[:2])
    assert setup_py.torch_cuda_version() == expected
    monkeypatch.setenv("FASTSCALE_TORCH_CUDA", "12.8")
    assert setup_py.torch_cuda_version() == (12, 8)
    monkeypatch.setenv("FASTSCALE_TORCH_CUDA", "twelve")
    with pytest.raises(SystemExit, match=r"FASTSCALE_TORCH_CUDA='twelve': expected a CUDA version such as 12\.4"):
        setup_py.torch_cuda_version()


def test_cuda_backend_refuses_cpu_tensors():
    hidden, weight = torch.randn(5, 8), torch.randn(11, 8)
    with pytest.raises(NotImplementedError, match=r"backend='cuda' cannot serve these inputs: it needs CUDA tensors \(hidden is on cpu\)"):
        linear_cross_entropy(hidden, weight, torch.randint(0, 11, (5,)), backend="cuda")


def test_cuda_backend_refuses_float64():
    hidden, weight = torch.randn(5, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match=r"backend='cuda' cannot serve these inputs: it supports .* \(got hidden dtype torch.float64\)"):
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


@pytest.mark.slow
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
