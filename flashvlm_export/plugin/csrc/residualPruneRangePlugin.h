/*
 * flashvlm::ResidualPruneRange, version 1: the ResidualPrune plugin for a selector that takes its
 * budget per image (issue 23). Same rounds, same kernel body (pruneImageRange runs pruneImage); each
 * image stops at its own round count.
 *
 * Inputs:  0 gram      (B, N, N)  float32  Gram matrix of the l2-normalised vision features
 *          1 residual  (B, W)     int32    each image's R0 = order[K_imp:] in order, then -1 up to W
 *          2 budget    (B)        int32    each image's K, in [k_min, k_max]
 * Output:  0 kept      (B, k_div_max) int32  each image's K_div kept residual tokens in step-11 order, then -1
 * Fields:  k_min, k_max (the budget range, k_max < N), k_div_max (the output width: the range's largest
 *          K_div), step (s before any cap), max_rounds (the cap; 0: none); all int32.
 *
 * Each image reads its schedule from its own list and budget: |R0| = where its -1 padding starts,
 * K_imp = N - |R0|, K_div = K - K_imp, step raised by max_rounds to ceil((|R0| - K_div) / max_rounds)
 * (selector/schedule.py's rule, in integers). The important ratio is not a field: the partition that
 * wrote the list applied it, and K_imp is read back from the list.
 *
 * Error channel (as version 1 of ResidualPrune): an image whose list is malformed (an id outside [0, N),
 * an id after the padding) or whose budget is outside [k_min, k_max] or cannot be pruned from its list
 * (K_div < 1, K_div > |R0|, K_div > k_div_max) comes back with -1 in all k_div_max slots; other images
 * are unaffected.
 */
#pragma once

#include "NvInferRuntime.h"
#include "residualPruneCore.h"

#include <cstdint>
#include <vector>

namespace flashvlm
{

constexpr char const* kRangePluginName = "ResidualPruneRange";
constexpr char const* kRangePluginVersion = "1";

class ResidualPruneRangePlugin : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit ResidualPruneRangePlugin(RangeFields const& fields);
    ResidualPruneRangePlugin(ResidualPruneRangePlugin const&) = default;
    ~ResidualPruneRangePlugin() override = default;

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

    RangeFields const& fields() const noexcept
    {
        return mFields;
    }

private:
    void refreshFields() noexcept;

    RangeFields mFields;
    int32_t mBatch{0};
    int32_t mTokens{0};
    int32_t mWidth{0};
    std::vector<nvinfer1::PluginField> mPluginFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class ResidualPruneRangeCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    ResidualPruneRangeCreator();
    ~ResidualPruneRangeCreator() override = default;

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
