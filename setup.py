"""Builds pyrnn._C (CPU kernels) and, where a CUDA toolkit is found, pyrnn._cuda through CMakeLists.txt.
No torch headers are needed; the CUDA extension is optional and never blocks the CPU build."""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, target: str, optional: bool = False) -> None:
        super().__init__(name, sources=[], optional=optional)
        self.target = target


class CMakeBuild(build_ext):
    def _configure(self, out_dir: Path, build_dir: Path) -> None:
        import pybind11

        config = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if os.environ.get("PYRNN_SANITIZE"):
            config.append("-DPYRNN_SANITIZE=ON")
        if os.environ.get("PYRNN_CUDA_ARCHS"):
            config.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['PYRNN_CUDA_ARCHS']}")
        if os.environ.get("PYRNN_NO_CUDA"):
            config.append("-DPYRNN_BUILD_CUDA=OFF")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *config], check=True)

    def build_extension(self, ext: CMakeExtension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        self._configure(out_dir, build_dir)
        if ext.target == "_cuda":
            cache = (build_dir / "CMakeCache.txt").read_text()
            compiler = cache.split("CMAKE_CUDA_COMPILER:", 1)[1].split("\n", 1)[0] if "CMAKE_CUDA_COMPILER:" in cache else ""
            if not compiler or "NOTFOUND" in compiler or "PYRNN_BUILD_CUDA:BOOL=OFF" in cache:
                raise CompileError("no CUDA toolkit found: pyrnn._cuda is not built (the CPU package is unaffected)")
        jobs = str(os.cpu_count() or 2)
        done = subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs, "--target", ext.target])
        if done.returncode != 0:
            raise CompileError(f"building {ext.target} failed")


setup(
    ext_modules=[
        CMakeExtension("pyrnn._C", "_C"),
        CMakeExtension("pyrnn._cuda", "_cuda", optional=True),
    ],
    cmdclass={"build_ext": CMakeBuild},
)
