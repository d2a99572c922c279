#pragma once

#include "residualPruneCore.h"

#include <cstdint>
#include <cuda_runtime_api.h>

namespace flashvlm
{

//! All pruning rounds of every image in one launch: grid = batch, one block per image.
//! gram (batch, n, n) float32, residual (batch, r0) int32 -> kept (batch, kDiv) int32, device pointers.
//! Arguments outside validArguments give cudaErrorInvalidValue before any launch. An image whose
//! residual list holds an id outside [0, n) gets kRejectedToken (-1) in all of its kDiv slots.
cudaError_t launchResidualPrune(float const* gram, int32_t batch, int32_t nTokens, int32_t const* residual,
    int32_t residualSize, int32_t kDiv, int32_t step, int32_t* kept, cudaStream_t stream);

//! The range plugin's launch: grid = batch, one block per image, each with its own budget.
//! gram (batch, n, n) float32, residual (batch, width) int32 padded with -1, budget (batch) int32 -> kept
//! (batch, fields.kDivMax) int32, device pointers. Arguments outside validRangeArguments give
//! cudaErrorInvalidValue before any launch. A rejected image (see pruneImageRange) gets -1 in every slot.
cudaError_t launchResidualPruneRange(float const* gram, int32_t batch, int32_t nTokens, int32_t const* residual,
    int32_t width, int32_t const* budget, RangeFields const& fields, int32_t* kept, cudaStream_t stream);

} // namespace flashvlm
