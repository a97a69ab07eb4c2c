// mma.sync GEMM instantiation: W4 weights, fp16 output.
#include "gemmSm80.cuh"

DITAS_INSTANTIATE_GEMM_SM80(4, kFp16)
