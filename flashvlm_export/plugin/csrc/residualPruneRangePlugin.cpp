#include "residualPruneRangePlugin.h"
#include "residualPruneKernel.h"
#include "residualPrunePlugin.h"

#include <cstdio>
#include <cstring>
#include <exception>

using namespace nvinfer1;

namespace flashvlm
{
namespace
{

constexpr int32_t kInputs = 3;  // gram, residual, budget

void report(char const* what) noexcept
{
    std::fprintf(stderr, "[flashvlm::ResidualPruneRange] %s\n", what);
}

bool readInt(PluginField const& field, int32_t& value) noexcept
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    if (field.type == PluginFieldType::kINT32)
    {
        value = *static_cast<int32_t const*>(field.data);
        return true;
    }
    if (field.type == PluginFieldType::kINT64)
    {
        value = static_cast<int32_t>(*static_cast<int64_t const*>(field.data));
        return true;
    }
    return false;
}

//! The fields in serialisation order, each with the member it is read into.
struct FieldSlot
{
    char const* name;
    int32_t RangeFields::*member;
};

constexpr FieldSlot kFieldSlots[] = {{"k_min", &RangeFields::kMin}, {"k_max", &RangeFields::kMax},
    {"k_div_max", &RangeFields::kDivMax}, {"step", &RangeFields::step}, {"max_rounds", &RangeFields::maxRounds}};

//! The checks that need no shapes; k_max < N and the widths are checked once N is known.
bool validFields(RangeFields const& f) noexcept
{
    return f.kMin >= 2 && f.kMin <= f.kMax && f.kDivMax >= 1 && f.step >= 1 && f.maxRounds >= 0;
}

} // namespace

ResidualPruneRangePlugin::ResidualPruneRangePlugin(RangeFields const& fields)
    : mFields(fields)
{
    refreshFields();
}

void ResidualPruneRangePlugin::refreshFields() noexcept
{
    mPluginFields.clear();
    for (FieldSlot const& slot : kFieldSlots)
    {
        mPluginFields.emplace_back(slot.name, &(mFields.*slot.member), PluginFieldType::kINT32, 1);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mPluginFields.size());
    mFieldCollection.fields = mPluginFields.data();
}

IPluginCapability* ResidualPruneRangePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* ResidualPruneRangePlugin::clone() noexcept
{
    try
    {
        auto* copy = new ResidualPruneRangePlugin(*this);
        copy->refreshFields();  // the copied fields point at the original's members
        return copy;
    }
    catch (std::exception const& e)
    {
        report(e.what());
    }
    return nullptr;
}

char const* ResidualPruneRangePlugin::getPluginName() const noexcept
{
    return kRangePluginName;
}

char const* ResidualPruneRangePlugin::getPluginVersion() const noexcept
{
    return kRangePluginVersion;
}

char const* ResidualPruneRangePlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t ResidualPruneRangePlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t ResidualPruneRangePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != kInputs || nbOutputs != 1)
    {
        report("expects 3 inputs (gram, residual, budget) and 1 output");
        return -1;
    }
    Dims const& gram = in[0].desc.dims;
    Dims const& residual = in[1].desc.dims;
    Dims const& budget = in[2].desc.dims;
    if (gram.nbDims != 3 || residual.nbDims != 2 || budget.nbDims != 1)
    {
        report("gram must be (B, N, N), residual (B, W) and budget (B)");
        return -1;
    }
    if (gram.d[1] > 0 && gram.d[2] > 0 && gram.d[1] != gram.d[2])
    {
        report("gram must be square per image");
        return -1;
    }
    if (gram.d[1] > 0 && mFields.kMax >= gram.d[1])
    {
        report("k_max must be below N (a budget of N keeps every token: nothing to prune)");
        return -1;
    }
    if (residual.d[1] > 0 && (residual.d[1] < mFields.kDivMax || residual.d[1] > kMaxResidual))
    {
        report("residual width must be in [k_div_max, 3840]");
        return -1;
    }
    return 0;
}

