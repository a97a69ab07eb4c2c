// SIMT fallback kernels: any even K, any group size dividing K, any N, any rank, any alignment.
//
// Used when a call misses the alignment rules of the tensor-core paths (see README.md). Slow (one thread per
// output, no tiling) but with the same arithmetic: per-channel epilogue fl(fl(fl(acc * w_scale) * s_x) + bias),
// per-group fold with fmaf, LoRA-up in fp32 (no fp16 rounding of lora_act).
#pragma once

#include "w4a8LoraGemmKernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace ditas
{
namespace generic
{

constexpr int kGemmThreads = 128;
constexpr int kQuantThreads = 256;

template <int kBits>
__device__ __forceinline__ int weightCode(void const* w, int n, int k, int K)
{
    if constexpr (kBits == 8)
    {
        return static_cast<int8_t const*>(w)[size_t(n) * K + k];
    }
    else
    {
        uint8_t const byte = static_cast<uint8_t const*>(w)[size_t(n) * (K / 2) + k / 2];
        int const nib = (k & 1) ? (byte >> 4) : (byte & 0xF);
        return nib >= 8 ? nib - 16 : nib;
    }
}

template <int kBits, OutKind kOut>
__global__ void __launch_bounds__(kGemmThreads) gemmGenericKernel(GemmParams const p)
{
    int const n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= p.N)
    {
        return;
    }
    int const groupSize = p.K / p.numGroups;
    for (int m = blockIdx.y; m < p.M; m += gridDim.y)
    {
        int8_t const* x = static_cast<int8_t const*>(p.xq) + size_t(m) * p.K;
        int32_t total = 0;
        float facc = 0.f;
        for (int g = 0; g < p.numGroups; ++g)
        {
            int32_t acc = 0;
            for (int k = g * groupSize; k < (g + 1) * groupSize; ++k)
            {
                acc += int32_t(x[k]) * weightCode<kBits>(p.weight, n, k, p.K);
            }
            total += acc;
            float const ws = p.wScale[size_t(n) * p.numGroups + g];
            facc = p.numGroups == 1 ? __fmul_rn(float(acc), ws) : fmaf(float(acc), ws, facc);
        }
        size_t const idx = size_t(m) * p.N + n;
        if constexpr (kOut == OutKind::kInt32)
        {
            static_cast<int32_t*>(p.out)[idx] = total;
        }
        else
        {
            float y = __fmul_rn(facc, p.xScale[p.xScalePerRow ? m : 0]);
            if (p.bias != nullptr)
            {
                y = __fadd_rn(y, p.bias[n]);
            }
            if (p.rank > 0)
            {
                __half const* up = static_cast<__half const*>(p.loraUp);
                float l = 0.f;
                for (int j = 0; j < p.rank; ++j)
                {
                    l = fmaf(p.loraAct[size_t(m) * p.rank + j], __half2float(up[size_t(j) * p.N + n]), l);
                }
                y = __fadd_rn(y, l);
            }
            if constexpr (kOut == OutKind::kFp16)
            {
                static_cast<__half*>(p.out)[idx] = __float2half_rn(y);
            }
            else
            {
                static_cast<float*>(p.out)[idx] = y;
            }
        }
    }
}

// Block-wide reductions (blockDim.x == kQuantThreads).
__device__ __forceinline__ float blockMax(float v, float* scratch)
{
    for (int o = 16; o > 0; o >>= 1)
    {
        v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    }
    int const warp = threadIdx.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
    {
        scratch[warp] = v;
    }
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < kQuantThreads / 32; ++w)
    {
        r = fmaxf(r, scratch[w]);
    }
    return r;
}

__device__ __forceinline__ float blockSum(float v, float* scratch)
{
    for (int o = 16; o > 0; o >>= 1)
    {
        v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    }
    int const warp = threadIdx.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
    {
        scratch[warp] = v;
    }
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < kQuantThreads / 32; ++w)
    {
        r += scratch[w];
    }
    return r;
}

