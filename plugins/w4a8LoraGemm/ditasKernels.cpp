// C API of the kernels (ditasKernels.h): argument checks, device queries and kernel-family dispatch.
// Host code only; the kernels live in the per-instantiation .cu files.
#include "ditasKernels.h"
#include "w4a8LoraGemmKernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <string>

#ifndef DITAS_CUDA_ARCHS
#define DITAS_CUDA_ARCHS "unknown"
#endif
#ifndef DITAS_HAVE_SM90
#define DITAS_HAVE_SM90 0
#endif

namespace
{

thread_local std::string tLastError;
thread_local int tLastPath = DITAS_PATH_AUTO;

int fail(cudaError_t code, char const* fmt, ...)
{
    char buf[512];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, args);
    va_end(args);
    tLastError = buf;
    return int(code);
}

int cudaFail(cudaError_t code, char const* what)
{
    return fail(code, "%s: CUDA error %d (%s)", what, int(code), cudaGetErrorString(code));
}

struct DeviceInfo
{
    int arch = 0;          // 10 * major + minor
    int smCount = 0;
    int maxSmemOptin = 0;  // bytes of dynamic shared memory one block may opt into
};

constexpr int kMaxDevices = 64;
DeviceInfo gDevices[kMaxDevices];
std::atomic<bool> gDeviceValid[kMaxDevices];

