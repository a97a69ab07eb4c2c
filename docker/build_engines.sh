#!/usr/bin/env bash
# Default command of the build image (runs with `docker run --gpus all`): export and build the FP16 and the
# W4A8+LoRA engines for the GPU in the container with enterprise TensorRT. Any arguments are passed to
# `ditas-trt` instead (e.g. `docker run ... ditas-trt-build build engines/x.onnx --name x`).
#
#   CHECKPOINT  FP checkpoint or 'embedded' (default)      QUANTIZED  quantized folder (default calib/digits if present)
#   NAME        engine name prefix (default digits)        OUT        output folder (default engines)
#   BATCH       "MIN OPT MAX" engine batch (default "1 16 128"; with CFG the engine batch is 2 x images)
set -euo pipefail

if [[ $# -gt 0 ]]; then
    exec ditas-trt "$@"
fi
CHECKPOINT="${CHECKPOINT:-embedded}"
QUANTIZED="${QUANTIZED:-calib/digits}"
NAME="${NAME:-digits}"
OUT="${OUT:-engines}"
read -r -a BATCH_ARGS <<< "${BATCH:-1 16 128}"
GPU="$(python3 -c 'import torch; print("sm%d%d" % torch.cuda.get_device_capability())')"

ditas-trt export "$CHECKPOINT" --kind fp16 --out "$OUT/${NAME}_fp16.onnx"
ditas-trt build "$OUT/${NAME}_fp16.onnx" --name "${NAME}_fp16_${GPU}" --batch "${BATCH_ARGS[@]}" --out-dir "$OUT"
if [[ -d "$QUANTIZED" ]]; then
    ditas-trt export "$QUANTIZED" --kind plugin --out "$OUT/${NAME}_w4a8.onnx"
    ditas-trt build "$OUT/${NAME}_w4a8.onnx" --name "${NAME}_w4a8_${GPU}" --batch "${BATCH_ARGS[@]}" --out-dir "$OUT" \
        --plugin-lib "$DITAS_TRT_PLUGIN_LIB"
else
    echo "build_engines.sh: no quantized folder at $QUANTIZED (set QUANTIZED); built the FP16 engine only" >&2
fi
