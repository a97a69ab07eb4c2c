// SIMT fallback GEMM instantiation: W4 weights (all output kinds).
#include "genericKernels.cuh"

DITAS_INSTANTIATE_GEMM_GENERIC(4)
