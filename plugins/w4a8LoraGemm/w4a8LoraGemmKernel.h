// Internal launcher interface of the W4A8/W8A8 + LoRA kernels (torch-free, TensorRT-free).
//
// The C API (ditasKernels.h) validates arguments, picks a kernel family and calls one of these templated
// launchers; each (family, weight bits, output type) instantiation lives in its own small .cu file. The TensorRT
// plugin may call these launchers directly. Every launcher returns a cudaError_t and never aborts.
#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

namespace ditas
{

enum class OutKind : int
{
    kFp16 = 0,
    kFp32 = 1,
    kInt32 = 2, // raw INT32 accumulators (test hook; per-channel only, no epilogue)
};

enum class Sm80Tile : int
{
    kLarge = 0, // 128 x 128 CTA, 8 warps (2 x 4), warp tile 64 x 32
    kSmall = 1, // 64 x 64 CTA, 4 warps (2 x 2), warp tile 32 x 32
};

struct GemmParams
{
    void const* xq;      // int8 [M, K]
    void const* weight;  // uint8 [N, K/2] packed INT4 or int8 [N, K]
    float const* xScale; // [1] or [M]
    int xScalePerRow;    // 0: per-tensor, 1: per-row
    float const* wScale; // [N, numGroups]
    int numGroups;       // K / G
    float const* bias;   // [N] or nullptr
    float const* loraAct; // [M, rank] or nullptr
    void const* loraUp;   // fp16 [rank, N] or nullptr
    int rank;             // 0 without LoRA
    void* out;            // [M, N] fp16 / fp32 / int32
    int M, N, K;
};

struct QuantizeParams
{
    void const* x;          // fp16 or fp32 [M, K]
    float const* actScale;  // [1] static scale, or nullptr for dynamic per-row scales
    float const* prescale;  // [K] or nullptr
    void const* loraDown;   // fp16 [K, rank] or nullptr
    int rank;
    int8_t* xq;             // int8 [M, K]
    float* xScale;          // [1] (static: a copy of actScale) or [M]
    float* loraAct;         // fp32 [M, rank] (unused when rank == 0)
    int M, K;
};

// ----- mma.sync family (SM80, SM86, SM89, also runs on SM90) --------------------------------------------------
// Requirements (checked by the C API before the call): K % 64 == 0, N % 8 == 0, (K / numGroups) % 64 == 0,
// rank % 16 == 0 and rank <= 64, 16-byte aligned xq / weight / wScale-per-channel / loraAct / loraUp.
template <int kBits, OutKind kOut>
cudaError_t launchGemmSm80(GemmParams const& p, Sm80Tile tile, cudaStream_t stream);

// Dynamic shared memory the mma.sync kernel needs (to check against the device limit before launching).
size_t gemmSm80SmemBytes(int bits, Sm80Tile tile, int rank);

// Largest M the mma.sync kernel's grid takes (M tiles along gridDim.y, at most 65535 of them).
long long gemmSm80MaxRows(Sm80Tile tile);

// ----- CUTLASS 3.x SM90 family (TMA + wgmma, warp-specialized); per-channel, no LoRA, fp16 output -------------
// Requirements: K % 32 == 0, N % 8 == 0, numGroups == 1, rank == 0, 16-byte aligned pointers.
template <int kBits>
cudaError_t launchGemmSm90(GemmParams const& p, int smCount, cudaStream_t stream);

// ----- SIMT fallback (any even K, any group size dividing K, any N, rank, alignment) --------------------------
template <int kBits>
cudaError_t launchGemmGeneric(GemmParams const& p, OutKind out, cudaStream_t stream);

// ----- activation quantize + fused LoRA-down ------------------------------------------------------------------
// Fast path: K % 8 == 0, rank % 16 == 0 and rank <= 64, x 16-byte aligned, xq 8-byte aligned.
template <typename InT>
cudaError_t launchQuantizeAct(QuantizeParams const& p, cudaStream_t stream);

size_t quantizeActSmemBytes(int rank);

// Fallback (any K, any rank, any alignment).
template <typename InT>
cudaError_t launchQuantizeActGeneric(QuantizeParams const& p, cudaStream_t stream);

} // namespace ditas
