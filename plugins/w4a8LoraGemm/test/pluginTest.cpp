// Host-only checks of the W4A8LoraGemm plugin's TensorRT contract (no GPU, no TensorRT library needed):
// field table shared by getFieldNames / createPlugin / getFieldsToSerialize, unknown and invalid fields rejected,
// input layout per fields, supportsFormatCombination consistent with getOutputDataTypes, shape checks, workspace.
// Built as ditas_trt_plugin_test (ctest -R trt_plugin); tests/test_engine.py runs it when it exists.
#include "w4a8LoraGemmPlugin.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

using namespace nvinfer1;
using namespace ditas::plugin;

namespace
{
int gFailures = 0;

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                     \
            ++gFailures;                                                                                               \
        }                                                                                                              \
    } while (0)

struct FieldValues
{
    std::vector<int32_t> values;
    std::vector<PluginField> fields;
    PluginFieldCollection fc{};

    FieldValues(std::vector<std::pair<char const*, int32_t>> const& kv)
    {
        values.reserve(kv.size());
        for (auto const& p : kv)
        {
            values.push_back(p.second);
        }
        for (size_t i = 0; i < kv.size(); ++i)
        {
            fields.emplace_back(kv[i].first, &values[i], PluginFieldType::kINT32, 1);
        }
        fc.nbFields = int32_t(fields.size());
        fc.fields = fields.data();
    }
};

std::unique_ptr<W4A8LoraGemmPlugin> create(W4A8LoraGemmPluginCreator& creator, PluginFieldCollection const* fc)
{
    return std::unique_ptr<W4A8LoraGemmPlugin>(
        static_cast<W4A8LoraGemmPlugin*>(creator.createPlugin("test", fc, TensorRTPhase::kBUILD)));
}

DynamicPluginTensorDesc desc(DataType type, std::vector<int64_t> const& dims, std::vector<int64_t> const& maxDims = {})
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = int32_t(dims.size());
    d.max.nbDims = int32_t(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
        d.max.d[i] = maxDims.empty() ? dims[i] : maxDims[i];
    }
    return d;
}
} // namespace

