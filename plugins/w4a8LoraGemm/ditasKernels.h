/*
 * ditas-trt kernels: C API of libditas_kernels.so (torch-free, TensorRT-free, no CUDA header needed).
 *
 * Every launcher takes device pointers, sizes and a CUDA stream, enqueues its kernels and returns a cudaError_t
 * as int (0 = cudaSuccess). Argument errors return 1 (cudaErrorInvalidValue) without launching anything;
 * ditasGetLastErrorString() then says why. Nothing here synchronizes, allocates or aborts, so the launchers are
 * safe inside CUDA-graph capture (after a first call outside capture, which sets kernel attributes).
 *
 * Tensor layouts are those of ditas_trt/quant/format.py (see README.md in this folder):
 *   x         fp16/fp32 [M, K]       row-major
 *   x_q       int8      [M, K]
 *   x_scale   fp32      [1] (static) or [M] (per row)
 *   qweight   uint8     [N, K/2] two's-complement INT4, low nibble = even k   (W8A8: int8 [N, K])
 *   w_scale   fp32      [N, numGroups], group size G = K / numGroups
 *   bias      fp32      [N]
 *   lora_down fp16      [K, r];  lora_act fp32 [M, r];  lora_up fp16 [r, N]
 *   y         fp16/fp32 [M, N]
 *
 * The parser in tests/test_kernels.py reads the prototypes below (one declaration per DITAS_API line group) and
 * checks them against the ctypes signatures in ditas_trt/ops/cuda.py; keep the one-parameter-per-comma style.
 */
#ifndef DITAS_KERNELS_H
#define DITAS_KERNELS_H

#include <stdint.h>

#if defined(_WIN32)
#define DITAS_API __declspec(dllexport)
#else
#define DITAS_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Same type as cudaStream_t (struct CUstream_st*); NULL is the legacy default stream. */
typedef struct CUstream_st* ditasStream_t;

#define DITAS_KERNELS_API_VERSION 1

/* Data types of x and y. */
#define DITAS_DTYPE_FP16 0
#define DITAS_DTYPE_FP32 1

/* Kernel family selection ("path"); AUTO picks by device, shape and alignment. Forcing a path whose requirements
 * the call does not meet returns an error instead of falling back. */
#define DITAS_PATH_AUTO 0
#define DITAS_PATH_SM80_LARGE 1 /* mma.sync, 128 x 128 CTA tile (SM80+) */
#define DITAS_PATH_SM80_SMALL 2 /* mma.sync, 64 x 64 CTA tile (SM80+) */
#define DITAS_PATH_SM90_CUTLASS 3 /* CUTLASS TMA + wgmma (SM90 only; per-channel, no LoRA, fp16 out) */
#define DITAS_PATH_GENERIC 4 /* SIMT fallback (any alignment) */
#define DITAS_PATH_FAST 5 /* quantize only: the tensor-core kernel */

/* Version of this API (DITAS_KERNELS_API_VERSION of the build). */
DITAS_API int ditasKernelsApiVersion(void);

/* Build description, e.g. "api=1 archs=80,86,89,90a sm90_cutlass=1". */
DITAS_API const char* ditasKernelsBuildInfo(void);

/* Message of the last failed call on this thread ("" after a successful call). */
DITAS_API const char* ditasGetLastErrorString(void);

/* DITAS_PATH_* that the last successful GEMM or quantize call on this thread ran. */
DITAS_API int ditasLastPath(void);

/* x -> (x_q, x_scale, lora_act). actScale NULL: dynamic per-row scales into xScale[M]; otherwise xScale[0] =
 * actScale[0]. actPrescale may be NULL. rank 0: no LoRA (loraDown, loraAct unused). path: AUTO, FAST or GENERIC. */
DITAS_API int ditasQuantizeAct(
    const void* x,
    int xDtype,
    const float* actScale,
    const float* actPrescale,
    const void* loraDown,
    int rank,
    void* xq,
    float* xScale,
    float* loraAct,
    int M,
    int K,
    int path,
    ditasStream_t stream);

/* y = (sum_g acc_g * wScale[:, g]) * xScale + bias + loraAct . loraUp, acc = INT32 sums of x_q * INT4 codes.
 * bias may be NULL; rank 0 (loraAct, loraUp NULL) skips the LoRA add. */
DITAS_API int ditasW4A8Gemm(
    const void* xq,
    const float* xScale,
    int xScalePerRow,
    const void* qweight,
    const float* wScale,
    int numGroups,
    const float* bias,
    const float* loraAct,
    const void* loraUp,
    int rank,
    void* y,
    int yDtype,
    int M,
    int N,
    int K,
    int path,
    ditasStream_t stream);

/* As ditasW4A8Gemm with int8 [N, K] weights. */
DITAS_API int ditasW8A8Gemm(
    const void* xq,
    const float* xScale,
    int xScalePerRow,
    const void* qweight,
    const float* wScale,
    int numGroups,
    const float* bias,
    const float* loraAct,
    const void* loraUp,
    int rank,
    void* y,
    int yDtype,
    int M,
    int N,
    int K,
    int path,
    ditasStream_t stream);

/* Test hook: acc[m, n] = sum_k x_q[m, k] * code[n, k] over all K, as int32 [M, N] (no scales). path: AUTO,
 * SM80_LARGE, SM80_SMALL or GENERIC (the CUTLASS path has no INT32 output). */
DITAS_API int ditasW4A8GemmAccumulators(
    const void* xq,
    const void* qweight,
    int32_t* acc,
    int M,
    int N,
    int K,
    int path,
    ditasStream_t stream);

DITAS_API int ditasW8A8GemmAccumulators(
    const void* xq,
    const void* qweight,
    int32_t* acc,
    int M,
    int N,
    int K,
    int path,
    ditasStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* DITAS_KERNELS_H */
