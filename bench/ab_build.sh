#!/usr/bin/env bash
# Builds pyrnn's CPU kernels from a git revision (or the working tree, "wt") as a second extension module,
# <name>, whose C++ lives in namespace pyrnn_<name>, so it loads beside pyrnn._C in one process without clashing
# (pybind11 types, weak symbols). bench/ab_kernels.py then times two such builds call for call.
# Usage: bash bench/ab_build.sh NAME REV [OUTDIR]   e.g.  bash bench/ab_build.sh _Cbase HEAD~3 /tmp/ab
# Needs cmake and pybind11 (pip install cmake pybind11).
set -euo pipefail
name=$1 rev=$2 out=${3:-/tmp/pyrnn_ab}
top=$(cd "$(dirname "$0")/.." && pwd)
src="$out/src_$name"
rm -rf "$src" && mkdir -p "$src"
if [ "$rev" = wt ]; then
  cp -r "$top/csrc" "$top/CMakeLists.txt" "$src/"
else
  (cd "$top" && git archive "$rev" csrc CMakeLists.txt) | tar -x -C "$src"
fi
sed -i "s/PYBIND11_MODULE(_C, m)/PYBIND11_MODULE($name, m)/" "$src/csrc/bindings.cpp"
sed -i "s/\b_C\b/$name/g" "$src/CMakeLists.txt"
cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DPYRNN_BUILD_CUDA=OFF -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$out" \
  -DCMAKE_CXX_FLAGS="-Dpyrnn=pyrnn_$name" -DPython_EXECUTABLE="$(command -v python)" \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" > "$src/configure.log"
cmake --build "$src/build" --target "$name" --parallel "$(nproc)" > "$src/build.log"
ls "$out/$name".*.so
