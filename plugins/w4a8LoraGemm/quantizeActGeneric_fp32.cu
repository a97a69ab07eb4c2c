// Fallback activation quantize instantiation: fp32 input.
#include "genericKernels.cuh"

DITAS_INSTANTIATE_QUANTIZE_ACT_GENERIC(float)
