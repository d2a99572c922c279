/*
 * CPU twin of the ResidualPrune kernel: the same rounds, the same rank rule, serially.
 * Built as a small shared library for the tests (ctypes) and for the ONNX Runtime custom op.
 */
#include "residualPruneCore.h"

#include <cstdint>
#include <vector>

namespace flashvlm
{

//! One image. `out` receives the kDiv kept residual tokens in list order. Returns 0 on success.
int32_t residualPruneImage(float const* gram, int32_t nTokens, int32_t const* residual, int32_t residualSize,
    int32_t kDiv, int32_t step, int32_t* out)
{
    if (kDiv < 1 || kDiv > residualSize || step < 1)
    {
        return 1;
    }
    std::vector<int32_t> list(residual, residual + residualSize);
    std::vector<int32_t> next(residualSize);
    std::vector<float> m((residualSize + 1) / 2);
    for (int32_t i = 0; i < residualSize; ++i)
    {
        if (list[i] < 0 || list[i] >= nTokens)
        {
            return 2;
        }
    }
    int32_t size = residualSize;
    for (int32_t r = roundRemoval(size, kDiv, step); r > 0; r = roundRemoval(size, kDiv, step))
    {
        int32_t const nA = (size + 1) / 2;
        int32_t const nB = size / 2;
        for (int32_t a = 0; a < nA; ++a)
        {
            float const* row = gram + static_cast<int64_t>(list[2 * a]) * nTokens;
            float best = row[list[1]];
            for (int32_t b = 1; b < nB; ++b)
            {
                float const value = row[list[2 * b + 1]];
                best = value > best ? value : best;
            }
            m[a] = best;
        }
        for (int32_t a = 0; a < nA; ++a)
        {
            int32_t rank = 0;
            for (int32_t k = 0; k < nA; ++k)
            {
                rank += orderedBefore(m[k], k, m[a], a) ? 1 : 0;
            }
            if (rank >= r)
            {
                next[rank - r] = list[2 * a];
            }
        }
        for (int32_t b = 0; b < nB; ++b)
        {
            next[nA - r + b] = list[2 * b + 1];
        }
        list.swap(next);
        size -= r;
    }
    for (int32_t i = 0; i < kDiv; ++i)
    {
        out[i] = list[i];
    }
    return 0;
}

} // namespace flashvlm

extern "C"
{

//! Batched entry: gram (batch, n, n) float32, residual (batch, r0) int32 -> out (batch, kDiv) int32.
int32_t flashvlm_residual_prune_cpu(float const* gram, int32_t batch, int32_t nTokens, int32_t const* residual,
    int32_t residualSize, int32_t kDiv, int32_t step, int32_t* out)
{
    for (int32_t b = 0; b < batch; ++b)
    {
        int32_t const status = flashvlm::residualPruneImage(gram + static_cast<int64_t>(b) * nTokens * nTokens,
            nTokens, residual + static_cast<int64_t>(b) * residualSize, residualSize, kDiv, step, out + b * kDiv);
        if (status != 0)
        {
            return status;
        }
    }
    return 0;
}

//! Rounds for (|R0|, kDiv, step), so tests can check the C++ schedule against Python's.
int32_t flashvlm_count_rounds(int32_t residualSize, int32_t kDiv, int32_t step)
{
    return flashvlm::countRounds(residualSize, kDiv, step);
}
}
