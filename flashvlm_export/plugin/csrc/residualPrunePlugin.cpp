#include "residualPrunePlugin.h"
#include "residualPruneCore.h"
#include "residualPruneRangePlugin.h"
#include "residualPruneKernel.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <new>

using namespace nvinfer1;

namespace flashvlm
{
namespace
{

void report(char const* what) noexcept
{
    std::fprintf(stderr, "[flashvlm::ResidualPrune] %s\n", what);
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

} // namespace

ResidualPrunePlugin::ResidualPrunePlugin(int32_t kDiv, int32_t step)
    : mKDiv(kDiv)
    , mStep(step)
{
    refreshFields();
}

void ResidualPrunePlugin::refreshFields() noexcept
{
    mFields.clear();
    mFields.emplace_back("k_div", &mKDiv, PluginFieldType::kINT32, 1);
    mFields.emplace_back("step", &mStep, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

IPluginCapability* ResidualPrunePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* ResidualPrunePlugin::clone() noexcept
{
    try
    {
        auto* copy = new ResidualPrunePlugin(*this);
        copy->refreshFields();  // the copied fields point at the original's members
        return copy;
    }
    catch (std::exception const& e)
    {
        report(e.what());
    }
    return nullptr;
}

char const* ResidualPrunePlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* ResidualPrunePlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* ResidualPrunePlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t ResidualPrunePlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t ResidualPrunePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        report("expects 2 inputs (gram, residual) and 1 output");
        return -1;
    }
    Dims const& gram = in[0].desc.dims;
    Dims const& residual = in[1].desc.dims;
    if (gram.nbDims != 3 || residual.nbDims != 2)
    {
        report("gram must be (B, N, N) and residual (B, R0)");
        return -1;
    }
    if (gram.d[1] > 0 && gram.d[2] > 0 && gram.d[1] != gram.d[2])
    {
        report("gram must be square per image");
        return -1;
    }
    if (residual.d[1] > 0 && (residual.d[1] < mKDiv || residual.d[1] > kMaxResidual))
    {
        report("residual length must be in [k_div, 3840]");
        return -1;
    }
    return 0;
}

int32_t ResidualPrunePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != 2)
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT32;
    return 0;
}

int32_t ResidualPrunePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1 || inputs[1].nbDims != 2)
    {
        return -1;
    }
    outputs[0].nbDims = 2;
    outputs[0].d[0] = inputs[1].d[0];
    outputs[0].d[1] = exprBuilder.constant(mKDiv);
    return 0;
}

bool ResidualPrunePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos > 2)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    return pos == 0 ? desc.type == DataType::kFLOAT : desc.type == DataType::kINT32;
}

int32_t ResidualPrunePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        return -1;
    }
    mBatch = static_cast<int32_t>(in[0].dims.d[0]);
    mTokens = static_cast<int32_t>(in[0].dims.d[1]);
    mResidual = static_cast<int32_t>(in[1].dims.d[1]);
    if (in[1].dims.d[0] != mBatch || mResidual < mKDiv || mResidual > mTokens || mResidual > kMaxResidual)
    {
        report("inconsistent shapes: need gram (B, N, N), residual (B, R0) with k_div <= R0 <= min(N, 3840)");
        return -1;
    }
    return 0;
}

int32_t ResidualPrunePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (mBatch == 0)  // onShapeChange was not called on this instance: read the shapes here
    {
        mBatch = static_cast<int32_t>(inputDesc[0].dims.d[0]);
        mTokens = static_cast<int32_t>(inputDesc[0].dims.d[1]);
        mResidual = static_cast<int32_t>(inputDesc[1].dims.d[1]);
    }
    // An image whose residual list holds an id outside [0, N) comes back as kRejectedToken (-1) in all
    // of its k_div slots (see residualPrunePlugin.h): enqueue is asynchronous, so no status can.
    cudaError_t const status = launchResidualPrune(static_cast<float const*>(inputs[0]), mBatch, mTokens,
        static_cast<int32_t const*>(inputs[1]), mResidual, mKDiv, mStep, static_cast<int32_t*>(outputs[0]), stream);
    if (status != cudaSuccess)
    {
        report(cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

IPluginV3* ResidualPrunePlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    return clone();
}

PluginFieldCollection const* ResidualPrunePlugin::getFieldsToSerialize() noexcept
{
    refreshFields();
    return &mFieldCollection;
}

// ---------------------------------------------------------------- creator

ResidualPruneCreator::ResidualPruneCreator()
{
    mFieldNames.emplace_back("k_div", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("step", nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* ResidualPruneCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* ResidualPruneCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* ResidualPruneCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* ResidualPruneCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* ResidualPruneCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    try
    {
        int32_t kDiv = -1;
        int32_t step = 8;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            bool ok = true;
            if (std::strcmp(field.name, "k_div") == 0)
            {
                ok = readInt(field, kDiv);
            }
            else if (std::strcmp(field.name, "step") == 0)
            {
                ok = readInt(field, step);
            }
            if (!ok)
            {
                report("fields k_div and step must be int32 (or int64) scalars");
                return nullptr;
            }
        }
        if (kDiv < 1 || step < 1)
        {
            report("needs k_div >= 1 and step >= 1");
            return nullptr;
        }
        return new ResidualPrunePlugin(kDiv, step);
    }
    catch (std::exception const& e)
    {
        report(e.what());
    }
    return nullptr;
}

} // namespace flashvlm

// ---------------------------------------------------------------- library entry point

/*
 * The one registration path of this library: TensorRT's IPluginRegistry::loadLibrary (Python
 * registry.load_library, trtexec --dynamicPlugins / --setPluginsToSerialize) dlopens it, calls
 * getCreators and registers what it returns (NvInferRuntimeCommon.h, loadLibrary; the symbol is the
 * one NVIDIA's own plugin library exports, plugin/common/vfcCommon.cpp:73 on release/10.3,
 * plugin/vc/vfcCommon.cpp:70 on release/11.1). getCreators always returns both creators (ResidualPrune
 * v1 and ResidualPruneRange v1, residualPruneRangePlugin.h) and the library registers nothing by itself, so a plain dlopen of it (polygraphy --plugins,
 * trtexec --staticPlugins) registers nothing: those tools take libflashvlm_plugins_register.so
 * (residualPruneRegister.cpp), which registers these creators through getPluginRegistry().
 */
extern "C" FLASHVLM_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static flashvlm::ResidualPruneCreator creator;
    static flashvlm::ResidualPruneRangeCreator rangeCreator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator, &rangeCreator};
    nbCreators = 2;
    return creators;
}
