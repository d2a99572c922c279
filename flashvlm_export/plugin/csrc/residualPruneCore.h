/*
 * ResidualPrune: ONE source for a round of ALGORITHM.md step 11, compiled by the CUDA kernel and by
 * its CPU twin alike.
 *
 * Per image: a residual list R (token ids, partition order) and the Gram matrix G of the
 * l2-normalised features. Each round: r = min(step, |R| - kDiv, ceil(|R| / 2)); stop when r <= 0.
 * A = R[0::2], B = R[1::2]; m_a = max_b G[a, b]; A is ordered by m descending, ties to the lower
 * position in A; the first r leave; R = kept A (in that order) ++ B.
 *
 * The order is computed as a rank, rank_a = #{k : m_k > m_a or (m_k == m_a and k < a)}, which is
 * exact, needs no sort, and gives the same permutation as a stable descending sort.
 *
 * pruneImage<Policy> is the whole per-image body. The execution policy says only HOW its loops are
 * spread over threads; the arithmetic, the comparisons and the writes are the same text:
 *  - SerialPolicy (below): one thread, every loop runs from 0 with stride 1; the twin
 *    (residualPruneCpu.cpp) uses it;
 *  - BlockPolicy (residualPruneKernel.cu): thread-strided loops over a 1024-thread block,
 *    __syncthreads, a warp per A row with lanes strided over the row, and the warp shuffle that
 *    combines the lanes' maxima (the reduceLanes hook).
 *
 * pruneImageRange (below) is the body of ResidualPruneRange, the plugin that takes a budget per image:
 * it reads each image's schedule from its padded list and budget, then runs pruneImage.
 *
 * Token ids are checked once, when the residual list is loaded: an id outside [0, N) sets the
 * image's error flag; the image's kept row is then written as kRejectedToken (-1) in every slot and
 * no round runs, so no id is ever used to index G or the byte map. Ids that pass the check are
 * the only values the lists ever hold afterwards (rounds only permute and drop them).
 */
#pragma once

#include <cfloat>
#include <cstdint>

#if defined(__CUDACC__)
#define FLASHVLM_HD __host__ __device__
#else
#define FLASHVLM_HD
#endif

