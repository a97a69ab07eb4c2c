// SIMT fallback GEMM instantiation: W8 weights (all output kinds).
#include "genericKernels.cuh"

DITAS_INSTANTIATE_GEMM_GENERIC(8)