template <typename InT>
__device__ __forceinline__ float toFloat(InT v)
{
    if constexpr (sizeof(InT) == 2)
    {
        return __half2float(v);
    }
    else
    {
        return v;
    }
}

template <typename InT>
__global__ void __launch_bounds__(kQuantThreads) quantizeActGenericKernel(QuantizeParams const p)
{
    __shared__ float scratch[kQuantThreads / 32];
    InT const* xAll = static_cast<InT const*>(p.x);
    __half const* down = static_cast<__half const*>(p.loraDown);
    for (int m = blockIdx.x; m < p.M; m += gridDim.x)
    {
        InT const* x = xAll + size_t(m) * p.K;
        float s;
        if (p.actScale != nullptr)
        {
            s = p.actScale[0];
        }
        else
        {
            float amax = 0.f;
            for (int k = threadIdx.x; k < p.K; k += kQuantThreads)
            {
                float v = toFloat(x[k]);
                if (p.prescale != nullptr)
                {
                    v = __fmul_rn(v, p.prescale[k]);
                }
                amax = fmaxf(amax, fabsf(v));
            }
            amax = blockMax(amax, scratch);
            s = __fdiv_rn(fmaxf(amax, 1e-6f), 127.0f);
            if (threadIdx.x == 0)
            {
                p.xScale[m] = s;
            }
        }
        for (int k = threadIdx.x; k < p.K; k += kQuantThreads)
        {
            float v = toFloat(x[k]);
            if (p.prescale != nullptr)
            {
                v = __fmul_rn(v, p.prescale[k]);
            }
            int const q = __float2int_rn(__fdiv_rn(v, s));
            p.xq[size_t(m) * p.K + k] = int8_t(min(max(q, -128), 127));
        }
        for (int j = 0; j < p.rank; ++j)
        {
            float part = 0.f;
            for (int k = threadIdx.x; k < p.K; k += kQuantThreads)
            {
                part = fmaf(toFloat(x[k]), __half2float(down[size_t(k) * p.rank + j]), part);
            }
            float const total = blockSum(part, scratch);
            if (threadIdx.x == 0)
            {
                p.loraAct[size_t(m) * p.rank + j] = total;
            }
        }
    }
    if (p.actScale != nullptr && blockIdx.x == 0 && threadIdx.x == 0)
    {
        p.xScale[0] = p.actScale[0];
    }
}

} // namespace generic

template <int kBits>
cudaError_t launchGemmGeneric(GemmParams const& p, OutKind out, cudaStream_t stream)
{
    dim3 const grid(unsigned((p.N + generic::kGemmThreads - 1) / generic::kGemmThreads), unsigned(p.M < 65535 ? p.M : 65535));
    switch (out)
    {
    case OutKind::kFp16:
        generic::gemmGenericKernel<kBits, OutKind::kFp16><<<grid, generic::kGemmThreads, 0, stream>>>(p);
        break;
    case OutKind::kFp32:
        generic::gemmGenericKernel<kBits, OutKind::kFp32><<<grid, generic::kGemmThreads, 0, stream>>>(p);
        break;
    case OutKind::kInt32:
        generic::gemmGenericKernel<kBits, OutKind::kInt32><<<grid, generic::kGemmThreads, 0, stream>>>(p);
        break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

template <typename InT>
cudaError_t launchQuantizeActGeneric(QuantizeParams const& p, cudaStream_t stream)
{
    unsigned const grid = unsigned(p.M < 65535 ? p.M : 65535);
    generic::quantizeActGenericKernel<InT><<<grid, generic::kQuantThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

} // namespace ditas

#define DITAS_INSTANTIATE_GEMM_GENERIC(BITS)                                                                            \
    template cudaError_t ditas::launchGemmGeneric<BITS>(ditas::GemmParams const&, ditas::OutKind, cudaStream_t);
#define DITAS_INSTANTIATE_QUANTIZE_ACT_GENERIC(IN_T)                                                                    \
    template cudaError_t ditas::launchQuantizeActGeneric<IN_T>(ditas::QuantizeParams const&, cudaStream_t);
