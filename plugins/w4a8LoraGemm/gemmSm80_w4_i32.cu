// mma.sync GEMM instantiation: W4 weights, i32 output.
#include "gemmSm80.cuh"

DITAS_INSTANTIATE_GEMM_SM80(4, kInt32)
