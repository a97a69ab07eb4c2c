// Entry points of libditas_trt_plugin.so: what IPluginRegistry::loadLibrary (and trtexec --dynamicPlugins, Triton's
// --backend-config=tensorrt,plugins=..., a plan's serialized plugin libraries) look up.
#include "ditasKernels.h"
#include "w4a8LoraGemmPlugin.h"

#include <NvInferVersion.h>

#include <string>

using nvinfer1::IPluginCreatorInterface;

// TENSORRTAPI is empty unless TensorRT itself is being built; the library is compiled with hidden visibility.
#define DITAS_TRT_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))

// The plugin creators this library provides (IPluginV3 only: TensorRT-RTX imports nothing else).
DITAS_TRT_PLUGIN_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static ditas::plugin::W4A8LoraGemmPluginCreator sW4A8LoraGemmCreator;
    static IPluginCreatorInterface* const sCreators[] = {&sW4A8LoraGemmCreator};
    nbCreators = int32_t(sizeof(sCreators) / sizeof(sCreators[0]));
    return sCreators;
}

// TensorRT looks this up next to getCreators; plugins log through the logger it finds.
DITAS_TRT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    ditas::plugin::setLoggerFinderImpl(finder);
}

// JSON for `ditas-trt build` (read with ctypes): plugin versions, the TensorRT headers compiled against, the kernels.
DITAS_TRT_PLUGIN_EXPORT char const* ditasTrtPluginInfo()
{
    static std::string const sInfo = std::string("{\"plugins\": {\"") + ditas::plugin::kPLUGIN_NAME + "\": \""
        + ditas::plugin::kPLUGIN_VERSION + "\"}, \"tensorrt_headers\": \"" + std::to_string(NV_TENSORRT_MAJOR) + "."
        + std::to_string(NV_TENSORRT_MINOR) + "." + std::to_string(NV_TENSORRT_PATCH) + "\", \"kernels\": \""
        + ditasKernelsBuildInfo() + "\", \"kernels_api\": " + std::to_string(ditasKernelsApiVersion()) + "}";
    return sInfo.c_str();
}
