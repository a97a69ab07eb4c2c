// CUTLASS SM90 GEMM instantiation: W4 weights, fp16 output (compiled for sm_90a only, with --fmad=false).
#define DITAS_SM90_BITS 4
#include "gemmSm90.cuh"
