/*
 * ResidualPrune CUDA kernel: every round of ALGORITHM.md step 11 for one image per block.
 *
 * Per round (all in shared memory but the Gram, which stays in global memory / L2):
 *  1. flag the B tokens in a byte map;
 *  2. one warp per A token scans its Gram row with coalesced loads and keeps the max over B;
 *  3. each A token's rank in the stable descending order is counted (exact, no sort);
 *  4. kept A tokens go to next[rank - r], then B follows in order; the lists swap.
 */
#include "residualPruneCore.h"
#include "residualPruneKernel.h"

#include <cfloat>

namespace flashvlm
{
namespace
{

constexpr int32_t kThreads = 1024;
constexpr int32_t kWarp = 32;

__global__ void __launch_bounds__(kThreads) residualPruneKernel(float const* __restrict__ gram, int32_t nTokens,
    int32_t const* __restrict__ residual, int32_t residualSize, int32_t kDiv, int32_t step, int32_t* __restrict__ kept)
{
    extern __shared__ __align__(16) unsigned char shared[];
    int32_t* list = reinterpret_cast<int32_t*>(shared);
    int32_t* next = list + residualSize;
    float* m = reinterpret_cast<float*>(next + residualSize);
    unsigned char* isB = reinterpret_cast<unsigned char*>(m + (residualSize + 1) / 2);

    int64_t const image = blockIdx.x;
    float const* g = gram + image * nTokens * static_cast<int64_t>(nTokens);
    int32_t const warp = threadIdx.x / kWarp;
    int32_t const lane = threadIdx.x % kWarp;
    int32_t const nWarps = blockDim.x / kWarp;

    for (int32_t i = threadIdx.x; i < residualSize; i += blockDim.x)
    {
        list[i] = residual[image * residualSize + i];
    }
    __syncthreads();

    int32_t size = residualSize;
    for (int32_t r = roundRemoval(size, kDiv, step); r > 0; r = roundRemoval(size, kDiv, step))
    {
        int32_t const nA = (size + 1) / 2;
        int32_t const nB = size / 2;
        for (int32_t t = threadIdx.x; t < nTokens; t += blockDim.x)
        {
            isB[t] = 0;
        }
        __syncthreads();
        for (int32_t b = threadIdx.x; b < nB; b += blockDim.x)
        {
            isB[list[2 * b + 1]] = 1;
        }
        __syncthreads();

        // 2. m_a = max over B of G[a, b]: a warp per row, coalesced over the row
        for (int32_t a = warp; a < nA; a += nWarps)
        {
            float const* row = g + static_cast<int64_t>(list[2 * a]) * nTokens;
            float best = -FLT_MAX;
            bool any = false;
            for (int32_t j = lane; j < nTokens; j += kWarp)
            {
                if (isB[j])
                {
                    float const value = __ldg(row + j);
                    best = (!any || value > best) ? value : best;
                    any = true;
                }
            }
            for (int32_t offset = kWarp / 2; offset > 0; offset /= 2)
            {
                float const other = __shfl_xor_sync(0xffffffffu, best, offset);
                bool const otherAny = __shfl_xor_sync(0xffffffffu, any, offset);
                best = (otherAny && (!any || other > best)) ? other : best;
                any = any || otherAny;
            }
            if (lane == 0)
            {
                m[a] = best;
            }
        }
        __syncthreads();

        // 3-4. exact stable rank; the first r leave, the rest keep their order; B follows
        for (int32_t a = threadIdx.x; a < nA; a += blockDim.x)
        {
            float const ma = m[a];
            int32_t rank = 0;
            for (int32_t k = 0; k < nA; ++k)
            {
                rank += orderedBefore(m[k], k, ma, a) ? 1 : 0;
            }
            if (rank >= r)
            {
                next[rank - r] = list[2 * a];
            }
        }
        for (int32_t b = threadIdx.x; b < nB; b += blockDim.x)
        {
            next[nA - r + b] = list[2 * b + 1];
        }
        __syncthreads();
        int32_t* swap = list;
        list = next;
        next = swap;
        size -= r;
    }

    for (int32_t i = threadIdx.x; i < kDiv; i += blockDim.x)
    {
        kept[image * kDiv + i] = list[i];
    }
}

} // namespace

cudaError_t launchResidualPrune(float const* gram, int32_t batch, int32_t nTokens, int32_t const* residual,
    int32_t residualSize, int32_t kDiv, int32_t step, int32_t* kept, cudaStream_t stream)
{
    if (batch < 1 || kDiv < 1 || kDiv > residualSize || residualSize > kMaxResidual || residualSize > nTokens || step < 1)
    {
        return cudaErrorInvalidValue;
    }
    auto const bytes = static_cast<size_t>(sharedBytes(residualSize, nTokens));
    if (bytes > 48 * 1024)
    {
        cudaError_t const status
            = cudaFuncSetAttribute(residualPruneKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
        if (status != cudaSuccess)
        {
            return status;
        }
    }
    residualPruneKernel<<<batch, kThreads, bytes, stream>>>(gram, nTokens, residual, residualSize, kDiv, step, kept);
    return cudaGetLastError();
}

} // namespace flashvlm
