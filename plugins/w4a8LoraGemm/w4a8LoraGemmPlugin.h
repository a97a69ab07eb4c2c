/*
 * W4A8LoraGemm: one TensorRT IPluginV3 layer per quantized linear of the ditas-trt format
 * (ditas_trt/quant/format.py; node contract in ditas_trt/export/plugin_spec.py; tables in README.md).
 *
 *   y[..., N] = W4A8LoraGemm(x[..., K], qweight, w_scale, [act_scale], [act_prescale], [lora_down, lora_up], [bias])
 *
 * enqueue runs two kernels of libditas_kernels (ditasKernels.h): the activation quantization with the LoRA-down
 * projection fused (into the workspace: x_q int8 [M, K], x_scale fp32 [1 or M], lora_act fp32 [M, r]), then the
 * W4A8 (or W8A8) GEMM whose epilogue applies the scales, the bias and lora_act . lora_up.
 *
 * No CUDA call happens while creating, cloning, configuring or building; engines build on a CPU-only machine.
 */
#ifndef DITAS_W4A8_LORA_GEMM_PLUGIN_H
#define DITAS_W4A8_LORA_GEMM_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ditas
{
namespace plugin
{

constexpr char const* kPLUGIN_NAME = "W4A8LoraGemm";
constexpr char const* kPLUGIN_VERSION = "1"; // bump whenever a field is added, removed or changes meaning
constexpr char const* kPLUGIN_NAMESPACE = "";

// The fields of the node, all INT32 scalars (ONNX int attributes arrive as INT32).
struct GemmFields
{
    int32_t weightBits{4};  // 4: qweight INT4 [N, K]; 8: qweight INT8 [N, K]
    int32_t groupSize{0};   // 0: one weight scale per output channel; else G (divides K)
    int32_t actDynamic{0};  // 0: static per-tensor scale (input act_scale); 1: per-token scales
    int32_t hasPrescale{0}; // 1: input act_prescale fp32 [K]
    int32_t rank{0};        // LoRA rank r; > 0: inputs lora_down fp16 [K, r], lora_up fp16 [r, N]
    int32_t hasBias{0};     // 1: input bias fp32 [N]

    // Throws std::invalid_argument naming the field.
    void validate() const;
};

// The single declaration of the field names: getFieldNames, createPlugin and getFieldsToSerialize all use it.
struct FieldSpec
{
    char const* name;
    int32_t GemmFields::*member;
    int32_t minValue;
    int32_t maxValue;
};
extern FieldSpec const kFIELDS[];
extern int32_t const kNB_FIELDS;

// Input roles in node order; absent optional inputs are skipped (see inputIndex).
enum class Input : int32_t
{
    kX = 0,
    kQWEIGHT,
    kWSCALE,
    kACT_SCALE,
    kPRESCALE,
    kLORA_DOWN,
    kLORA_UP,
    kBIAS,
};

class W4A8LoraGemmPlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit W4A8LoraGemmPlugin(GemmFields const& fields);
    W4A8LoraGemmPlugin(W4A8LoraGemmPlugin const& other);
    W4A8LoraGemmPlugin& operator=(W4A8LoraGemmPlugin const&) = delete;
    ~W4A8LoraGemmPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    nvinfer1::AsciiChar const* getPluginName() const noexcept override;
    nvinfer1::AsciiChar const* getPluginVersion() const noexcept override;
    nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    // Position of an input role in the node's inputs, or -1 when the fields say it is absent.
    int32_t inputIndex(Input role) const noexcept;
    int32_t nbExpectedInputs() const noexcept;

private:
    void initFieldsToSerialize();
    // Checks the static dims of every input against x / qweight; throws std::invalid_argument.
    void checkDims(nvinfer1::Dims const* dims, int32_t nbInputs) const;

    GemmFields mFields;
    std::vector<nvinfer1::PluginField> mDataToSerialize;
    nvinfer1::PluginFieldCollection mFCToSerialize{};
};

class W4A8LoraGemmPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    W4A8LoraGemmPluginCreator();
    ~W4A8LoraGemmPluginCreator() override = default;

    nvinfer1::AsciiChar const* getPluginName() const noexcept override;
    nvinfer1::AsciiChar const* getPluginVersion() const noexcept override;
    nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(nvinfer1::AsciiChar const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFC{};
};

// Logging through the ILoggerFinder TensorRT hands to setLoggerFinder (stderr before that).
void logError(std::string const& message) noexcept;
void logWarning(std::string const& message) noexcept;
void setLoggerFinderImpl(nvinfer1::ILoggerFinder* finder);

} // namespace plugin
} // namespace ditas

#endif // DITAS_W4A8_LORA_GEMM_PLUGIN_H
