// W4A8LoraGemm IPluginV3 and its IPluginCreatorV3One (see w4a8LoraGemmPlugin.h and README.md).
#include "w4a8LoraGemmPlugin.h"

#include "ditasKernels.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>

using namespace nvinfer1;

namespace ditas
{
namespace plugin
{

// ---------------------------------------------------------------------------------------------------------------
// Fields: declared once
// ---------------------------------------------------------------------------------------------------------------
FieldSpec const kFIELDS[] = {
    {"weight_bits", &GemmFields::weightBits, 4, 8},
    {"group_size", &GemmFields::groupSize, 0, 1 << 30},
    {"act_dynamic", &GemmFields::actDynamic, 0, 1},
    {"has_prescale", &GemmFields::hasPrescale, 0, 1},
    {"rank", &GemmFields::rank, 0, 1 << 16},
    {"has_bias", &GemmFields::hasBias, 0, 1},
};
int32_t const kNB_FIELDS = int32_t(sizeof(kFIELDS) / sizeof(kFIELDS[0]));

void GemmFields::validate() const
{
    for (int32_t i = 0; i < kNB_FIELDS; ++i)
    {
        int32_t const v = this->*kFIELDS[i].member;
        if (v < kFIELDS[i].minValue || v > kFIELDS[i].maxValue)
        {
            throw std::invalid_argument(std::string("field '") + kFIELDS[i].name + "' = " + std::to_string(v)
                + " is outside [" + std::to_string(kFIELDS[i].minValue) + ", " + std::to_string(kFIELDS[i].maxValue)
                + "]");
        }
    }
    if (weightBits != 4 && weightBits != 8)
    {
        throw std::invalid_argument("field 'weight_bits' must be 4 or 8, got " + std::to_string(weightBits));
    }
}

namespace
{
ILoggerFinder* gLoggerFinder{nullptr};

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string(kPLUGIN_NAME) + " plugin: " + message;
        ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
    }
}

int64_t volume(Dims const& d, int32_t from, int32_t to)
{
    int64_t v = 1;
    for (int32_t i = from; i < to; ++i)
    {
        v *= d.d[i];
    }
    return v;
}

size_t align256(size_t bytes)
{
    return (bytes + 255) & ~size_t(255);
}

// Workspace layout for M rows: x_q int8 [M, K] | x_scale fp32 [max(M, 1)] | lora_act fp32 [M, r].
struct WorkspaceLayout
{
    size_t xq, xScale, loraAct, total;
};

WorkspaceLayout layoutFor(int64_t M, int64_t K, int64_t rank)
{
    WorkspaceLayout w{};
    w.xq = 0;
    w.xScale = align256(size_t(M * K));
    w.loraAct = w.xScale + align256(sizeof(float) * size_t(M > 1 ? M : 1));
    w.total = w.loraAct + align256(sizeof(float) * size_t(M * rank));
    return w;
}
} // namespace

void logError(std::string const& message) noexcept
{
    logMessage(ILogger::Severity::kERROR, message);
}

void logWarning(std::string const& message) noexcept
{
    logMessage(ILogger::Severity::kWARNING, message);
}

void setLoggerFinderImpl(ILoggerFinder* finder)
{
    gLoggerFinder = finder;
}

// ---------------------------------------------------------------------------------------------------------------
// Plugin
// ---------------------------------------------------------------------------------------------------------------
W4A8LoraGemmPlugin::W4A8LoraGemmPlugin(GemmFields const& fields)
    : mFields(fields)
{
    mFields.validate();
    initFieldsToSerialize();
}

