// W4A8 / W8A8 GEMM for Hopper (SM90a): CUTLASS 3.x TMA + wgmma warp-specialized kernel, per-channel weight scales,
// no LoRA, fp16 output. The dispatcher (ditasKernels.cu) sends per-group, LoRA, fp32-output and INT32-hook calls
// on SM90 to the mma.sync family instead.
//
// CUTLASS computes D[N', M'] with A = weights (CUTLASS "M" = our N, K-major) and B = activations (CUTLASS "N" = our
// M, K-major); D column-major [N, M] is exactly our row-major y[M, N]. W4: `int4b_t x int8_t -> int32` mixed-input
// collective in convert-only mode (INT4 -> INT8 in registers, s8 wgmma, exact). W8: plain s8 x s8 wgmma.
// Epilogue visitor tree, evaluated in fp32 without contraction (this file is compiled with --fmad=false):
//   y = ((float(acc) * w_scale[n]) * s_x[m]) + bias[n]
// which is the reference's order of operations, so per-channel results match the CPU reference bit for bit.
#pragma once

#include "w4a8LoraGemmKernel.h"

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/util/packed_stride.hpp>

#ifndef DITAS_SM90_BITS
#error "define DITAS_SM90_BITS (4 or 8) before including gemmSm90.cuh (one instantiation per translation unit)"
#endif

namespace ditas
{
namespace sm90
{

using namespace cute;

// Types at namespace scope, not inside a class template: GCC's host pass rejects the epilogue builder when it is
// instantiated from a class template in this CUTLASS version.
#if DITAS_SM90_BITS == 4
using ElementW = cutlass::int4b_t;
constexpr int kAlignW = 32; // 16 bytes
#else
using ElementW = int8_t;
constexpr int kAlignW = 16;
#endif
using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _1, _1>;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// Column broadcast = one value per CUTLASS row = per output channel n; row broadcast = per token m.
using WScale = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>>;
using Bias = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>>;
// Dynamic stride: true = one scale per token, false = one scalar for the whole tensor.
using XScale = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, bool, int64_t>>;
using Mul = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>;
using AddOut = cutlass::epilogue::fusion::Sm90Compute<cutlass::plus, cutlass::half_t, float, kRound>;
using Evt = cutlass::epilogue::fusion::Sm90EVT<AddOut,
    cutlass::epilogue::fusion::Sm90EVT<Mul,
        cutlass::epilogue::fusion::Sm90EVT<Mul, cutlass::epilogue::fusion::Sm90AccFetch, WScale>, XScale>,
    Bias>;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<cutlass::arch::Sm90,
    cutlass::arch::OpClassTensorOp, TileShape, ClusterShape, cutlass::epilogue::collective::EpilogueTileAuto, int32_t,
    float, void, cutlass::layout::ColumnMajor, 8, cutlass::half_t, cutlass::layout::ColumnMajor, 8,
    cutlass::epilogue::TmaWarpSpecializedCooperative, Evt>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<cutlass::arch::Sm90,
    cutlass::arch::OpClassTensorOp, ElementW, cutlass::layout::RowMajor, kAlignW, int8_t, cutlass::layout::ColumnMajor,
    16, int32_t, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;

using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

inline cudaError_t toCuda(cutlass::Status s)
{
    switch (s)
    {
    case cutlass::Status::kSuccess: return cudaSuccess;
    case cutlass::Status::kErrorMisalignedOperand:
    case cutlass::Status::kErrorInvalidProblem:
    case cutlass::Status::kErrorNotSupported: return cudaErrorInvalidValue;
    case cutlass::Status::kErrorInsufficientDriver: return cudaErrorInsufficientDriver;
    case cutlass::Status::kErrorArchMismatch: return cudaErrorNoKernelImageForDevice;
    default: break;
    }
    cudaError_t const e = cudaGetLastError();
    return e != cudaSuccess ? e : cudaErrorLaunchFailure;
}

} // namespace sm90

namespace sm90
{
// CUTLASS arguments of one call (host only; no CUDA call), shared by the launcher and host-side probes.
inline Gemm::Arguments makeArguments(GemmParams const& p, int device, int smCount)
{
    auto const strideW = cutlass::make_cute_packed_stride(Kernel::StrideA{}, cute::make_shape(p.N, p.K, 1));
    auto const strideX = cutlass::make_cute_packed_stride(Kernel::StrideB{}, cute::make_shape(p.M, p.K, 1));
    auto const strideY = cutlass::make_cute_packed_stride(Kernel::StrideD{}, cute::make_shape(p.N, p.M, 1));
    Gemm::Arguments args{};
    args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
    args.problem_shape = {p.N, p.M, p.K, 1};
    args.mainloop.ptr_A = static_cast<ElementW const*>(p.weight);
    args.mainloop.dA = strideW;
    args.mainloop.ptr_B = static_cast<int8_t const*>(p.xq);
    args.mainloop.dB = strideX;
    args.epilogue.ptr_C = nullptr;
    args.epilogue.dC = strideY;
    args.epilogue.ptr_D = static_cast<cutlass::half_t*>(p.out);
    args.epilogue.dD = strideY;
    // Visitor-tree arguments: {children..., op}; see Evt.
    args.epilogue.thread = {
        {                                                          // (acc * w_scale) * s_x
            {{}, {p.wScale, 0.f, {}}, {}},                         //   acc * w_scale
            {p.xScale, 0.f, {cute::_0{}, p.xScalePerRow != 0, 0}}, //   s_x
            {}},
        {p.bias, 0.f, {}}, // + bias (nullptr: 0)
        {}};
    args.hw_info.device_id = device;
    args.hw_info.sm_count = smCount;
    return args;
}
} // namespace sm90

template <>
cudaError_t launchGemmSm90<DITAS_SM90_BITS>(GemmParams const& p, int smCount, cudaStream_t stream)
{
    using Gemm = sm90::Gemm;
    if (p.numGroups != 1 || p.rank != 0)
    {
        return cudaErrorInvalidValue;
    }
    int device = 0;
    cudaError_t const e = cudaGetDevice(&device);
    if (e != cudaSuccess)
    {
        return e;
    }
    typename Gemm::Arguments args = sm90::makeArguments(p, device, smCount);
    Gemm gemm;
    cutlass::Status s = gemm.can_implement(args);
    if (s != cutlass::Status::kSuccess)
    {
        return sm90::toCuda(s);
    }
    if (Gemm::get_workspace_size(args) != 0)
    {
        return cudaErrorNotSupported; // this configuration never needs one; refuse rather than allocate
    }
    s = gemm.initialize(args, nullptr, stream);
    if (s != cutlass::Status::kSuccess)
    {
        return sm90::toCuda(s);
    }
    s = gemm.run(stream);
    if (s != cutlass::Status::kSuccess)
    {
        return sm90::toCuda(s);
    }
    return cudaGetLastError();
}

} // namespace ditas
