// W4A8 / W8A8 GEMM with INT32 accumulation and fused epilogue, mma.sync family (SM80, SM86, SM89; runs on SM90).
//
//   y[m, n] = (sum_g float(acc[m, n, g]) * w_scale[n, g]) * s_x[m] + bias[n] + (lora_act[m, :] . lora_up[:, n])
//
// Main loop: cp.async multistage pipeline (zero-fill outside M / N). A (x_q) is copied in 4-byte words straight
// into "fragment order", so one LDS.128 per (16-row block, mma) gives the m16n8k32 A operand registers; B is copied in
// 16-byte chunks into linear rows and each lane reads its 16-code k-span with one 16-byte (W8) or 8-byte (W4) load.
// INT4 -> INT8 in registers (3 logic ops and 2 byte permutes per 8 codes, codes scaled by 16, exact),
// mma.sync.m16n8k32 s8 with s32 accumulation. Per-group weights (G a multiple of 64; a separate instantiation)
// fold into fp32 accumulators at each group end with scales staged through shared memory with the tiles.
// Epilogue: scales, bias and the LoRA-up product as m16n8k16 f16 MMAs (lora_act rounded to fp16, fp32
// accumulation) on tiles loaded by cp.async at kernel start. The index math is in fragmentMath.h and is checked on
// the host by test/fragmentMathTest.cpp.
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

// M tiles run along gridDim.y (65535 at most); N tiles along gridDim.x.
constexpr int kMaxGridY = 65535;

template <int kBits>
using LargeConfig = Config<kBits, 128, 128, 2, 4, (kBits == 4 ? 4 : 3)>;
template <int kBits>
using SmallConfig = Config<kBits, 64, 64, 2, 2, 4>;

// ---------------------------------------------------------------------------------------------------------------
// Global -> shared loads
// ---------------------------------------------------------------------------------------------------------------
// Per-thread copy plan of one stage, computed once: source pointers advance by one k-tile per issue() (tiles are
// issued in order 0, 1, 2, ...), shared-memory destinations are fixed offsets from the stage base. Rows past M / N
// read row 0 with a zero byte count (cp.async zero-fill), so every source address stays valid.
template <class Cfg>
struct CopyPlan
{
    static constexpr int kRowBytes = frag::bRowBytes<Cfg::kBits>();
    static constexpr int kChunksPerRow = kRowBytes / 16;
    static constexpr int kAStep = Cfg::kThreads / frag::kAWordsPerRow; // rows between a thread's A words
    static constexpr int kAIters = Cfg::kBM / kAStep;
    static constexpr int kBIters = Cfg::kBN * kChunksPerRow / Cfg::kThreads;
    static_assert(kAStep == 8 || kAStep == 16, "A copy plan assumes 128 or 256 threads");
    static_assert(Cfg::kBM % kAStep == 0, "A tile rows must divide evenly among threads");
    static_assert(Cfg::kBN * kChunksPerRow % Cfg::kThreads == 0, "B tile chunks must divide evenly among threads");
    static_assert(Cfg::kBN <= Cfg::kThreads, "one weight-scale copy per thread at most");

    char const* aBase;         // x_q + 4 * (tid % 16), advanced one k-tile per issue()
    uint32_t aOff[kAIters];    // byte offset of the thread's row (clamped to M - 1) from aBase
    uint32_t aDst;             // aWordDst(row0, word) (+ aCopyDelta per iteration)
    uint32_t aValid;           // bit it: row it is inside M (else zero-fill)
    char const* bSrc[kBIters];
    uint32_t bDst[kBIters];
    int bBytes[kBIters];
    bool aFull;         // all BM rows of the tile are inside M (warp-uniform): no zero-fill predicates
    float const* sSrc;  // per-group weight scales of column n0 + tid
    uint32_t sDst;      // their shared-memory offset inside a stage
    int sBytes;         // 4, 0 (zero-fill past N) or -1 (this thread copies no scale)

