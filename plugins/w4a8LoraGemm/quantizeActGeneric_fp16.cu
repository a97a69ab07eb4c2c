// Fallback activation quantize instantiation: fp16 input.
#include "genericKernels.cuh"

DITAS_INSTANTIATE_QUANTIZE_ACT_GENERIC(__half)
