#!/usr/bin/env bash
# Build libditas_kernels.so (+ the static kernel library) with CMake and print how long it took.
#
#   scripts/build_plugins.sh [build_dir] [cuda_archs]
#       build_dir   default plugins/build (ditas_trt.ops.cuda looks for plugins/build/libditas_kernels.so)
#       cuda_archs  default "80;86;89;90a" (CMake CUDA_ARCHITECTURES syntax)
#   environment: JOBS (parallel jobs, default nproc), NVCC (default /usr/local/cuda/bin/nvcc if present),
#                DITAS_PTXAS_VERBOSE=1 (print registers / spills of every kernel)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${1:-$ROOT/plugins/build}"
ARCHS="${2:-80;86;89;90a}"
JOBS="${JOBS:-$(nproc)}"

if [[ -x "$ROOT/.venv/bin/python" ]]; then
    PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
    export PATH="$ROOT/.venv/bin:$PATH"
else
    PYTHON="${PYTHON:-python3}"
fi
command -v cmake >/dev/null || { echo "build_plugins.sh: cmake not found (pip install cmake ninja)" >&2; exit 2; }
NVCC="${NVCC:-}"
if [[ -z "$NVCC" ]]; then
    if [[ -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; else NVCC="$(command -v nvcc || true)"; fi
fi
[[ -n "$NVCC" ]] || { echo "build_plugins.sh: nvcc not found (set NVCC)" >&2; exit 2; }

GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
CUTLASS_DIR="$("$PYTHON" -c 'import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), "source"))' 2>/dev/null || true)"

start=$(date +%s)
cmake -S "$ROOT/plugins" -B "$BUILD_DIR" "${GENERATOR[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$NVCC" \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" \
    -DDITAS_CUTLASS_DIR="$CUTLASS_DIR" \
    -DDITAS_PTXAS_VERBOSE="$([[ "${DITAS_PTXAS_VERBOSE:-0}" == 1 ]] && echo ON || echo OFF)" \
    -DPython3_EXECUTABLE="$PYTHON"
cmake --build "$BUILD_DIR" -j "$JOBS"
end=$(date +%s)
echo "build_plugins.sh: built $BUILD_DIR/libditas_kernels.so for CUDA archs '$ARCHS' in $((end - start)) s ($JOBS jobs)"