    __device__ __forceinline__ void init(GemmParams const& p, int m0, int n0, int tid)
    {
        int const word = tid % frag::kAWordsPerRow;
        int const row0 = tid / frag::kAWordsPerRow;
        aBase = static_cast<char const*>(p.xq) + 4 * word;
        aDst = uint32_t(frag::aWordDst(row0, word));
        aValid = 0;
        aFull = m0 + Cfg::kBM <= p.M;
#pragma unroll
        for (int it = 0; it < kAIters; ++it)
        {
            int const row = m0 + row0 + it * kAStep;
            aOff[it] = uint32_t(row < p.M ? row : p.M - 1) * uint32_t(p.K); // M * K < 2^31 (checked by the dispatcher)
            aValid |= uint32_t(row < p.M) << it;
        }
        char const* w = static_cast<char const*>(p.weight);
        size_t const wRowBytes = size_t(p.K) * Cfg::kBits / 8;
#pragma unroll
        for (int it = 0; it < kBIters; ++it)
        {
            int const c = tid + it * Cfg::kThreads;
            int const row = c / kChunksPerRow;
            int const col = (c % kChunksPerRow) * 16;
            bool const ok = n0 + row < p.N;
            bSrc[it] = w + size_t(ok ? n0 + row : 0) * wRowBytes + col;
            bDst[it] = uint32_t(Cfg::kABytes + row * kRowBytes + col);
            bBytes[it] = ok ? 16 : 0;
        }
        bool const sOk = tid < Cfg::kBN && n0 + tid < p.N;
        sSrc = p.wScale + size_t(sOk ? n0 + tid : 0) * p.numGroups;
        sDst = uint32_t(Cfg::kABytes + Cfg::kBBytes + 4 * tid);
        sBytes = tid < Cfg::kBN ? (sOk ? 4 : 0) : -1;
    }

    // Next k-tile into the stage at shared address `stage`; `group` = its weight group (grouped only).
    template <bool kGrouped>
    __device__ __forceinline__ void issue(uint32_t stage, int group)
    {
        if (aFull)
        {
#pragma unroll
            for (int it = 0; it < kAIters; ++it)
            {
                ptx::cpAsync4(stage + aDst + uint32_t(frag::aCopyDelta(kAStep, it)), aBase + aOff[it], 4);
            }
        }
        else
        {
#pragma unroll
            for (int it = 0; it < kAIters; ++it)
            {
                ptx::cpAsync4(stage + aDst + uint32_t(frag::aCopyDelta(kAStep, it)), aBase + aOff[it],
                    (aValid >> it) & 1u ? 4 : 0);
            }
        }
        aBase += frag::kBK;
#pragma unroll
        for (int it = 0; it < kBIters; ++it)
        {
            ptx::cpAsync16(stage + bDst[it], bSrc[it], bBytes[it]);
            bSrc[it] += kRowBytes;
        }
        if constexpr (kGrouped)
        {
            if (sBytes >= 0)
            {
                ptx::cpAsync4(stage + sDst, sSrc + group, sBytes);
            }
        }
    }
};

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
    uint32_t a[Cfg::kMI][2][4]; // [mi][mma s] = {a0, a1, a2, a3}