W4A8LoraGemmPlugin::W4A8LoraGemmPlugin(W4A8LoraGemmPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mFields(other.mFields)
{
    initFieldsToSerialize(); // the collection must point at this object's members
}

void W4A8LoraGemmPlugin::initFieldsToSerialize()
{
    mDataToSerialize.clear();
    for (int32_t i = 0; i < kNB_FIELDS; ++i)
    {
        mDataToSerialize.emplace_back(kFIELDS[i].name, &(mFields.*kFIELDS[i].member), PluginFieldType::kINT32, 1);
    }
    mFCToSerialize.nbFields = int32_t(mDataToSerialize.size());
    mFCToSerialize.fields = mDataToSerialize.data();
}

int32_t W4A8LoraGemmPlugin::inputIndex(Input role) const noexcept
{
    int32_t idx = 3; // x, qweight, w_scale are always present
    switch (role)
    {
    case Input::kX: return 0;
    case Input::kQWEIGHT: return 1;
    case Input::kWSCALE: return 2;
    case Input::kACT_SCALE: return mFields.actDynamic ? -1 : idx;
    default: break;
    }
    idx += mFields.actDynamic ? 0 : 1;
    if (role == Input::kPRESCALE)
    {
        return mFields.hasPrescale ? idx : -1;
    }
    idx += mFields.hasPrescale ? 1 : 0;
    if (role == Input::kLORA_DOWN)
    {
        return mFields.rank > 0 ? idx : -1;
    }
    if (role == Input::kLORA_UP)
    {
        return mFields.rank > 0 ? idx + 1 : -1;
    }
    idx += mFields.rank > 0 ? 2 : 0;
    return mFields.hasBias ? idx : -1; // kBIAS
}

int32_t W4A8LoraGemmPlugin::nbExpectedInputs() const noexcept
{
    return 3 + (mFields.actDynamic ? 0 : 1) + (mFields.hasPrescale ? 1 : 0) + (mFields.rank > 0 ? 2 : 0)
        + (mFields.hasBias ? 1 : 0);
}

IPluginCapability* W4A8LoraGemmPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

IPluginV3* W4A8LoraGemmPlugin::clone() noexcept
{
    try
    {
        return new W4A8LoraGemmPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone: ") + e.what());
    }
    return nullptr;
}

AsciiChar const* W4A8LoraGemmPlugin::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

AsciiChar const* W4A8LoraGemmPlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

AsciiChar const* W4A8LoraGemmPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t W4A8LoraGemmPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t W4A8LoraGemmPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        if (nbOutputs != 1 || nbInputs != nbExpectedInputs())
        {
            throw std::invalid_argument("expected " + std::to_string(nbExpectedInputs()) + " inputs and 1 output, got "
                + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
        }
        outputTypes[0] = inputTypes[0]; // y has the dtype of x (fp16 or fp32)
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getOutputDataTypes: ") + e.what());
    }
    return -1;
}

int32_t W4A8LoraGemmPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        if (nbInputs != nbExpectedInputs() || nbOutputs != 1)
        {
            throw std::invalid_argument("wrong number of inputs or outputs");
        }
        DimsExprs const& x = inputs[0];
        if (x.nbDims < 1 || inputs[1].nbDims != 2)
        {
            throw std::invalid_argument("x must be [..., K] and qweight [N, K]");
        }
        outputs[0] = x; // [..., K] -> [..., N]
        outputs[0].d[x.nbDims - 1] = inputs[1].d[0];
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getOutputShapes: ") + e.what());
    }
    return -1;
}

bool W4A8LoraGemmPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        if (nbInputs != nbExpectedInputs() || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
        {
            return false;
        }
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        if (pos == nbInputs) // the output: same type as x (matches getOutputDataTypes)
        {
            return desc.type == inOut[0].desc.type;
        }
        if (pos == 0)
        {
            return desc.type == DataType::kHALF || desc.type == DataType::kFLOAT;
        }
        if (pos == inputIndex(Input::kQWEIGHT))
        {
            return desc.type == (mFields.weightBits == 4 ? DataType::kINT4 : DataType::kINT8);
        }
        if (pos == inputIndex(Input::kLORA_DOWN) || pos == inputIndex(Input::kLORA_UP))
        {
            return desc.type == DataType::kHALF;
        }
        return desc.type == DataType::kFLOAT; // w_scale, act_scale, act_prescale, bias
    }
    catch (std::exception const& e)
    {
        logError(std::string("supportsFormatCombination: ") + e.what());
    }
    return false;
}