int32_t ResidualPruneRangePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != kInputs)
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT32;
    return 0;
}

int32_t ResidualPruneRangePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* shapeInputs, int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kInputs || nbOutputs != 1 || inputs[1].nbDims != 2)
    {
        return -1;
    }
    outputs[0].nbDims = 2;
    outputs[0].d[0] = inputs[1].d[0];
    outputs[0].d[1] = exprBuilder.constant(mFields.kDivMax);
    return 0;
}

bool ResidualPruneRangePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kInputs || nbOutputs != 1 || pos < 0 || pos > kInputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    return pos == 0 ? desc.type == DataType::kFLOAT : desc.type == DataType::kINT32;  // residual, budget, kept
}

int32_t ResidualPruneRangePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != kInputs || nbOutputs != 1)
    {
        return -1;
    }
    mBatch = static_cast<int32_t>(in[0].dims.d[0]);
    mTokens = static_cast<int32_t>(in[0].dims.d[1]);
    mWidth = static_cast<int32_t>(in[1].dims.d[1]);
    if (in[1].dims.d[0] != mBatch || in[2].dims.d[0] != mBatch || !validRangeArguments(mBatch, mTokens, mWidth, mFields))
    {
        report("inconsistent shapes: need gram (B, N, N), residual (B, W), budget (B) with k_div_max <= W <= min(N, "
               "3840) and k_max < N");
        return -1;
    }
    return 0;
}

int32_t ResidualPruneRangePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (mBatch == 0)  // onShapeChange was not called on this instance: read the shapes here
    {
        mBatch = static_cast<int32_t>(inputDesc[0].dims.d[0]);
        mTokens = static_cast<int32_t>(inputDesc[0].dims.d[1]);
        mWidth = static_cast<int32_t>(inputDesc[1].dims.d[1]);
    }
    // A rejected image comes back as -1 in all of its k_div_max slots (see residualPruneRangePlugin.h).
    cudaError_t const status = launchResidualPruneRange(static_cast<float const*>(inputs[0]), mBatch, mTokens,
        static_cast<int32_t const*>(inputs[1]), mWidth, static_cast<int32_t const*>(inputs[2]), mFields,
        static_cast<int32_t*>(outputs[0]), stream);
    if (status != cudaSuccess)
    {
        report(cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

IPluginV3* ResidualPruneRangePlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    return clone();
}

PluginFieldCollection const* ResidualPruneRangePlugin::getFieldsToSerialize() noexcept
{
    refreshFields();
    return &mFieldCollection;
}

// ---------------------------------------------------------------- creator

ResidualPruneRangeCreator::ResidualPruneRangeCreator()
{
    for (FieldSlot const& slot : kFieldSlots)
    {
        mFieldNames.emplace_back(slot.name, nullptr, PluginFieldType::kINT32, 1);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* ResidualPruneRangeCreator::getPluginName() const noexcept
{
    return kRangePluginName;
}

char const* ResidualPruneRangeCreator::getPluginVersion() const noexcept
{
    return kRangePluginVersion;
}

char const* ResidualPruneRangeCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* ResidualPruneRangeCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* ResidualPruneRangeCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    try
    {
        RangeFields fields{-1, -1, -1, 8, 0};  // step 8 and no cap unless given, as ResidualPrune; the rest required
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            for (FieldSlot const& slot : kFieldSlots)
            {
                if (std::strcmp(field.name, slot.name) == 0 && !readInt(field, fields.*slot.member))
                {
                    report("fields k_min, k_max, k_div_max, step and max_rounds must be int32 (or int64) scalars");
                    return nullptr;
                }
            }
        }
        if (!validFields(fields))
        {
            report("needs 2 <= k_min <= k_max, k_div_max >= 1, step >= 1 and max_rounds >= 0");
            return nullptr;
        }
        return new ResidualPruneRangePlugin(fields);
    }
    catch (std::exception const& e)
    {
        report(e.what());
    }
    return nullptr;
}

} // namespace flashvlm