cudaError_t deviceInfo(DeviceInfo& out)
{
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
    {
        return e;
    }
    if (dev >= 0 && dev < kMaxDevices && gDeviceValid[dev].load(std::memory_order_acquire))
    {
        out = gDevices[dev];
        return cudaSuccess;
    }
    int major = 0, minor = 0;
    DeviceInfo info;
    if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess
        || (e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev)) != cudaSuccess
        || (e = cudaDeviceGetAttribute(&info.smCount, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess
        || (e = cudaDeviceGetAttribute(&info.maxSmemOptin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
    {
        return e;
    }
    info.arch = 10 * major + minor;
    if (dev >= 0 && dev < kMaxDevices)
    {
        gDevices[dev] = info;
        gDeviceValid[dev].store(true, std::memory_order_release);
    }
    out = info;
    return cudaSuccess;
}

bool aligned(void const* p, uintptr_t bytes)
{
    return p == nullptr || (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

char const* pathName(int path)
{
    switch (path)
    {
    case DITAS_PATH_AUTO: return "auto";
    case DITAS_PATH_SM80_LARGE: return "sm80-large";
    case DITAS_PATH_SM80_SMALL: return "sm80-small";
    case DITAS_PATH_SM90_CUTLASS: return "sm90-cutlass";
    case DITAS_PATH_GENERIC: return "generic";
    case DITAS_PATH_FAST: return "fast";
    default: return "?";
    }
}

// Why the mma.sync family cannot run this call ("" when it can).
std::string sm80Refusal(ditas::GemmParams const& p, int bits, int yDtype, bool int32Out, DeviceInfo const& dev,
    ditas::Sm80Tile tile)
{
    if (dev.arch < 80)
        return "needs compute capability >= 8.0";
    if (p.K % 64)
        return "needs K % 64 == 0";
    if (p.K > 65536)
        return "needs K <= 65536 (INT32 accumulators of 16 x INT4 codes)";
    if (static_cast<long long>(p.M) * p.K >= (1LL << 31))
        return "needs M * K < 2^31 (32-bit row offsets)";
    if (p.M > ditas::gemmSm80MaxRows(tile))
        return "needs M <= " + std::to_string(ditas::gemmSm80MaxRows(tile)) + " (65535 row tiles in the grid)";
    if (p.N % 8)
        return "needs N % 8 == 0";
    if (!int32Out && (p.K / p.numGroups) % 64)
        return "needs a group size that is a multiple of 64";
    if (!int32Out && p.rank > 0 && (p.rank % 16 || p.rank > 64))
        return "needs LoRA rank % 16 == 0 and rank <= 64";
    if (!aligned(p.xq, 16) || !aligned(p.weight, 16))
        return "needs 16-byte aligned x_q and qweight";
    if (!int32Out && p.rank > 0 && (!aligned(p.loraAct, 16) || !aligned(p.loraUp, 16)))
        return "needs 16-byte aligned lora_act and lora_up";
    if (!aligned(p.out, int32Out || yDtype == DITAS_DTYPE_FP32 ? 8 : 4))
        return "needs an 8-byte (fp32/int32) or 4-byte (fp16) aligned output";
    size_t const smem = ditas::gemmSm80SmemBytes(bits, tile, int32Out ? 0 : p.rank);
    if (smem > size_t(dev.maxSmemOptin))
        return "needs " + std::to_string(smem) + " bytes of shared memory, the device allows "
            + std::to_string(dev.maxSmemOptin);
    return "";
}

std::string sm90Refusal(ditas::GemmParams const& p, int bits, int yDtype, bool int32Out, DeviceInfo const& dev)
{
    if (!DITAS_HAVE_SM90)
        return "was not built (CUDA architectures without 90a)";
    if (dev.arch != 90)
        return "needs compute capability 9.0";
    if (int32Out)
        return "has no INT32 accumulator output";
    if (p.numGroups != 1)
        return "supports per-channel weight scales only";
    if (p.rank != 0)
        return "has no fused LoRA";
    if (yDtype != DITAS_DTYPE_FP16)
        return "writes fp16 only";
    if (p.K % (bits == 4 ? 32 : 16))
        return "needs K % 32 == 0 (W4) or K % 16 == 0 (W8)";
    if (p.N % 8)
        return "needs N % 8 == 0";
    if (!aligned(p.xq, 16) || !aligned(p.weight, 16) || !aligned(p.out, 16) || !aligned(p.wScale, 16)
        || !aligned(p.bias, 16))
        return "needs 16-byte aligned x_q, qweight, w_scale, bias and y";
    return "";
}

int pickGemmPath(ditas::GemmParams const& p, int bits, int yDtype, bool int32Out, DeviceInfo const& dev, int path,
    char const* name)
{
    using ditas::Sm80Tile;
    switch (path)
    {
    case DITAS_PATH_GENERIC: return path;
    case DITAS_PATH_SM80_LARGE:
    case DITAS_PATH_SM80_SMALL:
    {
        std::string const why = sm80Refusal(
            p, bits, yDtype, int32Out, dev, path == DITAS_PATH_SM80_LARGE ? Sm80Tile::kLarge : Sm80Tile::kSmall);
        if (!why.empty())
        {
            fail(cudaErrorInvalidValue, "%s: path %s %s", name, pathName(path), why.c_str());
            return -1;
        }
        return path;
    }
    case DITAS_PATH_SM90_CUTLASS:
    {
        std::string const why = sm90Refusal(p, bits, yDtype, int32Out, dev);
        if (!why.empty())
        {
            fail(cudaErrorInvalidValue, "%s: path %s %s", name, pathName(path), why.c_str());
            return -1;
        }
        return path;
    }
    case DITAS_PATH_AUTO: break;
    default: fail(cudaErrorInvalidValue, "%s: unknown path %d", name, path); return -1;
    }
    long long const sms = dev.smCount > 0 ? dev.smCount : 1;
    long long const largeTiles = ((p.M + 127LL) / 128) * ((p.N + 127LL) / 128);
    // Hopper: the TMA/wgmma kernel once it fills the machine; smaller problems fill more SMs with 64 x 64 tiles.
    if (sm90Refusal(p, bits, yDtype, int32Out, dev).empty() && largeTiles >= sms)
    {
        return DITAS_PATH_SM90_CUTLASS;
    }
    bool const largeOk = sm80Refusal(p, bits, yDtype, int32Out, dev, Sm80Tile::kLarge).empty();
    bool const smallOk = sm80Refusal(p, bits, yDtype, int32Out, dev, Sm80Tile::kSmall).empty();
    if (largeOk && largeTiles >= 2 * sms)
    {
        return DITAS_PATH_SM80_LARGE;
    }
    if (smallOk)
    {
        return DITAS_PATH_SM80_SMALL;
    }
    if (largeOk)
    {
        return DITAS_PATH_SM80_LARGE;
    }
    return DITAS_PATH_GENERIC;
}

template <int kBits>
int runGemm(char const* name, void const* xq, float const* xScale, int xScalePerRow, void const* qweight,
    float const* wScale, int numGroups, float const* bias, float const* loraAct, void const* loraUp, int rank, void* y,
    int yDtype, bool int32Out, int M, int N, int K, int path, cudaStream_t stream)
{
    tLastError.clear();
    if (M < 0 || N <= 0 || K <= 0)
        return fail(cudaErrorInvalidValue, "%s: bad sizes M=%d N=%d K=%d", name, M, N, K);
    if (kBits == 4 && K % 2)
        return fail(cudaErrorInvalidValue, "%s: INT4 weights need an even K, got %d", name, K);
    if (!int32Out)
    {
        if (numGroups < 1 || K % numGroups)
            return fail(cudaErrorInvalidValue, "%s: numGroups=%d does not divide K=%d", name, numGroups, K);
        if (yDtype != DITAS_DTYPE_FP16 && yDtype != DITAS_DTYPE_FP32)
            return fail(cudaErrorInvalidValue, "%s: yDtype must be DITAS_DTYPE_FP16 or DITAS_DTYPE_FP32, got %d", name, yDtype);
        if (rank < 0)
            return fail(cudaErrorInvalidValue, "%s: rank=%d must be >= 0", name, rank);
    }
    if (M == 0)
    {
        // Nothing is read or written. The [0, ...] tensors (x_q, x_scale, lora_act, y) of an empty batch have no
        // storage (torch's data_ptr() is 0 for them, TensorRT may pass nullptr), so their pointers are not required.
        tLastPath = path;
        return int(cudaSuccess);
    }
    if (!int32Out)
    {
        if (rank > 0 && (loraAct == nullptr || loraUp == nullptr))
            return fail(cudaErrorInvalidValue, "%s: rank=%d needs lora_act and lora_up", name, rank);
        if (xScale == nullptr || wScale == nullptr)
            return fail(cudaErrorInvalidValue, "%s: x_scale and w_scale are required", name);
    }
    if (xq == nullptr || qweight == nullptr || y == nullptr)
        return fail(cudaErrorInvalidValue, "%s: x_q, qweight and the output are required", name);
    DeviceInfo dev;
    cudaError_t e = deviceInfo(dev);
    if (e != cudaSuccess)
        return cudaFail(e, name);

    ditas::GemmParams p{};
    p.xq = xq;
    p.weight = qweight;
    p.xScale = xScale;
    p.xScalePerRow = xScalePerRow ? 1 : 0;
    p.wScale = wScale;
    p.numGroups = int32Out ? 1 : numGroups;
    p.bias = int32Out ? nullptr : bias;
    p.loraAct = int32Out ? nullptr : loraAct;
    p.loraUp = int32Out ? nullptr : loraUp;
    p.rank = int32Out ? 0 : rank;
    p.out = y;
    p.M = M;
    p.N = N;
    p.K = K;

    int const chosen = pickGemmPath(p, kBits, yDtype, int32Out, dev, path, name);
    if (chosen < 0)
        return int(cudaErrorInvalidValue);
    ditas::OutKind const out
        = int32Out ? ditas::OutKind::kInt32 : (yDtype == DITAS_DTYPE_FP16 ? ditas::OutKind::kFp16 : ditas::OutKind::kFp32);
    switch (chosen)
    {
    case DITAS_PATH_SM80_LARGE:
    case DITAS_PATH_SM80_SMALL:
    {
        ditas::Sm80Tile const tile = chosen == DITAS_PATH_SM80_LARGE ? ditas::Sm80Tile::kLarge : ditas::Sm80Tile::kSmall;
        switch (out)
        {
        case ditas::OutKind::kFp16: e = ditas::launchGemmSm80<kBits, ditas::OutKind::kFp16>(p, tile, stream); break;
        case ditas::OutKind::kFp32: e = ditas::launchGemmSm80<kBits, ditas::OutKind::kFp32>(p, tile, stream); break;
        case ditas::OutKind::kInt32: e = ditas::launchGemmSm80<kBits, ditas::OutKind::kInt32>(p, tile, stream); break;
        }
        break;
    }
    case DITAS_PATH_SM90_CUTLASS:
#if DITAS_HAVE_SM90
        e = ditas::launchGemmSm90<kBits>(p, dev.smCount, stream);
#else
        e = cudaErrorNotSupported;
#endif
        break;
    default: e = ditas::launchGemmGeneric<kBits>(p, out, stream); break;
    }
    if (e != cudaSuccess)
    {
        return fail(e, "%s: path %s failed: CUDA error %d (%s)", name, pathName(chosen), int(e), cudaGetErrorString(e));
    }
    tLastPath = chosen;
    return int(cudaSuccess);
}

} // namespace

extern "C" {

DITAS_API int ditasKernelsApiVersion(void)
{
    return DITAS_KERNELS_API_VERSION;
}

DITAS_API char const* ditasKernelsBuildInfo(void)
{
    static std::string const info = std::string("api=") + std::to_string(DITAS_KERNELS_API_VERSION)
        + " archs=" + DITAS_CUDA_ARCHS + " sm90_cutlass=" + std::to_string(DITAS_HAVE_SM90);
    return info.c_str();
}

DITAS_API char const* ditasGetLastErrorString(void)
{
    return tLastError.c_str();
}

DITAS_API int ditasLastPath(void)
{
    return tLastPath;
}

DITAS_API int ditasQuantizeAct(void const* x, int xDtype, float const* actScale, float const* actPrescale,
    void const* loraDown, int rank, void* xq, float* xScale, float* loraAct, int M, int K, int path,
    ditasStream_t stream)
{
    char const* name = "ditasQuantizeAct";
    tLastError.clear();
    if (M < 0 || K <= 0)
        return fail(cudaErrorInvalidValue, "%s: bad sizes M=%d K=%d", name, M, K);
    if (xDtype != DITAS_DTYPE_FP16 && xDtype != DITAS_DTYPE_FP32)
        return fail(cudaErrorInvalidValue, "%s: xDtype must be DITAS_DTYPE_FP16 or DITAS_DTYPE_FP32, got %d", name, xDtype);
    if (rank < 0 || (rank > 0 && loraDown == nullptr))
        return fail(cudaErrorInvalidValue, "%s: rank=%d needs lora_down and lora_act", name, rank);
    if (path != DITAS_PATH_AUTO && path != DITAS_PATH_FAST && path != DITAS_PATH_GENERIC)
        return fail(cudaErrorInvalidValue, "%s: path must be AUTO, FAST or GENERIC, got %d", name, path);
    // An empty batch has no storage for x, x_q, lora_act [0, r] and a dynamic x_scale [0] (torch's data_ptr() is 0
    // for them, TensorRT may pass nullptr): only the static scale's [1] output is required then.
    if ((M > 0 && (x == nullptr || xq == nullptr || (rank > 0 && loraAct == nullptr)))
        || (xScale == nullptr && (M > 0 || actScale != nullptr)))
        return fail(cudaErrorInvalidValue, "%s: x, x_q, x_scale and (rank > 0) lora_act are required", name);
    cudaStream_t const st = reinterpret_cast<cudaStream_t>(stream);
    if (M == 0)
    {
        // Nothing to quantize; a static scale is still reported.
        if (actScale != nullptr)
        {
            cudaError_t const e = cudaMemcpyAsync(xScale, actScale, sizeof(float), cudaMemcpyDeviceToDevice, st);
            if (e != cudaSuccess)
                return cudaFail(e, name);
        }
        tLastPath = path;
        return int(cudaSuccess);
    }
    DeviceInfo dev;
    cudaError_t e = deviceInfo(dev);
    if (e != cudaSuccess)
        return cudaFail(e, name);

    ditas::QuantizeParams p{};
    p.x = x;
    p.actScale = actScale;
    p.prescale = actPrescale;
    p.loraDown = loraDown;
    p.rank = rank;
    p.xq = static_cast<int8_t*>(xq);
    p.xScale = xScale;
    p.loraAct = loraAct;
    p.M = M;
    p.K = K;

    std::string why;
    if (dev.arch < 80)
        why = "needs compute capability >= 8.0";
    else if (K % 8)
        why = "needs K % 8 == 0";
    else if (rank > 0 && (rank % 16 || rank > 64))
        why = "needs LoRA rank % 16 == 0 and rank <= 64";
    else if (!aligned(x, 16) || !aligned(actPrescale, 16) || !aligned(xq, 8) || !aligned(loraDown, 16))
        why = "needs 16-byte aligned x, act_prescale, lora_down and 8-byte aligned x_q";
    else if (ditas::quantizeActSmemBytes(rank) > size_t(dev.maxSmemOptin))
        why = "needs more shared memory than the device allows";
    int chosen = path;
    if (path == DITAS_PATH_AUTO)
        chosen = why.empty() ? DITAS_PATH_FAST : DITAS_PATH_GENERIC;
    else if (path == DITAS_PATH_FAST && !why.empty())
        return fail(cudaErrorInvalidValue, "%s: path fast %s", name, why.c_str());

    bool const half = xDtype == DITAS_DTYPE_FP16;
    if (chosen == DITAS_PATH_FAST)
        e = half ? ditas::launchQuantizeAct<__half>(p, st) : ditas::launchQuantizeAct<float>(p, st);
    else
        e = half ? ditas::launchQuantizeActGeneric<__half>(p, st) : ditas::launchQuantizeActGeneric<float>(p, st);
    if (e != cudaSuccess)
        return fail(e, "%s: path %s failed: CUDA error %d (%s)", name, pathName(chosen), int(e), cudaGetErrorString(e));
    tLastPath = chosen;
    return int(cudaSuccess);
}

DITAS_API int ditasW4A8Gemm(void const* xq, float const* xScale, int xScalePerRow, void const* qweight,
    float const* wScale, int numGroups, float const* bias, float const* loraAct, void const* loraUp, int rank, void* y,
    int yDtype, int M, int N, int K, int path, ditasStream_t stream)
{
    return runGemm<4>("ditasW4A8Gemm", xq, xScale, xScalePerRow, qweight, wScale, numGroups, bias, loraAct, loraUp,
        rank, y, yDtype, false, M, N, K, path, reinterpret_cast<cudaStream_t>(stream));
}

DITAS_API int ditasW8A8Gemm(void const* xq, float const* xScale, int xScalePerRow, void const* qweight,
    float const* wScale, int numGroups, float const* bias, float const* loraAct, void const* loraUp, int rank, void* y,
    int yDtype, int M, int N, int K, int path, ditasStream_t stream)
{
    return runGemm<8>("ditasW8A8Gemm", xq, xScale, xScalePerRow, qweight, wScale, numGroups, bias, loraAct, loraUp,
        rank, y, yDtype, false, M, N, K, path, reinterpret_cast<cudaStream_t>(stream));
}

DITAS_API int ditasW4A8GemmAccumulators(
    void const* xq, void const* qweight, int32_t* acc, int M, int N, int K, int path, ditasStream_t stream)
{
    if (path == DITAS_PATH_SM90_CUTLASS)
        return fail(cudaErrorInvalidValue, "ditasW4A8GemmAccumulators: path sm90-cutlass has no INT32 output");
    return runGemm<4>("ditasW4A8GemmAccumulators", xq, nullptr, 0, qweight, nullptr, 1, nullptr, nullptr, nullptr, 0,
        acc, DITAS_DTYPE_FP32, true, M, N, K, path, reinterpret_cast<cudaStream_t>(stream));
}

DITAS_API int ditasW8A8GemmAccumulators(
    void const* xq, void const* qweight, int32_t* acc, int M, int N, int K, int path, ditasStream_t stream)
{
    if (path == DITAS_PATH_SM90_CUTLASS)
        return fail(cudaErrorInvalidValue, "ditasW8A8GemmAccumulators: path sm90-cutlass has no INT32 output");
    return runGemm<8>("ditasW8A8GemmAccumulators", xq, nullptr, 0, qweight, nullptr, 1, nullptr, nullptr, nullptr, 0,
        acc, DITAS_DTYPE_FP32, true, M, N, K, path, reinterpret_cast<cudaStream_t>(stream));
}

} // extern "C"