void W4A8LoraGemmPlugin::checkDims(Dims const* dims, int32_t nbInputs) const
{
    if (nbInputs != nbExpectedInputs())
    {
        throw std::invalid_argument("expected " + std::to_string(nbExpectedInputs()) + " inputs, got "
            + std::to_string(nbInputs) + " (fields and node inputs disagree)");
    }
    Dims const& x = dims[0];
    Dims const& w = dims[1];
    if (x.nbDims < 1 || w.nbDims != 2)
    {
        throw std::invalid_argument("x must be [..., K] and qweight [N, K]");
    }
    int64_t const K = x.d[x.nbDims - 1];
    int64_t const N = w.d[0];
    if (K != w.d[1])
    {
        throw std::invalid_argument("x has K = " + std::to_string(K) + " but qweight is [" + std::to_string(N) + ", "
            + std::to_string(w.d[1]) + "]");
    }
    int64_t const groups = mFields.groupSize > 0 ? K / mFields.groupSize : 1;
    if (mFields.groupSize > 0 && K % mFields.groupSize != 0)
    {
        throw std::invalid_argument("group_size " + std::to_string(mFields.groupSize) + " does not divide K " + std::to_string(K));
    }
    auto expect = [&](Input role, std::initializer_list<int64_t> shape, char const* name) {
        int32_t const i = inputIndex(role);
        if (i < 0)
        {
            return;
        }
        Dims const& d = dims[i];
        bool ok = d.nbDims == int32_t(shape.size());
        int32_t j = 0;
        for (int64_t s : shape)
        {
            ok = ok && d.d[j++] == s;
        }
        if (!ok)
        {
            std::string want;
            for (int64_t s : shape)
            {
                want += (want.empty() ? "" : ", ") + std::to_string(s);
            }
            throw std::invalid_argument(std::string(name) + " must be [" + want + "]");
        }
    };
    expect(Input::kWSCALE, {N, groups}, "w_scale");
    expect(Input::kACT_SCALE, {1}, "act_scale");
    expect(Input::kPRESCALE, {K}, "act_prescale");
    expect(Input::kLORA_DOWN, {K, mFields.rank}, "lora_down");
    expect(Input::kLORA_UP, {mFields.rank, N}, "lora_up");
    expect(Input::kBIAS, {N}, "bias");
}

int32_t W4A8LoraGemmPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        if (nbOutputs != 1)
        {
            throw std::invalid_argument("one output expected");
        }
        std::vector<Dims> dims(size_t(nbInputs > 0 ? nbInputs : 0));
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[size_t(i)] = in[i].desc.dims;
        }
        checkDims(dims.data(), nbInputs); // -1 leading dims of x do not take part in the checks
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("configurePlugin: ") + e.what());
    }
    return -1;
}

size_t W4A8LoraGemmPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const* /*outputs*/,
    int32_t /*nbOutputs*/) const noexcept
{
    try
    {
        if (nbInputs < 1)
        {
            return 0;
        }
        Dims const& xMax = inputs[0].max;
        int64_t const K = xMax.d[xMax.nbDims - 1];
        return layoutFor(volume(xMax, 0, xMax.nbDims - 1), K, mFields.rank).total;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getWorkspaceSize: ") + e.what());
    }
    return 0;
}

int32_t W4A8LoraGemmPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    try
    {
        std::vector<Dims> dims(size_t(nbInputs > 0 ? nbInputs : 0));
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[size_t(i)] = in[i].dims;
        }
        checkDims(dims.data(), nbInputs);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("onShapeChange: ") + e.what());
    }
    return -1;
}

