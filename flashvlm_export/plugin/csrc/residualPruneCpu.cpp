/*
 * CPU twin of the ResidualPrune kernel: flashvlm::pruneImage from residualPruneCore.h, the very
 * round body the kernel compiles, run with SerialPolicy (one thread, loops in index order).
 * Built as a small shared library for the tests (ctypes, flashvlm_export/plugin/cpu.py). It serves both
 * plugins: ResidualPrune (one budget) and ResidualPruneRange (a budget per image, pruneImageRange).
 */
#include "residualPruneCore.h"

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C"
{

//! Batched entry: gram (batch, n, n) float32, residual (batch, r0) int32 -> out (batch, kDiv) int32.
//! Returns kStatusOk; kStatusBadArguments (nothing written); or kStatusTokenOutOfRange when any
//! image's residual list holds an id outside [0, n): that image's row is all kRejectedToken, the
//! other images are pruned as usual (as the kernel does, one block per image).
int32_t flashvlm_residual_prune_cpu(float const* gram, int32_t batch, int32_t nTokens, int32_t const* residual,
    int32_t residualSize, int32_t kDiv, int32_t step, int32_t* out)
{
    if (!flashvlm::validArguments(batch, nTokens, residualSize, kDiv, step))
    {
        return flashvlm::kStatusBadArguments;
    }
    std::vector<unsigned char> scratch(static_cast<size_t>(flashvlm::sharedBytes(residualSize, nTokens)));
    flashvlm::PruneScratch const s = flashvlm::carveScratch(scratch.data(), residualSize);
    int32_t status = flashvlm::kStatusOk;
    for (int32_t b = 0; b < batch; ++b)
    {
        int32_t const image = flashvlm::pruneImage(flashvlm::SerialPolicy{},
            gram + static_cast<int64_t>(b) * nTokens * nTokens, nTokens,
            residual + static_cast<int64_t>(b) * residualSize, residualSize, kDiv, step, s,
            out + static_cast<int64_t>(b) * kDiv);
        status = image != flashvlm::kStatusOk ? image : status;
    }
    return status;
}

//! The range plugin's batched entry: gram (batch, n, n) float32, residual (batch, width) int32 padded with -1,
//! budget (batch) int32 -> out (batch, kDivMax) int32, each row its own K_div ids then -1. Returns kStatusOk;
//! kStatusBadArguments (nothing written); else the last rejected image's status (kStatusTokenOutOfRange,
//! kStatusBudgetRejected): that image's row is all -1, the other images are pruned as usual.
int32_t flashvlm_residual_prune_range_cpu(float const* gram, int32_t batch, int32_t nTokens, int32_t const* residual,
    int32_t width, int32_t const* budget, int32_t kMin, int32_t kMax, int32_t kDivMax, int32_t step, int32_t maxRounds,
    int32_t* out)
{
    flashvlm::RangeFields const fields{kMin, kMax, kDivMax, step, maxRounds};
    if (!flashvlm::validRangeArguments(batch, nTokens, width, fields))
    {
        return flashvlm::kStatusBadArguments;
    }
    std::vector<unsigned char> scratch(static_cast<size_t>(flashvlm::rangeSharedBytes(width, nTokens)));
    int32_t status = flashvlm::kStatusOk;
    for (int32_t b = 0; b < batch; ++b)
    {
        int32_t const image = flashvlm::pruneImageRange(flashvlm::SerialPolicy{},
            gram + static_cast<int64_t>(b) * nTokens * nTokens, nTokens, residual + static_cast<int64_t>(b) * width,
            width, budget[b], fields, scratch.data(), out + static_cast<int64_t>(b) * kDivMax);
        status = image != flashvlm::kStatusOk ? image : status;
    }
    return status;
}

//! Rounds for (|R0|, kDiv, step), so tests can check the C++ schedule against Python's.
int32_t flashvlm_count_rounds(int32_t residualSize, int32_t kDiv, int32_t step)
{
    return flashvlm::countRounds(residualSize, kDiv, step);
}
}
