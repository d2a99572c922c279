/*
 * flashvlm::ResidualPrune, version 1: TensorRT IPluginV3 running all pruning rounds in one kernel.
 *
 * Inputs:  0 gram      (B, N, N)  float32  Gram matrix of the l2-normalised vision features
 *          1 residual  (B, |R0|)  int32    residual list from the partition step, in order
 * Output:  0 kept      (B, k_div) int32    the kept residual tokens, in ALGORITHM.md step 11 order
 * Fields:  k_div (int32), step (int32, the effective step after any max_rounds cap)
 *
 * Error channel: a token id in `residual` outside [0, N) makes the kernel write kRejectedToken (-1)
 * to every kept slot of that image (and read nothing out of range); other images are unaffected.
 * The output is the only place for it: IPluginV3OneRuntime::enqueue returns before the kernel runs
 * (asynchronous, may be captured in a CUDA graph), and a flag in the workspace
 * (IPluginV3OneBuild::getWorkspaceSize) would be scratch that TensorRT never hands back to the
 * caller. A consumer detects the error as a negative index.
 *
 * Loading: libflashvlm_plugins.so exports getCreators only, for IPluginRegistry::loadLibrary
 * (registry.load_library, trtexec --dynamicPlugins). A plain dlopen registers nothing; tools that do
 * only that (polygraphy run --plugins, trtexec --staticPlugins) take libflashvlm_plugins_register.so.
 */
#pragma once

#include "NvInferRuntime.h"

#include <cstdint>
#include <string>
#include <vector>

//! The libraries' entry points; everything else stays local (also by the linker maps *.map).
#define FLASHVLM_EXPORT __attribute__((visibility("default")))

namespace flashvlm
{

constexpr char const* kPluginName = "ResidualPrune";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "flashvlm";

class ResidualPrunePlugin : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime
{
public:
    ResidualPrunePlugin(int32_t kDiv, int32_t step);
    ResidualPrunePlugin(ResidualPrunePlugin const&) = default;
    ~ResidualPrunePlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    int32_t kDiv() const noexcept
    {
        return mKDiv;
    }
    int32_t step() const noexcept
    {
        return mStep;
    }

private:
    void refreshFields() noexcept;

    int32_t mKDiv;
    int32_t mStep;
    int32_t mBatch{0};
    int32_t mTokens{0};
    int32_t mResidual{0};
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class ResidualPruneCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    ResidualPruneCreator();
    ~ResidualPruneCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace flashvlm
