/*
 * ResidualPrune: the logic shared by the CUDA kernel and its CPU twin (ALGORITHM.md step 11).
 *
 * Per image: a residual list R (token ids, partition order) and the Gram matrix G of the
 * l2-normalised features. Each round: r = min(step, |R| - kDiv, ceil(|R| / 2)); stop when r <= 0.
 * A = R[0::2], B = R[1::2]; m_a = max_b G[a, b]; A is ordered by m descending, ties to the lower
 * position in A; the first r leave; R = kept A (in that order) ++ B.
 *
 * The order is computed as a rank, rank_a = #{k : m_k > m_a or (m_k == m_a and k < a)}, which is
 * exact, needs no sort, and gives the same permutation as a stable descending sort.
 */
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FLASHVLM_HD __host__ __device__
#else
#define FLASHVLM_HD
#endif

namespace flashvlm
{

//! Tokens removed by the round that starts with `size` residual tokens; <= 0 means stop.
FLASHVLM_HD inline int32_t roundRemoval(int32_t size, int32_t kDiv, int32_t step)
{
    int32_t r = step;
    r = (size - kDiv) < r ? (size - kDiv) : r;
    int32_t const half = (size + 1) / 2;
    return half < r ? half : r;
}

//! Number of rounds for (|R0|, kDiv, step): depends on nothing else, which makes the loop static.
FLASHVLM_HD inline int32_t countRounds(int32_t residualSize, int32_t kDiv, int32_t step)
{
    int32_t rounds = 0;
    for (int32_t size = residualSize, r = roundRemoval(size, kDiv, step); r > 0; r = roundRemoval(size, kDiv, step))
    {
        size -= r;
        ++rounds;
    }
    return rounds;
}

//! True when position k is ordered before position a in the stable descending sort of m.
FLASHVLM_HD inline bool orderedBefore(float mk, int32_t k, float ma, int32_t a)
{
    return mk > ma || (mk == ma && k < a);
}

//! Shared-memory bytes the kernel needs for a residual list of `residualSize` tokens and N tokens.
FLASHVLM_HD inline int64_t sharedBytes(int32_t residualSize, int32_t nTokens)
{
    int64_t const lists = 2 * static_cast<int64_t>(residualSize) * sizeof(int32_t);
    int64_t const scores = ((residualSize + 1) / 2) * static_cast<int64_t>(sizeof(float));
    int64_t const flags = ((nTokens + 3) / 4) * 4;
    return lists + scores + flags;
}

} // namespace flashvlm
