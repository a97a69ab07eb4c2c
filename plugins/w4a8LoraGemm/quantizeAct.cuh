// Activation quantize kernel: x (fp16 / fp32) -> x_q int8 with a static per-tensor or dynamic per-row scale and an
// optional smoothing pre-scale, plus the LoRA down-projection lora_act = x . lora_down (raw x) in the same pass.
//
// Arithmetic is the reference's, bit for bit: x' = x * prescale (fp32 multiply), s = max(max|x'|, 1e-6) / 127,
// q = clamp(rint(x' / s), -128, 127) with IEEE division and round-half-even. The LoRA product runs on tensor cores
// (m16n8k16 f16, fp32 accumulation; fp32 inputs are split into fp16 hi + lo parts), so lora_act matches the
// reference to fp32-accumulation tolerance, not bit for bit.
//
// A CTA of 4 warps owns 16 rows; warp w walks the 64-column chunks w, w + 4, ... (fragment layout in
// fragmentMath.h). Rows are reduced across warps through shared memory in a fixed order (deterministic).
#pragma once

#include "fragmentMath.h"
#include "ptx.cuh"
#include "w4a8LoraGemmKernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace ditas
{
namespace quant
{

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxRank = 64;

__host__ __device__ constexpr size_t downBufferHalves(int rank)
{
    return size_t(frag::kQuantChunk) * frag::downStride(rank);
}

__host__ __device__ constexpr size_t smemBytes(int rank)
{
    // per warp two lora_down chunk buffers, then the [warps][16][rank] fp32 cross-warp reduction buffer
    return rank > 0 ? size_t(kWarps) * 2 * downBufferHalves(rank) * 2 + size_t(kWarps) * frag::kQuantRows * rank * 4 : 0;
}

// Eight consecutive input elements of one row: fp32 values plus the fp16 operand words of the LoRA MMA
// (hi = fp16(x); lo = fp16(x - hi), used for fp32 inputs only).
struct Segment
{
    float v[8];
    uint32_t hi[4];
    uint32_t lo[4];
};

__device__ __forceinline__ void loadSegment(__half const* x, bool ok, Segment& s)
{
    uint4 raw = make_uint4(0u, 0u, 0u, 0u);
    if (ok)
    {
        raw = __ldg(reinterpret_cast<uint4 const*>(x));
    }
    s.hi[0] = raw.x;
    s.hi[1] = raw.y;
    s.hi[2] = raw.z;
    s.hi[3] = raw.w;
#pragma unroll
    for (int j = 0; j < 4; ++j)
    {
        __half2 const h = *reinterpret_cast<__half2 const*>(&s.hi[j]);
        float2 const f = __half22float2(h);
        s.v[2 * j] = f.x;
        s.v[2 * j + 1] = f.y;
        s.lo[j] = 0u;
    }
}

__device__ __forceinline__ void loadSegment(float const* x, bool ok, Segment& s)
{
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 b = a;
    if (ok)
    {
        a = __ldg(reinterpret_cast<float4 const*>(x));
        b = __ldg(reinterpret_cast<float4 const*>(x) + 1);
    }
    s.v[0] = a.x;
    s.v[1] = a.y;
    s.v[2] = a.z;
    s.v[3] = a.w;
    s.v[4] = b.x;
    s.v[5] = b.y;
    s.v[6] = b.z;
    s.v[7] = b.w;
#pragma unroll
    for (int j = 0; j < 4; ++j)
    {
        __half2 const h = __floats2half2_rn(s.v[2 * j], s.v[2 * j + 1]);
        float2 const hf = __half22float2(h);
        s.hi[j] = *reinterpret_cast<uint32_t const*>(&h);
        s.lo[j] = ptx::packHalf2(s.v[2 * j] - hf.x, s.v[2 * j + 1] - hf.y);
    }
}

__device__ __forceinline__ void applyPrescale(float (&v)[8], float const* prescale, int col)
{
    if (prescale != nullptr)
    {
        float4 const a = __ldg(reinterpret_cast<float4 const*>(prescale + col));
        float4 const b = __ldg(reinterpret_cast<float4 const*>(prescale + col) + 1);
        float const ps[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int e = 0; e < 8; ++e)
        {
            v[e] = __fmul_rn(v[e], ps[e]);
        }
    }
}

__device__ __forceinline__ float absMax8(float const (&v)[8], float m)
{
#pragma unroll
    for (int e = 0; e < 8; ++e)
    {
        m = fmaxf(m, fabsf(v[e]));
    }
    return m;
}

__device__ __forceinline__ int quantizeOne(float v, float s)
{
    int const q = __float2int_rn(__fdiv_rn(v, s));
    return min(max(q, -128), 127);
}

__device__ __forceinline__ void quantizeStore(float const (&v)[8], float s, int8_t* dst)
{
    uint32_t w[2] = {0u, 0u};
#pragma unroll
    for (int e = 0; e < 8; ++e)
    {
        w[e >> 2] |= (uint32_t(quantizeOne(v[e], s)) & 0xFFu) << (8 * (e & 3));
    }
    *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
}

__device__ __forceinline__ float scaleFromAmax(float amax)
{
    return __fdiv_rn(fmaxf(amax, 1e-6f), 127.0f);
}

// lora_down rows [chunk * 64, chunk * 64 + 64) -> one warp buffer, rows permuted by downSmemRow().
__device__ __forceinline__ void loadDownChunk(__half* buf, __half const* down, int chunk, int K, int rank, int lane)
{
    int const stride = frag::downStride(rank);
    int const chunksPerRow = rank / 8;
    for (int c = lane; c < frag::kQuantChunk * chunksPerRow; c += 32)
    {
        int const kl = c / chunksPerRow;
        int const col = (c % chunksPerRow) * 8;
        int const gk = chunk * frag::kQuantChunk + kl;
        bool const ok = gk < K;
        ptx::cpAsync16(buf + frag::downSmemRow(kl) * stride + col, down + size_t(ok ? gk : 0) * rank + col, ok ? 16 : 0);
    }
}

template <bool kSplit>
__device__ __forceinline__ void loraMma(float (&lacc)[kMaxRank / 8][4], Segment const& r0, Segment const& r1,
    __half const* buf, int sc, int rank, int lane)
{
    int const stride = frag::downStride(rank);
#pragma unroll
    for (int s = 0; s < 2; ++s)
    {
        uint32_t const aHi[4] = {r0.hi[2 * s], r1.hi[2 * s], r0.hi[2 * s + 1], r1.hi[2 * s + 1]};
        uint32_t const aLo[4] = {r0.lo[2 * s], r1.lo[2 * s], r0.lo[2 * s + 1], r1.lo[2 * s + 1]};
#pragma unroll
        for (int np = 0; np < kMaxRank / 16; ++np)
        {
            if (np * 16 < rank)
            {
                uint32_t bf[4];
                ptx::ldmatrixX4Trans(
                    bf, buf + frag::downLdsmRow(sc, s, lane) * stride + frag::downLdsmCol(np * 16, lane));
                ptx::mmaF16(lacc[2 * np], aHi, bf[0], bf[1]);
                ptx::mmaF16(lacc[2 * np + 1], aHi, bf[2], bf[3]);
                if constexpr (kSplit)
                {
                    ptx::mmaF16(lacc[2 * np], aLo, bf[0], bf[1]);
                    ptx::mmaF16(lacc[2 * np + 1], aLo, bf[2], bf[3]);
                }
            }
        }
    }
}

template <typename InT>
__global__ void __launch_bounds__(kThreads) quantizeActKernel(QuantizeParams const p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr bool kSplit = sizeof(InT) == 4;
    extern __shared__ __align__(128) char smem[];
    __shared__ float amaxS[kWarps][frag::kQuantRows];

    int const tid = threadIdx.x;
    int const lane = tid & 31;
    int const warp = tid >> 5;
    int const g = frag::laneGroup(lane);
    int const rowTile = blockIdx.x * frag::kQuantRows;
    int const row0 = rowTile + g;
    int const row1 = row0 + 8;
    bool const ok0 = row0 < p.M;
    bool const ok1 = row1 < p.M;
    int const K = p.K;
    int const nChunks = (K + frag::kQuantChunk - 1) / frag::kQuantChunk;
    bool const dynamicScale = p.actScale == nullptr;
    int const rank = p.rank;
    bool const lora = rank > 0;
    InT const* x = static_cast<InT const*>(p.x);
    __half const* down = static_cast<__half const*>(p.loraDown);
    __half* bufs = reinterpret_cast<__half*>(smem) + size_t(warp) * 2 * downBufferHalves(rank);
    float const sStatic = dynamicScale ? 0.f : p.actScale[0];

    float amax0 = 0.f;
    float amax1 = 0.f;
    float lacc[kMaxRank / 8][4];
#pragma unroll
    for (int nb = 0; nb < kMaxRank / 8; ++nb)
#pragma unroll
        for (int i = 0; i < 4; ++i)
            lacc[nb][i] = 0.f;

    // ---- pass 1: amax and LoRA-down (quantize directly when the scale is static) ----
    if (lora)
    {
        if (warp < nChunks)
        {
            loadDownChunk(bufs, down, warp, K, rank, lane);
        }
        ptx::cpAsyncCommit();
    }
    int it = 0;
    for (int chunk = warp; chunk < nChunks; chunk += kWarps, ++it)
    {
        if (lora)
        {
            if (chunk + kWarps < nChunks)
            {
                loadDownChunk(bufs + ((it + 1) & 1) * downBufferHalves(rank), down, chunk + kWarps, K, rank, lane);
            }
            ptx::cpAsyncCommit();
        }
        Segment seg[2][2]; // [sub-chunk][row half]
#pragma unroll
        for (int sc = 0; sc < 2; ++sc)
        {
            int const col = chunk * frag::kQuantChunk + frag::quantElemCol(lane, sc, 0);
            bool const colOk = col < K; // K % 8 == 0: a segment is entirely inside or outside
            loadSegment(x + size_t(ok0 ? row0 : 0) * K + (colOk ? col : 0), ok0 && colOk, seg[sc][0]);
            loadSegment(x + size_t(ok1 ? row1 : 0) * K + (colOk ? col : 0), ok1 && colOk, seg[sc][1]);
        }
        if (lora)
        {
            ptx::cpAsyncWait<1>();
            __syncwarp();
            __half const* buf = bufs + (it & 1) * downBufferHalves(rank);
#pragma unroll
            for (int sc = 0; sc < 2; ++sc)
            {
                loraMma<kSplit>(lacc, seg[sc][0], seg[sc][1], buf, sc, rank, lane);
            }
            __syncwarp(); // every lane is done with this buffer before it is refilled
        }
#pragma unroll
        for (int sc = 0; sc < 2; ++sc)
        {
            int const col = chunk * frag::kQuantChunk + frag::quantElemCol(lane, sc, 0);
            if (col >= K)
            {
                continue;
            }
#pragma unroll
            for (int h = 0; h < 2; ++h)
            {
                float v[8];
#pragma unroll
                for (int e = 0; e < 8; ++e)
                {
                    v[e] = seg[sc][h].v[e];
                }
                applyPrescale(v, p.prescale, col);
                int const row = h ? row1 : row0;
                bool const ok = h ? ok1 : ok0;
                if (dynamicScale)
                {
                    if (h)
                    {
                        amax1 = absMax8(v, amax1);
                    }
                    else
                    {
                        amax0 = absMax8(v, amax0);
                    }
                }
                else if (ok)
                {
                    quantizeStore(v, sStatic, p.xq + size_t(row) * K + col);
                }
            }
        }
    }

    // ---- cross-lane / cross-warp reductions ----
    if (dynamicScale)
    {
        amax0 = fmaxf(amax0, __shfl_xor_sync(0xFFFFFFFFu, amax0, 1));
        amax0 = fmaxf(amax0, __shfl_xor_sync(0xFFFFFFFFu, amax0, 2));
        amax1 = fmaxf(amax1, __shfl_xor_sync(0xFFFFFFFFu, amax1, 1));
        amax1 = fmaxf(amax1, __shfl_xor_sync(0xFFFFFFFFu, amax1, 2));
        if (frag::laneQuad(lane) == 0)
        {
            amaxS[warp][g] = amax0;
            amaxS[warp][g + 8] = amax1;
        }
    }
    float* loraS = reinterpret_cast<float*>(smem + size_t(kWarps) * 2 * downBufferHalves(rank) * 2);
    if (lora)
    {
#pragma unroll
        for (int nb = 0; nb < kMaxRank / 8; ++nb)
        {
            if (nb * 8 < rank)
            {
#pragma unroll
                for (int i = 0; i < 4; ++i)
                {
                    loraS[(warp * frag::kQuantRows + frag::accRow(lane, i)) * rank + nb * 8 + frag::accCol(lane, i)]
                        = lacc[nb][i];
                }
            }
        }
    }
    __syncthreads();
    if (lora)
    {
        for (int idx = tid; idx < frag::kQuantRows * rank; idx += kThreads)
        {
            int const r = idx / rank;
            int const j = idx % rank;
            float v = loraS[r * rank + j];
#pragma unroll
            for (int w = 1; w < kWarps; ++w)
            {
                v = __fadd_rn(v, loraS[(w * frag::kQuantRows + r) * rank + j]);
            }
            if (rowTile + r < p.M)
            {
                p.loraAct[size_t(rowTile + r) * rank + j] = v;
            }
        }
    }
    if (!dynamicScale)
    {
        if (blockIdx.x == 0 && tid == 0)
        {
            p.xScale[0] = sStatic;
        }
        return;
    }

    // ---- pass 2 (dynamic scale): quantize with the row scales ----
    float a0 = 0.f;
    float a1 = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w)
    {
        a0 = fmaxf(a0, amaxS[w][g]);
        a1 = fmaxf(a1, amaxS[w][g + 8]);
    }
    float const s0 = scaleFromAmax(a0);
    float const s1 = scaleFromAmax(a1);
    if (warp == 0 && frag::laneQuad(lane) == 0)
    {
        if (ok0)
        {
            p.xScale[row0] = s0;
        }
        if (ok1)
        {
            p.xScale[row1] = s1;
        }
    }
    for (int chunk = warp; chunk < nChunks; chunk += kWarps)
    {
#pragma unroll
        for (int sc = 0; sc < 2; ++sc)
        {
            int const col = chunk * frag::kQuantChunk + frag::quantElemCol(lane, sc, 0);
            if (col >= K)
            {
                continue;
            }
#pragma unroll
            for (int h = 0; h < 2; ++h)
            {
                int const row = h ? row1 : row0;
                if (!(h ? ok1 : ok0))
                {
                    continue;
                }
                Segment seg;
                loadSegment(x + size_t(row) * K + col, true, seg);
                applyPrescale(seg.v, p.prescale, col);
                quantizeStore(seg.v, h ? s1 : s0, p.xq + size_t(row) * K + col);
            }
        }
    }
#endif
}

} // namespace quant

template <typename InT>
cudaError_t launchQuantizeAct(QuantizeParams const& p, cudaStream_t stream)
{
    size_t const smem = quant::smemBytes(p.rank);
    auto kernel = quant::quantizeActKernel<InT>;
    // the kernel also has static shared memory: opt in whenever there is dynamic shared memory at all
    if (smem > 0)
    {
        cudaError_t const e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        if (e != cudaSuccess)
        {
            return e;
        }
    }
    unsigned const grid = unsigned((p.M + frag::kQuantRows - 1) / frag::kQuantRows);
    kernel<<<grid, quant::kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

} // namespace ditas

#define DITAS_INSTANTIATE_QUANTIZE_ACT(IN_T)                                                                            \
    template cudaError_t ditas::launchQuantizeAct<IN_T>(ditas::QuantizeParams const&, cudaStream_t);