int main()
{
    W4A8LoraGemmPluginCreator creator;
    CHECK(std::strcmp(creator.getPluginName(), "W4A8LoraGemm") == 0);
    CHECK(std::strcmp(creator.getPluginVersion(), kPLUGIN_VERSION) == 0);

    // One field table for every method.
    PluginFieldCollection const* names = creator.getFieldNames();
    CHECK(names->nbFields == kNB_FIELDS);
    for (int32_t i = 0; i < names->nbFields; ++i)
    {
        CHECK(std::strcmp(names->fields[i].name, kFIELDS[i].name) == 0);
        CHECK(names->fields[i].type == PluginFieldType::kINT32);
    }

    // All inputs present: static scale, prescale, LoRA rank 16, bias; W4, group 64.
    FieldValues full({{"weight_bits", 4}, {"group_size", 64}, {"act_dynamic", 0}, {"has_prescale", 1}, {"rank", 16},
        {"has_bias", 1}});
    auto plugin = create(creator, &full.fc);
    CHECK(plugin != nullptr);
    if (plugin == nullptr)
    {
        return 1;
    }
    CHECK(plugin->nbExpectedInputs() == 8);
    CHECK(plugin->inputIndex(Input::kACT_SCALE) == 3 && plugin->inputIndex(Input::kPRESCALE) == 4);
    CHECK(plugin->inputIndex(Input::kLORA_DOWN) == 5 && plugin->inputIndex(Input::kLORA_UP) == 6);
    CHECK(plugin->inputIndex(Input::kBIAS) == 7);

    // Serialized fields round-trip through createPlugin (the runtime path) and point at the clone's own memory.
    PluginFieldCollection const* ser = plugin->getFieldsToSerialize();
    CHECK(ser->nbFields == kNB_FIELDS);
    std::unique_ptr<IPluginV3> cloned(plugin->clone());
    auto* clone = static_cast<W4A8LoraGemmPlugin*>(cloned.get());
    PluginFieldCollection const* serClone = clone->getFieldsToSerialize();
    for (int32_t i = 0; i < kNB_FIELDS; ++i)
    {
        CHECK(std::strcmp(ser->fields[i].name, kFIELDS[i].name) == 0);
        CHECK(serClone->fields[i].data != ser->fields[i].data);
        CHECK(*static_cast<int32_t const*>(serClone->fields[i].data) == *static_cast<int32_t const*>(ser->fields[i].data));
    }
    auto again = std::unique_ptr<W4A8LoraGemmPlugin>(
        static_cast<W4A8LoraGemmPlugin*>(creator.createPlugin("rt", ser, TensorRTPhase::kRUNTIME)));
    CHECK(again != nullptr && again->nbExpectedInputs() == 8);

    // Minimal node: dynamic scales, no optional inputs; defaults fill in missing fields.
    FieldValues minimal({{"act_dynamic", 1}});
    auto small = create(creator, &minimal.fc);
    CHECK(small != nullptr && small->nbExpectedInputs() == 3 && small->inputIndex(Input::kBIAS) == -1);

    // Rejections: unknown field, wrong type, out-of-range value.
    FieldValues unknown({{"alpha", 1}});
    CHECK(create(creator, &unknown.fc) == nullptr);
    float f = 4.f;
    PluginField wrongType("weight_bits", &f, PluginFieldType::kFLOAT32, 1);
    PluginFieldCollection wrongFc{1, &wrongType};
    CHECK(create(creator, &wrongFc) == nullptr);
    FieldValues badBits({{"weight_bits", 5}});
    CHECK(create(creator, &badBits.fc) == nullptr);

    // Types: output = x's type; supportsFormatCombination agrees with getOutputDataTypes.
    int64_t const K = 128, N = 96, R = 16;
    for (DataType xt : {DataType::kHALF, DataType::kFLOAT})
    {
        std::vector<DynamicPluginTensorDesc> io = {desc(xt, {-1, 16, K}, {8, 16, K}), desc(DataType::kINT4, {N, K}),
            desc(DataType::kFLOAT, {N, K / 64}), desc(DataType::kFLOAT, {1}), desc(DataType::kFLOAT, {K}),
            desc(DataType::kHALF, {K, R}), desc(DataType::kHALF, {R, N}), desc(DataType::kFLOAT, {N}),
            desc(xt, {-1, 16, N})};
        std::vector<DataType> inTypes;
        for (int i = 0; i < 8; ++i)
        {
            inTypes.push_back(io[size_t(i)].desc.type);
        }
        DataType outType{};
        CHECK(plugin->getOutputDataTypes(&outType, 1, inTypes.data(), 8) == 0 && outType == xt);
        for (int32_t pos = 0; pos < 9; ++pos)
        {
            CHECK(plugin->supportsFormatCombination(pos, io.data(), 8, 1));
        }
        io[8].desc.type = xt == DataType::kHALF ? DataType::kFLOAT : DataType::kHALF; // output must follow x
        CHECK(!plugin->supportsFormatCombination(8, io.data(), 8, 1));
        io[8].desc.type = xt;
        io[1].desc.type = DataType::kINT8; // W4 plugin wants INT4 weights
        CHECK(!plugin->supportsFormatCombination(1, io.data(), 8, 1));
        io[1].desc.type = DataType::kINT4;
        io[5].desc.format = TensorFormat::kHWC8;
        CHECK(!plugin->supportsFormatCombination(5, io.data(), 8, 1));
        io[5].desc.format = TensorFormat::kLINEAR;

        // Shapes: consistent dims configure; a wrong lora_up shape does not.
        CHECK(plugin->configurePlugin(io.data(), 8, &io[8], 1) == 0);
        // Workspace: x_q 8*16*128 B | x_scale 8*16*4 B | lora_act 8*16*16*4 B, each rounded up to 256 B.
        CHECK(plugin->getWorkspaceSize(io.data(), 8, &io[8], 1) == 16384 + 512 + 8192);
        io[6] = desc(DataType::kHALF, {R, N + 1});
        CHECK(plugin->configurePlugin(io.data(), 8, &io[8], 1) != 0);
        CHECK(plugin->configurePlugin(io.data(), 7, &io[8], 1) != 0); // fields and node inputs disagree
    }

    if (gFailures == 0)
    {
        std::printf("W4A8LoraGemm plugin contract: all checks passed\n");
    }
    return gFailures == 0 ? 0 : 1;
}
