// Thin wrappers over the PTX instructions the SM80+ kernels use (cp.async, ldmatrix, mma.sync).
#pragma once

#include <cstdint>
#include <cuda_fp16.h>

namespace ditas
{
namespace ptx
{

__device__ __forceinline__ uint32_t smemAddr(void const* p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy, bypassing L1; srcBytes < 16 zero-fills the rest (0: all zeros, src not read).
__device__ __forceinline__ void cpAsync16(void* smem, void const* gmem, int srcBytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddr(smem)), "l"(gmem), "r"(srcBytes));
}

__device__ __forceinline__ void cpAsync16(uint32_t smem, void const* gmem, int srcBytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(srcBytes));
}

// 4-byte global -> shared copy (through L1); srcBytes 0 writes zeros.
__device__ __forceinline__ void cpAsync4(uint32_t smem, void const* gmem, int srcBytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem), "l"(gmem), "r"(srcBytes));
}

__device__ __forceinline__ void cpAsyncCommit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ __forceinline__ void cpAsyncWait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four transposed 8x8 b16 matrices; lane i gives the row address of row (i & 7) of matrix (i >> 3).
__device__ __forceinline__ void ldmatrixX4Trans(uint32_t (&r)[4], void const* smemRow)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smemAddr(smemRow)));
}

// d = a[16x32 s8] * b[32x8 s8] + d (s32)
__device__ __forceinline__ void mmaS8(int32_t (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d = a[16x16 f16] * b[16x8 f16] + d (f32)
__device__ __forceinline__ void mmaF16(float (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t packHalf2(float lo, float hi)
{
    __half2 const h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t const*>(&h);
}

} // namespace ptx
} // namespace ditas
