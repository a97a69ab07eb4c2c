// CUTLASS SM90 GEMM instantiation: W8 weights, fp16 output (compiled for sm_90a only, with --fmad=false).
#define DITAS_SM90_BITS 8
#include "gemmSm90.cuh"
