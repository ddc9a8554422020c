"""Builds fastscale._C from csrc/ with nvcc wherever nvcc is found.

fastscale._C is a torch-free pybind11 module with the CUDA runtime linked statically, so it builds and
imports on a machine with no GPU and no CUDA build of torch (DESIGN.md). FASTSCALE_BUILD_CUDA=0 skips
it; FASTSCALE_BUILD_CUDA=1 makes a missing nvcc an error; unset, it is built when nvcc is on PATH.
"""

import os
import shutil
import subprocess
import sysconfig
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


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_extensions() -> list[Extension]:
    wanted = os.environ.get("FASTSCALE_BUILD_CUDA", "")
    if wanted not in ("", "0", "1"):
        raise SystemExit(f"FASTSCALE_BUILD_CUDA={wanted!r}: expected 0, 1 or unset")
    if wanted == "0" or not CUDA_SOURCES:
        return []
    if find_nvcc() is None:
        if wanted == "1":
            raise SystemExit("FASTSCALE_BUILD_CUDA=1 but nvcc was not found on PATH or in CUDA_HOME")
        return []
    return [Extension("fastscale._C", sources=CUDA_SOURCES)]


class NvccBuildExt(build_ext):
    """Compiles and links each extension with one nvcc call (no torch, no CUDA_HOME needed)."""

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out = Path(self.get_ext_fullpath(ext.name))
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            find_nvcc(), "-O3", "-std=c++17", "-shared", "--cudart=static",
            "-Xcompiler=-fPIC,-fvisibility=hidden", *NVCC_ARCH_FLAGS,
            f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
            *ext.sources, "-o", str(out),
        ]
        self.announce(" ".join(cmd), level=2)
        subprocess.run(cmd, check=True, cwd=ROOT)


setup(
    packages=find_packages("src") + ["fastscale.kernels", "fastscale.benchmarks"],
    ext_modules=cuda_extensions(),
    cmdclass={"build_ext": NvccBuildExt},
)
