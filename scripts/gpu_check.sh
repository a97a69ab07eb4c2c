#!/usr/bin/env bash
# One command for a machine with a CUDA GPU: build libditas_kernels.so, run the GPU tests (pytest -m gpu), run the
# GEMM benchmark. Everything is written under bench/results/, named after the card:
#   build_<card>.log, gpu_tests_<card>.log + .xml, gemm_<card>.json + .txt, gpu_check_<card>.json (summary)
#
#   scripts/gpu_check.sh [cuda_archs]     (default "80;86;89;90a"; e.g. "90a" to build only for an H100)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
    PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
else
    PYTHON="${PYTHON:-python3}"
fi
ARCHS="${1:-80;86;89;90a}"
OUT="$ROOT/bench/results"
mkdir -p "$OUT"

CARD="$("$PYTHON" -c 'import re, torch; print(re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_"))' 2>/dev/null)"
if [[ -z "$CARD" ]]; then
    echo "gpu_check.sh: torch sees no CUDA device" >&2
    exit 2
fi
nvidia-smi > "$OUT/nvidia_smi_${CARD}.txt" 2>&1 || true

t0=$(date +%s)
scripts/build_plugins.sh "$ROOT/plugins/build" "$ARCHS" 2>&1 | tee "$OUT/build_${CARD}.log"
build_rc=${PIPESTATUS[0]}
t1=$(date +%s)

tests_rc=99
if [[ $build_rc -eq 0 ]]; then
    "$PYTHON" -m pytest -m gpu -q -rs --junitxml="$OUT/gpu_tests_${CARD}.xml" 2>&1 | tee "$OUT/gpu_tests_${CARD}.log"
    tests_rc=${PIPESTATUS[0]}
fi
t2=$(date +%s)

bench_rc=99
if [[ $build_rc -eq 0 ]]; then
    "$PYTHON" bench/gemm.py --paths --out "$OUT/gemm_${CARD}.json" 2>&1 | tee "$OUT/gemm_${CARD}.txt"
    bench_rc=${PIPESTATUS[0]}
fi
t3=$(date +%s)

"$PYTHON" - "$OUT/gpu_check_${CARD}.json" "$CARD" "$ARCHS" $build_rc $tests_rc $bench_rc $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) <<'PY'
import json, os, sys, time
path, card, archs, b, t, g, tb, tt, tg = sys.argv[1:]
summary = {"card": card, "archs": archs, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "build_rc": int(b), "gpu_tests_rc": int(t), "bench_rc": int(g),
           "seconds": {"build": int(tb), "gpu_tests": int(tt), "bench": int(tg)}}
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(summary, f, indent=1)
os.replace(tmp, path)
print(json.dumps(summary))
PY

[[ $build_rc -eq 0 && $tests_rc -eq 0 && $bench_rc -eq 0 ]]