namespace flashvlm
{

//! Largest residual list the kernel takes (its lists live in shared memory); the twin applies it too.
constexpr int32_t kMaxResidual = 3840;

//! Written to every kept slot of an image whose residual list holds a token id outside [0, N).
constexpr int32_t kRejectedToken = -1;

//! Status codes of pruneImage and of the twin's C entry point.
constexpr int32_t kStatusOk = 0;
constexpr int32_t kStatusBadArguments = 1;
constexpr int32_t kStatusTokenOutOfRange = 2;
constexpr int32_t kStatusBudgetRejected = 3;  // range plugin: a budget outside its range or that its list cannot give

//! The range plugin's padding: residual lists are padded with it, and kept rows after their own K_div.
constexpr int32_t kPadToken = -1;

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

//! The shapes both the kernel's launcher and the twin accept.
FLASHVLM_HD inline bool validArguments(int32_t batch, int32_t nTokens, int32_t residualSize, int32_t kDiv, int32_t step)
{
    return batch >= 1 && kDiv >= 1 && kDiv <= residualSize && residualSize <= nTokens && residualSize <= kMaxResidual
        && step >= 1;
}

//! Per-image scratch: the error flag, two lists of |R0| ids, ceil(|R0|/2) scores, an N-byte B map.
struct PruneScratch
{
    int32_t* flag;
    int32_t* list;
    int32_t* next;
    float* m;
    unsigned char* isB;
};

//! Bytes of scratch for (|R0|, N), laid out as carveScratch does (the kernel's dynamic shared memory).
FLASHVLM_HD inline int64_t sharedBytes(int32_t residualSize, int32_t nTokens)
{
    int64_t const flag = static_cast<int64_t>(sizeof(int32_t));
    int64_t const lists = 2 * static_cast<int64_t>(residualSize) * sizeof(int32_t);
    int64_t const scores = ((residualSize + 1) / 2) * static_cast<int64_t>(sizeof(float));
    int64_t const flags = ((nTokens + 3) / 4) * 4;
    return flag + lists + scores + flags;
}

//! Points the scratch fields into one buffer of sharedBytes(residualSize, nTokens) bytes (4-aligned).
FLASHVLM_HD inline PruneScratch carveScratch(unsigned char* base, int32_t residualSize)
{
    PruneScratch s;
    s.flag = reinterpret_cast<int32_t*>(base);
    s.list = s.flag + 1;
    s.next = s.list + residualSize;
    s.m = reinterpret_cast<float*>(s.next + residualSize);
    s.isB = reinterpret_cast<unsigned char*>(s.m + (residualSize + 1) / 2);
    return s;
}

//! One thread does everything, in index order: the CPU twin's policy.
struct SerialPolicy
{
    // block-wide loops: for (i = first(); i < n; i += stride())
    int32_t first() const
    {
        return 0;
    }
    int32_t stride() const
    {
        return 1;
    }
    // A rows (a warp each on the GPU) and the columns of a row (the lanes of that warp)
    int32_t rowFirst() const
    {
        return 0;
    }
    int32_t rowStride() const
    {
        return 1;
    }
    int32_t laneFirst() const
    {
        return 0;
    }
    int32_t laneStride() const
    {
        return 1;
    }
    bool rowLeader() const
    {
        return true;
    }
    void sync() const {}
    //! Combines the per-lane maxima of a row: one lane holds them all already.
    void reduceLanes(float&, bool&) const {}
    float loadGram(float const* p) const
    {
        return *p;
    }
};

/*
 * All rounds for one image. `gram` is this image's (N, N) matrix, `residual` its |R0| ids, `kept`
 * its kDiv output slots. The caller checked validArguments. Returns kStatusOk, or
 * kStatusTokenOutOfRange after writing kRejectedToken to every kept slot.
 */
template <typename Policy>
FLASHVLM_HD int32_t pruneImage(Policy const& p, float const* gram, int32_t nTokens, int32_t const* residual,
    int32_t residualSize, int32_t kDiv, int32_t step, PruneScratch s, int32_t* kept)
{
    // 0. load the residual list; any id outside [0, N) flags the image
    if (p.first() == 0)
    {
        *s.flag = 0;
    }
    p.sync();
    for (int32_t i = p.first(); i < residualSize; i += p.stride())
    {
        int32_t const id = residual[i];
        s.list[i] = id;
        if (id < 0 || id >= nTokens)
        {
            *s.flag = 1;  // every writer writes the same value
        }
    }
    p.sync();
    if (*s.flag != 0)  // the same value for every thread after the barrier: a uniform exit
    {
        for (int32_t i = p.first(); i < kDiv; i += p.stride())
        {
            kept[i] = kRejectedToken;
        }
        return kStatusTokenOutOfRange;
    }

    int32_t* list = s.list;
    int32_t* next = s.next;
    int32_t size = residualSize;
    for (int32_t r = roundRemoval(size, kDiv, step); r > 0; r = roundRemoval(size, kDiv, step))
    {
        int32_t const nA = (size + 1) / 2;
        int32_t const nB = size / 2;

        // 1. flag the B tokens in a byte map over the N columns
        for (int32_t t = p.first(); t < nTokens; t += p.stride())
        {
            s.isB[t] = 0;
        }
        p.sync();
        for (int32_t b = p.first(); b < nB; b += p.stride())
        {
            s.isB[list[2 * b + 1]] = 1;
        }
        p.sync();

        // 2. m_a = max over B of G[a, b]: a row per warp, its lanes strided over the row (coalesced)
        for (int32_t a = p.rowFirst(); a < nA; a += p.rowStride())
        {
            float const* row = gram + static_cast<int64_t>(list[2 * a]) * nTokens;
            float best = -FLT_MAX;
            bool any = false;
            for (int32_t j = p.laneFirst(); j < nTokens; j += p.laneStride())
            {
                if (s.isB[j])
                {
                    float const value = p.loadGram(row + j);
                    best = (!any || value > best) ? value : best;
                    any = true;
                }
            }
            p.reduceLanes(best, any);
            if (p.rowLeader())
            {
                s.m[a] = best;
            }
        }
        p.sync();

        // 3-4. exact stable rank; the first r leave, the rest keep their order; B follows in order
        for (int32_t a = p.first(); a < nA; a += p.stride())
        {
            float const ma = s.m[a];
            int32_t rank = 0;
            for (int32_t k = 0; k < nA; ++k)
            {
                rank += orderedBefore(s.m[k], k, ma, a) ? 1 : 0;
            }
            if (rank >= r)
            {
                next[rank - r] = list[2 * a];
            }
        }
        for (int32_t b = p.first(); b < nB; b += p.stride())
        {
            next[nA - r + b] = list[2 * b + 1];
        }
        p.sync();
        int32_t* const swap = list;
        list = next;
        next = swap;
        size -= r;
    }

    for (int32_t i = p.first(); i < kDiv; i += p.stride())
    {
        kept[i] = list[i];
    }
    return kStatusOk;
}

/*
 * The range plugin (ResidualPruneRange): one selector for every budget K in [kMin, kMax], a budget per
 * image. Its residual list comes padded: the partition step wrote R0 = order[K_imp:] (|R0| = N - K_imp
 * ids) and then kPadToken up to the common width. So each image reads its own schedule from its list
 * and its budget, in integers, as selector/schedule.py computes it:
 *   |R0| = the position of the first kPadToken (the width when there is none); K_imp = N - |R0|;
 *   K_div = K - K_imp; step = max(step, ceil((|R0| - K_div) / maxRounds)) when maxRounds > 0;
 * and then runs pruneImage, the very rounds of the fixed-budget plugin, so each image stops at its own
 * round count. The kept row is K_div ids, then kPadToken up to kDivMax.
 */

//! The range plugin's fields.
struct RangeFields
{
    int32_t kMin;      // smallest budget the selector takes
    int32_t kMax;      // largest budget (< N)
    int32_t kDivMax;   // kept-row width: the largest K_div of the range
    int32_t step;      // s, before any round cap
    int32_t maxRounds; // cap on the rounds (raises the step); 0: no cap
};

//! One image's K_div and effective step; ok is false when the budget or the list cannot be pruned.
struct ImageSchedule
{
    int32_t kDiv;
    int32_t step;
    bool ok;
};

FLASHVLM_HD inline ImageSchedule imageSchedule(int32_t budget, int32_t residualSize, int32_t nTokens, RangeFields const& f)
{
    ImageSchedule s{budget - (nTokens - residualSize), f.step, false};
    s.ok = budget >= f.kMin && budget <= f.kMax && residualSize <= nTokens && s.kDiv >= 1 && s.kDiv <= residualSize
        && s.kDiv <= f.kDivMax;
    if (s.ok && f.maxRounds > 0)
    {
        int32_t const raised = (residualSize - s.kDiv + f.maxRounds - 1) / f.maxRounds;
        s.step = raised > s.step ? raised : s.step;
    }
    return s;
}

//! The shapes and fields both the range kernel's launcher and its twin accept (width: the list's padded length).
FLASHVLM_HD inline bool validRangeArguments(int32_t batch, int32_t nTokens, int32_t width, RangeFields const& f)
{
    return batch >= 1 && width >= 1 && width <= nTokens && width <= kMaxResidual && f.kMin >= 2 && f.kMin <= f.kMax
        && f.kMax < nTokens && f.kDivMax >= 1 && f.kDivMax <= width && f.step >= 1 && f.maxRounds >= 0;
}

//! Scratch of the range body: its list length and error flag, then pruneImage's scratch for the full width.
FLASHVLM_HD inline int64_t rangeSharedBytes(int32_t width, int32_t nTokens)
{
    return 2 * static_cast<int64_t>(sizeof(int32_t)) + sharedBytes(width, nTokens);
}

/*
 * One image of the range plugin. `residual` is its row of `width` entries, `kept` its row of kDivMax
 * slots, `scratch` rangeSharedBytes(width, N) bytes (4-aligned). The caller checked validRangeArguments.
 * A well-formed row is ids in [0, N), then kPadToken to the end. Anything else (an id >= N, a negative
 * id other than kPadToken, an id after the padding) rejects the image: kStatusTokenOutOfRange. A budget
 * outside [kMin, kMax], or one whose K_div the list cannot give, rejects it too: kStatusBudgetRejected.
 * A rejected image gets kPadToken in all kDivMax slots and no round runs.
 */
template <typename Policy>
FLASHVLM_HD int32_t pruneImageRange(Policy const& p, float const* gram, int32_t nTokens, int32_t const* residual,
    int32_t width, int32_t budget, RangeFields const& f, unsigned char* scratch, int32_t* kept)
{
    int32_t* const length = reinterpret_cast<int32_t*>(scratch);
    int32_t* const error = length + 1;
    if (p.first() == 0)
    {
        *length = width;
        *error = 0;
    }
    p.sync();
    for (int32_t i = p.first(); i < width; i += p.stride())
    {
        int32_t const id = residual[i];
        bool const pad = id == kPadToken;
        bool const afterPad = i > 0 && residual[i - 1] == kPadToken;
        if ((id < 0 && !pad) || id >= nTokens || (!pad && afterPad))
        {
            *error = 1;  // every writer writes the same value
        }
        else if (pad && !afterPad)
        {
            *length = i;  // where the padding starts: one writer unless the row is flagged above anyway
        }
    }
    p.sync();
    int32_t const residualSize = *length;
    ImageSchedule const s = imageSchedule(budget, residualSize, nTokens, f);
    int32_t status = *error != 0 ? kStatusTokenOutOfRange : (s.ok ? kStatusOk : kStatusBudgetRejected);
    if (status != kStatusOk)  // the same for every thread: a uniform exit
    {
        for (int32_t i = p.first(); i < f.kDivMax; i += p.stride())
        {
            kept[i] = kPadToken;
        }
        return status;
    }
    status = pruneImage(
        p, gram, nTokens, residual, residualSize, s.kDiv, s.step, carveScratch(scratch + 2 * sizeof(int32_t), width), kept);
    for (int32_t i = s.kDiv + p.first(); i < f.kDivMax; i += p.stride())
    {
        kept[i] = kPadToken;
    }
    return status;
}

} // namespace flashvlm
