"""Builds fastscale._C from csrc/ with nvcc, with the CUDA toolkit that matches the installed torch.

fastscale._C is a torch-free pybind11 module with the CUDA runtime linked statically, so it builds and
imports on a machine with no GPU and no CUDA build of torch (DESIGN.md). A statically linked runtime
needs a driver at least as new as itself; torch's CUDA runtime is the one known to work with the
user's driver, so when torch was built with CUDA the toolkit is chosen to match it:

- torch's CUDA version is read from the interpreter that runs pip, outside pip's isolated build
  environment (which hides torch): torch/version.py is read, torch is not imported and nothing in the
  build requirements pulls torch. FASTSCALE_TORCH_CUDA=12.4 overrides it ("none": ignore torch).
- Candidates, in order: $CUDA_HOME/bin/nvcc, nvcc on PATH, /usr/local/cuda-<torch's version>/bin/nvcc.
  The first whose release equals torch's CUDA is used; else the newest one not newer than torch's
  (an older runtime runs on every driver torch runs on); else, with FASTSCALE_BUILD_CUDA=1, the build
  fails naming the versions, and unset, it builds with the first candidate and warns.
- With a CPU torch, or no torch, the first candidate is used, as before.

FASTSCALE_BUILD_CUDA=0 skips the module; FASTSCALE_BUILD_CUDA=1 makes a missing or mismatched nvcc an
error; unset, it is built when nvcc is found.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CUDA_SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cu"))
# sm_80 (A100) and sm_90a (H100, wgmma) as SASS, plus compute_90 PTX so newer GPUs can JIT it.
NVCC_ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_90,code=compute_90",
]
# Reads torch's CUDA version without importing torch (seconds, and CUDA initialisation) and without
# pip's build-isolation paths, which hide the installed torch.
TORCH_CUDA_PROBE = (
    "import importlib.util, pathlib, re\n"
    "spec = importlib.util.find_spec('torch')\n"
    "path = spec and spec.submodule_search_locations and pathlib.Path(spec.submodule_search_locations[0], 'version.py')\n"
    "m = path and path.exists() and re.search(r\"^cuda\\s*(?::[^=]*)?=\\s*'([0-9.]+)'\", path.read_text(), re.M)\n"
    "print(m.group(1) if m else '')\n"
)


def build_mode() -> str:
    wanted = os.environ.get("FASTSCALE_BUILD_CUDA", "")
    if wanted not in ("", "0", "1"):
        raise SystemExit(f"FASTSCALE_BUILD_CUDA={wanted!r}: expected 0, 1 or unset")
    return wanted


def parse_version(text: str, what: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)*", text.strip())
    if not m:
        raise SystemExit(f"{what}={text!r}: expected a CUDA version such as 12.4")
    return int(m.group(1)), int(m.group(2))


def torch_cuda_version() -> tuple[int, int] | None:
    """torch.version.cuda of the environment pip installs into, or None (CPU torch, no torch)."""
    override = os.environ.get("FASTSCALE_TORCH_CUDA")
    if override is not None:
        return None if override.lower() == "none" else parse_version(override, "FASTSCALE_TORCH_CUDA")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    try:
        found = subprocess.run([sys.executable, "-c", TORCH_CUDA_PROBE], env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(found, "torch.version.cuda") if found else None


def nvcc_version(nvcc: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def nvcc_candidates(torch_cuda: tuple[int, int] | None) -> list[str]:
    paths = []
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        paths.append(Path(cuda_home) / "bin" / "nvcc")
    if on_path := shutil.which("nvcc"):
        paths.append(Path(on_path))
    if torch_cuda:
        paths.append(Path(f"/usr/local/cuda-{torch_cuda[0]}.{torch_cuda[1]}/bin/nvcc"))
    unique = dict.fromkeys(str(p.resolve()) for p in paths if p.exists())
    return list(unique)


def choose_nvcc(candidates: dict[str, tuple[int, int] | None], torch_cuda: tuple[int, int] | None, mode: str) -> str | None:
    """The nvcc to build with, from candidates (path -> release, in preference order), or None to
    skip the module. Raises SystemExit when mode is "1" and no acceptable nvcc exists."""
    usable = {path: version for path, version in candidates.items() if version is not None}
    if not usable:
        if mode == "1":
            raise SystemExit("FASTSCALE_BUILD_CUDA=1 but no working nvcc was found in CUDA_HOME, on PATH or in /usr/local/cuda-X.Y")
        return None
    if torch_cuda is None:
        return next(iter(usable))
    for path, version in usable.items():
        if version == torch_cuda:
            return path
    older = [(version, path) for path, version in usable.items() if version < torch_cuda]
    if older:
        return max(older)[1]
    found = ", ".join(f"{path} (CUDA {v[0]}.{v[1]})" for path, v in usable.items())
    wanted = f"{torch_cuda[0]}.{torch_cuda[1]}"
    problem = (
        f"torch was built with CUDA {wanted} but every nvcc found is newer: {found}. fastscale._C links its "
        f"CUDA runtime statically and would need a driver newer than torch needs. Install the CUDA {wanted} "
        f"toolkit and set CUDA_HOME to it"
    )
    if mode == "1":
        raise SystemExit(f"FASTSCALE_BUILD_CUDA=1: {problem} (or unset FASTSCALE_BUILD_CUDA to build with a newer one anyway)")
    warnings.warn(f"fastscale._C: {problem}; building with the first one", stacklevel=1)
    return next(iter(usable))


def selected_nvcc() -> str | None:
    mode = build_mode()
    if mode == "0" or not CUDA_SOURCES:
        return None
    torch_cuda = torch_cuda_version()
    return choose_nvcc({path: nvcc_version(path) for path in nvcc_candidates(torch_cuda)}, torch_cuda, mode)


class NvccBuildExt(build_ext):
    """Compiles and links each extension with one nvcc call (no torch, no CUDA_HOME needed)."""

    nvcc: str

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out = Path(self.get_ext_fullpath(ext.name))
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.nvcc, "-O3", "-std=c++17", "-shared", "--cudart=static",
            "-Xcompiler=-fPIC,-fvisibility=hidden", *NVCC_ARCH_FLAGS,
            f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
            *ext.sources, "-o", str(out),
        ]
        self.announce(" ".join(cmd), level=2)
        subprocess.run(cmd, check=True, cwd=ROOT)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import choose_nvcc
    NvccBuildExt.nvcc = selected_nvcc()
    setup(
        packages=find_packages("src") + ["fastscale.kernels", "fastscale.benchmarks"],
        ext_modules=[Extension("fastscale._C", sources=CUDA_SOURCES)] if NvccBuildExt.nvcc else [],
        cmdclass={"build_ext": NvccBuildExt},
    )
