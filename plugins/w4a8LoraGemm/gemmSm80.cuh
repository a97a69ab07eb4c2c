// W4A8 / W8A8 GEMM with INT32 accumulation and fused epilogue, mma.sync family (SM80, SM86, SM89; runs on SM90).
//
//   y[m, n] = (sum_g float(acc[m, n, g]) * w_scale[n, g]) * s_x[m] + bias[n] + (lora_act[m, :] . lora_up[:, n])
//
// Main loop: cp.async multistage pipeline (global -> shared, zero-fill outside M / N), per-lane 16-code k spans
// loaded with one 16-byte (A, W8) or 8-byte (W4) shared load, INT4 -> INT8 unpack in registers (3 logic ops and
// 2 byte permutes per 8 codes, codes scaled by 16, exact), mma.sync.m16n8k32 s8 with s32 accumulation. Weight
// groups (G a multiple of 64) are folded into fp32 accumulators at each group end with scales staged through
// shared memory together with the tiles. Epilogue: scales, bias and the LoRA-up product as m16n8k16 f16 MMAs
// (lora_act rounded to fp16, fp32 accumulation) on tiles loaded by cp.async at kernel start. The index math is in
// fragmentMath.h and is checked on the host by test/fragmentMathTest.cpp.
#pragma once

#include "fragmentMath.h"
#include "ptx.cuh"
#include "w4a8LoraGemmKernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace ditas
{
namespace sm80
{

template <int kBits_, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
struct Config
{
    static constexpr int kBits = kBits_;
    static constexpr int kBM = BM;
    static constexpr int kBN = BN;
    static constexpr int kWarpsM = WARPS_M;
    static constexpr int kWarpsN = WARPS_N;
    static constexpr int kStages = STAGES;
    static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
    static constexpr int kWM = BM / WARPS_M;
    static constexpr int kWN = BN / WARPS_N;
    static constexpr int kMI = kWM / 16;
    static constexpr int kNI = kWN / 8;
    static constexpr int kABytes = BM * frag::kBK;
    static constexpr int kBBytes = BN * frag::bRowBytes<kBits>();
    static constexpr int kScaleBytes = BN * 4; // per-group weight scales of the stage's k-tile
    static constexpr int kStageBytes = kABytes + kBBytes + kScaleBytes;
    static constexpr int kPipelineBytes = STAGES * kStageBytes;

    static_assert(kWM % 16 == 0 && kWN % 16 == 0, "warp tile must be a multiple of 16 x 16");
    static_assert((BM * 4) % kThreads == 0, "A tile chunks must divide evenly among threads");
    static_assert(kStageBytes % 16 == 0, "stage size must keep 16-byte alignment");

    __host__ __device__ static constexpr size_t loraActBytes(int rank) { return size_t(BM) * frag::loraActStride(rank) * 4; }
    __host__ __device__ static constexpr size_t loraUpBytes(int rank) { return size_t(rank) * frag::loraUpStride<BN>() * 2; }
    __host__ __device__ static constexpr size_t smemBytes(int rank)
    {
        return kPipelineBytes + (rank > 0 ? loraActBytes(rank) + loraUpBytes(rank) : 0);
    }
};

template <int kBits>
using LargeConfig = Config<kBits, 128, 128, 2, 4, (kBits == 4 ? 4 : 3)>;
template <int kBits>
using SmallConfig = Config<kBits, 64, 64, 2, 2, 4>;

// ---------------------------------------------------------------------------------------------------------------
// Global -> shared loads
// ---------------------------------------------------------------------------------------------------------------
template <class Cfg>
__device__ __forceinline__ void loadStage(char* stage, GemmParams const& p, int m0, int n0, int kt, bool grouped,
    int tilesPerGroup)
{
    constexpr int kBits = Cfg::kBits;
    int const tid = threadIdx.x;
    int8_t const* xq = static_cast<int8_t const*>(p.xq);
#pragma unroll
    for (int it = 0; it < Cfg::kBM * 4 / Cfg::kThreads; ++it)
    {
        int const c = tid + it * Cfg::kThreads;
        int const row = c >> 2;
        int const col = (c & 3) * 16;
        int const gm = m0 + row;
        bool const ok = gm < p.M;
        int8_t const* src = xq + size_t(ok ? gm : 0) * p.K + size_t(kt) * frag::kBK + col;
        ptx::cpAsync16(stage + row * frag::kBK + col, src, ok ? 16 : 0);
    }
    constexpr int kRowBytes = frag::bRowBytes<kBits>();
    constexpr int kChunksPerRow = kRowBytes / 16;
    uint8_t const* w = static_cast<uint8_t const*>(p.weight);
    size_t const wRowBytes = size_t(p.K) * kBits / 8;
    static_assert((Cfg::kBN * kChunksPerRow) % Cfg::kThreads == 0, "B tile chunks must divide evenly among threads");
#pragma unroll
    for (int it = 0; it < Cfg::kBN * kChunksPerRow / Cfg::kThreads; ++it)
    {
        int const c = tid + it * Cfg::kThreads;
        int const row = c / kChunksPerRow;
        int const col = (c % kChunksPerRow) * 16;
        int const gn = n0 + row;
        bool const ok = gn < p.N;
        uint8_t const* src = w + size_t(ok ? gn : 0) * wRowBytes + size_t(kt) * kRowBytes + col;
        ptx::cpAsync16(stage + Cfg::kABytes + row * kRowBytes + col, src, ok ? 16 : 0);
    }
    if (grouped)
    {
        int const g = kt / tilesPerGroup;
        float* dst = reinterpret_cast<float*>(stage + Cfg::kABytes + Cfg::kBBytes);
        for (int c = tid; c < Cfg::kBN; c += Cfg::kThreads)
        {
            int const gn = n0 + c;
            bool const ok = gn < p.N;
            ptx::cpAsync4(dst + c, p.wScale + size_t(ok ? gn : 0) * p.numGroups + g, ok ? 4 : 0);
        }
    }
}

template <class Cfg>
__device__ __forceinline__ void loadLoraTiles(char* smem, GemmParams const& p, int m0, int n0)
{
    int const rank = p.rank;
    int const tid = threadIdx.x;
    float* la = reinterpret_cast<float*>(smem + Cfg::kPipelineBytes);
    __half* up = reinterpret_cast<__half*>(smem + Cfg::kPipelineBytes + Cfg::loraActBytes(rank));
    int const laStride = frag::loraActStride(rank);
    constexpr int kUpStride = frag::loraUpStride<Cfg::kBN>();
    float const* loraAct = p.loraAct;
    __half const* loraUp = static_cast<__half const*>(p.loraUp);

    int const actChunks = rank / 4; // 16-byte chunks per lora_act row
    for (int c = tid; c < Cfg::kBM * actChunks; c += Cfg::kThreads)
    {
        int const row = c / actChunks;
        int const col = (c % actChunks) * 4;
        int const gm = m0 + row;
        bool const ok = gm < p.M;
        ptx::cpAsync16(la + row * laStride + col, loraAct + size_t(ok ? gm : 0) * rank + col, ok ? 16 : 0);
    }
    constexpr int kUpChunks = Cfg::kBN / 8; // 16-byte chunks per lora_up tile row
    for (int c = tid; c < rank * kUpChunks; c += Cfg::kThreads)
    {
        int const row = c / kUpChunks;
        int const col = (c % kUpChunks) * 8;
        int const gn = n0 + col;
        bool const ok = gn < p.N; // N % 8 == 0: a chunk is entirely inside or outside
        ptx::cpAsync16(up + row * kUpStride + col, loraUp + size_t(row) * p.N + (ok ? gn : 0), ok ? 16 : 0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// One k-tile of MMAs
// ---------------------------------------------------------------------------------------------------------------
template <class Cfg>
__device__ __forceinline__ void computeStage(
    char const* stage, int32_t (&acc)[Cfg::kMI][Cfg::kNI][4], int warpM, int warpN, int lane)
{
    constexpr int kBits = Cfg::kBits;
    uint32_t a[Cfg::kMI][2][4];
#pragma unroll
    for (int mi = 0; mi < Cfg::kMI; ++mi)
    {
#pragma unroll
        for (int h = 0; h < 2; ++h)
        {
            uint4 const v = *reinterpret_cast<uint4 const*>(stage + frag::aSpanOffset(warpM * Cfg::kWM + mi * 16, lane, h));
            a[mi][h][0] = v.x;
            a[mi][h][1] = v.y;
            a[mi][h][2] = v.z;
            a[mi][h][3] = v.w;
        }
    }
    uint32_t b[Cfg::kNI][4];
    char const* bTile = stage + Cfg::kABytes;
#pragma unroll
    for (int ni = 0; ni < Cfg::kNI; ++ni)
    {
        int const off = frag::bSpanOffset<kBits>(warpN * Cfg::kWN + ni * 8, lane);
        if constexpr (kBits == 8)
        {
            uint4 const v = *reinterpret_cast<uint4 const*>(bTile + off);
            b[ni][0] = v.x;
            b[ni][1] = v.y;
            b[ni][2] = v.z;
            b[ni][3] = v.w;
        }
        else
        {
            uint2 const v = *reinterpret_cast<uint2 const*>(bTile + off);
            frag::unpackInt4x8(v.x, b[ni][0], b[ni][1]);
            frag::unpackInt4x8(v.y, b[ni][2], b[ni][3]);
        }
    }
#pragma unroll
    for (int s = 0; s < 2; ++s)
    {
#pragma unroll
        for (int mi = 0; mi < Cfg::kMI; ++mi)
        {
            uint32_t const af[4] = {a[mi][0][frag::spanReg(s, 0)], a[mi][1][frag::spanReg(s, 0)],
                a[mi][0][frag::spanReg(s, 1)], a[mi][1][frag::spanReg(s, 1)]};
#pragma unroll
            for (int ni = 0; ni < Cfg::kNI; ++ni)
            {
                ptx::mmaS8(acc[mi][ni], af, b[ni][frag::spanReg(s, 0)], b[ni][frag::spanReg(s, 1)]);
            }
        }
    }
}

// acc (x16 for W4) * 1/16: exact power-of-two rescaling of the weight scale instead of a shift per element.
template <int kBits>
__device__ __forceinline__ constexpr float accScale()
{
    return kBits == 4 ? 0.0625f : 1.0f;
}

template <class Cfg>
__device__ __forceinline__ void foldGroup(char const* stage, int32_t (&acc)[Cfg::kMI][Cfg::kNI][4],
    float (&facc)[Cfg::kMI][Cfg::kNI][4], int warpN, int lane)
{
    float const* ws = reinterpret_cast<float const*>(stage + Cfg::kABytes + Cfg::kBBytes);
#pragma unroll
    for (int ni = 0; ni < Cfg::kNI; ++ni)
    {
#pragma unroll
        for (int i = 0; i < 2; ++i)
        {
            float const s = ws[warpN * Cfg::kWN + ni * 8 + frag::accCol(lane, i)] * accScale<Cfg::kBits>();
#pragma unroll
            for (int mi = 0; mi < Cfg::kMI; ++mi)
            {
                facc[mi][ni][i] = fmaf(float(acc[mi][ni][i]), s, facc[mi][ni][i]);
                facc[mi][ni][i + 2] = fmaf(float(acc[mi][ni][i + 2]), s, facc[mi][ni][i + 2]);
                acc[mi][ni][i] = 0;
                acc[mi][ni][i + 2] = 0;
            }
        }
    }
}

template <OutKind kOut>
__device__ __forceinline__ void storePair(void* out, size_t idx, float v0, float v1)
{
    if constexpr (kOut == OutKind::kFp16)
    {
        *reinterpret_cast<__half2*>(static_cast<__half*>(out) + idx) = __floats2half2_rn(v0, v1);
    }
    else
    {
        *reinterpret_cast<float2*>(static_cast<float*>(out) + idx) = make_float2(v0, v1);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Kernel
// ---------------------------------------------------------------------------------------------------------------
template <class Cfg, OutKind kOut>
__global__ void __launch_bounds__(Cfg::kThreads, 1) gemmSm80Kernel(GemmParams const p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int kBits = Cfg::kBits;
    constexpr int MI = Cfg::kMI;
    constexpr int NI = Cfg::kNI;
    extern __shared__ __align__(128) char smem[];

    int const tid = threadIdx.x;
    int const lane = tid & 31;
    int const warp = tid >> 5;
    int const warpM = warp / Cfg::kWarpsN;
    int const warpN = warp % Cfg::kWarpsN;
    int const m0 = blockIdx.y * Cfg::kBM;
    int const n0 = blockIdx.x * Cfg::kBN;
    int const kTiles = p.K / frag::kBK;
    constexpr bool kEpilogue = kOut != OutKind::kInt32;
    bool const grouped = kEpilogue && p.numGroups > 1;
    int const tilesPerGroup = kTiles / p.numGroups;
    bool const lora = kEpilogue && p.rank > 0;

    // Prologue: LoRA tiles join the first commit group, so the main loop's first wait covers them.
    if (lora)
    {
        loadLoraTiles<Cfg>(smem, p, m0, n0);
    }
#pragma unroll
    for (int s = 0; s < Cfg::kStages - 1; ++s)
    {
        if (s < kTiles)
        {
            loadStage<Cfg>(smem + s * Cfg::kStageBytes, p, m0, n0, s, grouped, tilesPerGroup);
        }
        ptx::cpAsyncCommit();
    }

    int32_t acc[MI][NI][4];
    float facc[MI][NI][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
                acc[mi][ni][i] = 0;
                facc[mi][ni][i] = 0.f;
            }

    for (int kt = 0; kt < kTiles; ++kt)
    {
        ptx::cpAsyncWait<Cfg::kStages - 2>();
        __syncthreads(); // tile kt visible to all; every warp is done with tile kt - 1, whose slot is refilled next
        int const next = kt + Cfg::kStages - 1;
        if (next < kTiles)
        {
            loadStage<Cfg>(smem + (next % Cfg::kStages) * Cfg::kStageBytes, p, m0, n0, next, grouped, tilesPerGroup);
        }
        ptx::cpAsyncCommit();
        char const* stage = smem + (kt % Cfg::kStages) * Cfg::kStageBytes;
        computeStage<Cfg>(stage, acc, warpM, warpN, lane);
        if constexpr (kEpilogue)
        {
            if (grouped && (kt + 1) % tilesPerGroup == 0)
            {
                foldGroup<Cfg>(stage, acc, facc, warpN, lane);
            }
        }
    }
    ptx::cpAsyncWait<0>();
    __syncthreads();

    int const rowBase = m0 + warpM * Cfg::kWM;
    int const colBase = n0 + warpN * Cfg::kWN;

    if constexpr (!kEpilogue)
    {
        int32_t* out = static_cast<int32_t*>(p.out);
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int i = 0; i < 4; i += 2)
                {
                    int const row = rowBase + mi * 16 + frag::accRow(lane, i);
                    int const col = colBase + ni * 8 + frag::accCol(lane, i);
                    if (row < p.M && col < p.N)
                    {
                        int const shift = kBits == 4 ? 4 : 0;
                        *reinterpret_cast<int2*>(out + size_t(row) * p.N + col)
                            = make_int2(acc[mi][ni][i] >> shift, acc[mi][ni][i + 1] >> shift);
                    }
                }
        (void) facc;
    }
    else
    {
        // Per-channel: one product per element, exactly the reference's float(acc) * w_scale.
        if (!grouped)
        {
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int i = 0; i < 2; ++i)
                {
                    int const col = colBase + ni * 8 + frag::accCol(lane, i);
                    float const s = p.wScale[col < p.N ? col : 0] * accScale<kBits>();
#pragma unroll
                    for (int mi = 0; mi < MI; ++mi)
                    {
                        facc[mi][ni][i] = __fmul_rn(float(acc[mi][ni][i]), s);
                        facc[mi][ni][i + 2] = __fmul_rn(float(acc[mi][ni][i + 2]), s);
                    }
                }
        }
        float biasv[NI][2];
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int i = 0; i < 2; ++i)
            {
                int const col = colBase + ni * 8 + frag::accCol(lane, i);
                biasv[ni][i] = p.bias != nullptr ? p.bias[col < p.N ? col : 0] : 0.f;
            }
        int const rank = p.rank;
        int const laStride = frag::loraActStride(rank);
        constexpr int kUpStride = frag::loraUpStride<Cfg::kBN>();
        float const* la = reinterpret_cast<float const*>(smem + Cfg::kPipelineBytes);
        __half const* up = reinterpret_cast<__half const*>(smem + Cfg::kPipelineBytes + Cfg::loraActBytes(rank));

#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
        {
            float lacc[NI][4];
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    lacc[ni][i] = 0.f;
            if (lora)
            {
                int const tileRow = warpM * Cfg::kWM + mi * 16;
                for (int kk = 0; kk < rank; kk += 16)
                {
                    uint32_t af[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                    {
                        float2 const v = *reinterpret_cast<float2 const*>(
                            la + (tileRow + frag::f16ARow(lane, j)) * laStride + kk + frag::f16ACol(lane, j));
                        af[j] = ptx::packHalf2(v.x, v.y);
                    }
#pragma unroll
                    for (int np = 0; np < NI / 2; ++np)
                    {
                        uint32_t bf[4];
                        ptx::ldmatrixX4Trans(bf,
                            up + frag::upLdsmRow(kk, lane) * kUpStride
                                + frag::upLdsmCol(warpN * Cfg::kWN + np * 16, lane));
                        ptx::mmaF16(lacc[2 * np], af, bf[0], bf[1]);
                        ptx::mmaF16(lacc[2 * np + 1], af, bf[2], bf[3]);
                    }
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h)
            {
                int const row = rowBase + mi * 16 + frag::accRow(lane, 2 * h);
                if (row >= p.M)
                {
                    continue;
                }
                float const sx = p.xScale[p.xScalePerRow ? row : 0];
#pragma unroll
                for (int ni = 0; ni < NI; ++ni)
                {
                    int const col = colBase + ni * 8 + frag::accCol(lane, 0);
                    if (col >= p.N)
                    {
                        continue;
                    }
                    float v[2];
#pragma unroll
                    for (int e = 0; e < 2; ++e)
                    {
                        float y = __fmul_rn(facc[mi][ni][2 * h + e], sx);
                        if (p.bias != nullptr)
                        {
                            y = __fadd_rn(y, biasv[ni][e]);
                        }
                        if (lora)
                        {
                            y = __fadd_rn(y, lacc[ni][2 * h + e]);
                        }
                        v[e] = y;
                    }
                    storePair<kOut>(p.out, size_t(row) * p.N + col, v[0], v[1]);
                }
            }
        }
    }
#endif
}

// ---------------------------------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------------------------------
template <class Cfg, OutKind kOut>
cudaError_t launchConfig(GemmParams const& p, cudaStream_t stream)
{
    int const rank = kOut == OutKind::kInt32 ? 0 : p.rank;
    size_t const smem = Cfg::smemBytes(rank);
    auto kernel = gemmSm80Kernel<Cfg, kOut>;
    if (smem > 48 * 1024)
    {
        cudaError_t const e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        if (e != cudaSuccess)
        {
            return e;
        }
    }
    unsigned const gridN = unsigned((p.N + Cfg::kBN - 1) / Cfg::kBN);
    unsigned const gridM = unsigned((p.M + Cfg::kBM - 1) / Cfg::kBM);
    if (gridM > 65535u)
    {
        return cudaErrorInvalidConfiguration;
    }
    kernel<<<dim3(gridN, gridM), Cfg::kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

} // namespace sm80

template <int kBits, OutKind kOut>
cudaError_t launchGemmSm80(GemmParams const& p, Sm80Tile tile, cudaStream_t stream)
{
    if (tile == Sm80Tile::kLarge)
    {
        return sm80::launchConfig<sm80::LargeConfig<kBits>, kOut>(p, stream);
    }
    return sm80::launchConfig<sm80::SmallConfig<kBits>, kOut>(p, stream);
}

} // namespace ditas

// One instantiation per .cu file (gemmSm80_w{4,8}_{fp16,fp32,i32}.cu).
#define DITAS_INSTANTIATE_GEMM_SM80(BITS, OUT)                                                                          \
    template cudaError_t ditas::launchGemmSm80<BITS, ditas::OutKind::OUT>(                                              \
        ditas::GemmParams const&, ditas::Sm80Tile, cudaStream_t);
