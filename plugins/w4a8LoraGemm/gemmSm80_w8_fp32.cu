// mma.sync GEMM instantiation: W8 weights, fp32 output.
#include "gemmSm80.cuh"

DITAS_INSTANTIATE_GEMM_SM80(8, kFp32)