int32_t W4A8LoraGemmPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        Dims const& x = inputDesc[0].dims;
        int64_t const M = volume(x, 0, x.nbDims - 1);
        int64_t const K = x.d[x.nbDims - 1];
        int64_t const N = inputDesc[1].dims.d[0];
        int32_t const numGroups = int32_t(inputDesc[2].dims.d[1]);
        int32_t dtype = 0;
        switch (inputDesc[0].type) // the only dtype switch: the kernels take fp16 or fp32 activations
        {
        case DataType::kHALF: dtype = DITAS_DTYPE_FP16; break;
        case DataType::kFLOAT: dtype = DITAS_DTYPE_FP32; break;
        default: throw std::invalid_argument("x must be fp16 or fp32");
        }
        WorkspaceLayout const ws = layoutFor(M, K, mFields.rank);
        char* base = static_cast<char*>(workspace);
        void* xq = base + ws.xq;
        float* xScale = reinterpret_cast<float*>(base + ws.xScale);
        float* loraAct = mFields.rank > 0 ? reinterpret_cast<float*>(base + ws.loraAct) : nullptr;
        auto input = [&](Input role) -> void const* {
            int32_t const i = inputIndex(role);
            return i < 0 ? nullptr : inputs[i];
        };
        auto const st = reinterpret_cast<ditasStream_t>(stream);

        int status = ditasQuantizeAct(inputs[0], dtype, static_cast<float const*>(input(Input::kACT_SCALE)),
            static_cast<float const*>(input(Input::kPRESCALE)), input(Input::kLORA_DOWN), mFields.rank, xq, xScale,
            loraAct, int(M), int(K), DITAS_PATH_AUTO, st);
        if (status != 0)
        {
            throw std::runtime_error(std::string("activation quantization: ") + ditasGetLastErrorString());
        }
        auto gemm = mFields.weightBits == 4 ? ditasW4A8Gemm : ditasW8A8Gemm;
        status = gemm(xq, xScale, mFields.actDynamic, inputs[1], static_cast<float const*>(inputs[2]), numGroups,
            static_cast<float const*>(input(Input::kBIAS)), loraAct, input(Input::kLORA_UP), mFields.rank, outputs[0],
            dtype, int(M), int(N), int(K), DITAS_PATH_AUTO, st);
        if (status != 0)
        {
            throw std::runtime_error(std::string("GEMM: ") + ditasGetLastErrorString());
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("enqueue: ") + e.what());
    }
    return -1;
}

IPluginV3* W4A8LoraGemmPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* W4A8LoraGemmPlugin::getFieldsToSerialize() noexcept
{
    return &mFCToSerialize;
}

// ---------------------------------------------------------------------------------------------------------------
// Creator
// ---------------------------------------------------------------------------------------------------------------
W4A8LoraGemmPluginCreator::W4A8LoraGemmPluginCreator()
{
    for (int32_t i = 0; i < kNB_FIELDS; ++i)
    {
        mFieldNames.emplace_back(kFIELDS[i].name, nullptr, PluginFieldType::kINT32, 1);
    }
    mFC.nbFields = int32_t(mFieldNames.size());
    mFC.fields = mFieldNames.data();
}

AsciiChar const* W4A8LoraGemmPluginCreator::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

AsciiChar const* W4A8LoraGemmPluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

AsciiChar const* W4A8LoraGemmPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* W4A8LoraGemmPluginCreator::getFieldNames() noexcept
{
    return &mFC;
}

IPluginV3* W4A8LoraGemmPluginCreator::createPlugin(
    AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        GemmFields fields; // defaults, overwritten by the fields that are given
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            FieldSpec const* spec = nullptr;
            for (int32_t j = 0; j < kNB_FIELDS; ++j)
            {
                if (f.name != nullptr && std::strcmp(f.name, kFIELDS[j].name) == 0)
                {
                    spec = &kFIELDS[j];
                }
            }
            if (spec == nullptr)
            {
                throw std::invalid_argument(std::string("unknown field '") + (f.name ? f.name : "") + "'");
            }
            if (f.type != PluginFieldType::kINT32 || f.length != 1 || f.data == nullptr)
            {
                throw std::invalid_argument(std::string("field '") + spec->name + "' must be one INT32");
            }
            fields.*spec->member = *static_cast<int32_t const*>(f.data);
        }
        return new W4A8LoraGemmPlugin(fields); // validates
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin(") + (name ? name : "") + "): " + e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace ditas