#pragma unroll
    for (int mi = 0; mi < Cfg::kMI; ++mi)
    {
#pragma unroll
        for (int s = 0; s < 2; ++s)
        {
            uint4 const v = *reinterpret_cast<uint4 const*>(
                stage + frag::aFragOffset(warpM * Cfg::kMI + mi, s, lane));
            a[mi][s][0] = v.x;
            a[mi][s][1] = v.y;
            a[mi][s][2] = v.z;
            a[mi][s][3] = v.w;
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
#pragma unroll
            for (int ni = 0; ni < Cfg::kNI; ++ni)
            {
                ptx::mmaS8(acc[mi][ni], a[mi][s], b[ni][frag::spanReg(s, 0)], b[ni][frag::spanReg(s, 1)]);
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
template <class Cfg, OutKind kOut, bool kGrouped>
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
    static_assert(kEpilogue || !kGrouped, "the INT32 hook has no weight groups");
    constexpr bool grouped = kGrouped;
    int const tilesPerGroup = kGrouped ? kTiles / p.numGroups : kTiles;
    bool const lora = kEpilogue && p.rank > 0;

    // Prologue: LoRA tiles join the first commit group, so the main loop's first wait covers them.
    if (lora)
    {
        loadLoraTiles<Cfg>(smem, p, m0, n0);
    }
    uint32_t const smemBase = ptx::smemAddr(smem);
    CopyPlan<Cfg> plan;
    plan.init(p, m0, n0, tid);
    int loadGroup = 0;       // weight group of the next tile to load
    int loadInGroup = 0;     // its index inside the group
#pragma unroll
    for (int s = 0; s < Cfg::kStages - 1; ++s)
    {
        if (s < kTiles)
        {
            plan.template issue<kGrouped>(smemBase + s * Cfg::kStageBytes, loadGroup);
            if (++loadInGroup == tilesPerGroup)
            {
                loadInGroup = 0;
                ++loadGroup;
            }
        }
        ptx::cpAsyncCommit();
    }

    int32_t acc[MI][NI][4];
    float facc[MI][NI][4]; // per-group: running sum over groups; per-channel: filled after the main loop
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
                acc[mi][ni][i] = 0;
                if constexpr (kGrouped)
                {
                    facc[mi][ni][i] = 0.f;
                }
            }

    int readStage = 0;
    int writeStage = Cfg::kStages - 1;
    int foldCountdown = tilesPerGroup;
    for (int kt = 0; kt < kTiles; ++kt)
    {
        ptx::cpAsyncWait<Cfg::kStages - 2>();
        __syncthreads(); // tile kt visible to all; every warp is done with tile kt - 1, whose slot is refilled next
        if (kt + Cfg::kStages - 1 < kTiles)
        {
            plan.template issue<kGrouped>(smemBase + writeStage * Cfg::kStageBytes, loadGroup);
            if (++loadInGroup == tilesPerGroup)
            {
                loadInGroup = 0;
                ++loadGroup;
            }
        }
        ptx::cpAsyncCommit();
        char const* stage = smem + readStage * Cfg::kStageBytes;
        computeStage<Cfg>(stage, acc, warpM, warpN, lane);
        if constexpr (kGrouped)
        {
            if (--foldCountdown == 0)
            {
                foldGroup<Cfg>(stage, acc, facc, warpN, lane);
                foldCountdown = tilesPerGroup;
            }
        }
        readStage = readStage + 1 == Cfg::kStages ? 0 : readStage + 1;
        writeStage = writeStage + 1 == Cfg::kStages ? 0 : writeStage + 1;
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
        if constexpr (!kGrouped)
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
template <class Cfg, OutKind kOut, bool kGrouped>
cudaError_t launchConfig(GemmParams const& p, cudaStream_t stream)
{
    int const rank = kOut == OutKind::kInt32 ? 0 : p.rank;
    size_t const smem = Cfg::smemBytes(rank);
    auto kernel = gemmSm80Kernel<Cfg, kOut, kGrouped>;
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
    if (gridM > unsigned(kMaxGridY)) // the dispatcher refuses such M (gemmSm80MaxRows), so AUTO falls back instead
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
    bool const large = tile == Sm80Tile::kLarge;
    if constexpr (kOut == OutKind::kInt32)
    {
        return large ? sm80::launchConfig<sm80::LargeConfig<kBits>, kOut, false>(p, stream)
                     : sm80::launchConfig<sm80::SmallConfig<kBits>, kOut, false>(p, stream);
    }
    else if (p.numGroups > 1)
    {
        return large ? sm80::launchConfig<sm80::LargeConfig<kBits>, kOut, true>(p, stream)
                     : sm80::launchConfig<sm80::SmallConfig<kBits>, kOut, true>(p, stream);
    }
    else
    {
        return large ? sm80::launchConfig<sm80::LargeConfig<kBits>, kOut, false>(p, stream)
                     : sm80::launchConfig<sm80::SmallConfig<kBits>, kOut, false>(p, stream);
    }
}

} // namespace ditas

// One instantiation per .cu file (gemmSm80_w{4,8}_{fp16,fp32,i32}.cu).
#define DITAS_INSTANTIATE_GEMM_SM80(BITS, OUT)                                                                          \
    template cudaError_t ditas::launchGemmSm80<BITS, ditas::OutKind::OUT>(                                              \
        ditas::GemmParams const&, ditas::Sm80Tile, cudaStream_t);
