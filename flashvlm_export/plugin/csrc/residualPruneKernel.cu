/*
 * ResidualPrune CUDA kernel: every round of ALGORITHM.md step 11 for one image per block.
 *
 * The round body is flashvlm::pruneImage in residualPruneCore.h, the same source the CPU twin
 * (residualPruneCpu.cpp) runs with SerialPolicy. Here BlockPolicy spreads it over a 1024-thread
 * block; all lists live in shared memory, the Gram stays in global memory / L2:
 *  1. the B tokens are flagged in a byte map;
 *  2. one warp per A token scans its Gram row with coalesced loads and keeps the max over B
 *     (lanes strided over the row, combined by the warp shuffle in reduceLanes);
 *  3. each A token's rank in the stable descending order is counted (exact, no sort);
 *  4. kept A tokens go to next[rank - r], then B follows in order; the lists swap.
 * An image whose residual list holds an id outside [0, N) gets kRejectedToken (-1) in every kept slot.
 *
 * residualPruneRangeKernel (the ResidualPruneRange plugin) runs pruneImageRange the same way: one block
 * per image, each image with its own budget, list length, K_div and round count.
 */
#include "residualPruneCore.h"
#include "residualPruneKernel.h"

namespace flashvlm
{
namespace
{

constexpr int32_t kThreads = 1024;
constexpr int32_t kWarp = 32;

//! pruneImage's loops over the threads of one block; a warp per A row for the max over B.
struct BlockPolicy
{
    __device__ int32_t first() const
    {
        return static_cast<int32_t>(threadIdx.x);
    }
    __device__ int32_t stride() const
    {
        return static_cast<int32_t>(blockDim.x);
    }
    __device__ int32_t rowFirst() const
    {
        return static_cast<int32_t>(threadIdx.x) / kWarp;
    }
    __device__ int32_t rowStride() const
    {
        return static_cast<int32_t>(blockDim.x) / kWarp;
    }
    __device__ int32_t laneFirst() const
    {
        return static_cast<int32_t>(threadIdx.x) % kWarp;
    }
    __device__ int32_t laneStride() const
    {
        return kWarp;
    }
    __device__ bool rowLeader() const
    {
        return threadIdx.x % kWarp == 0;
    }
    __device__ void sync() const
    {
        __syncthreads();
    }
    //! The hook: butterfly over the warp, so every lane ends with the row's max (or none).
    __device__ void reduceLanes(float& best, bool& any) const
    {
        for (int32_t offset = kWarp / 2; offset > 0; offset /= 2)
        {
            float const other = __shfl_xor_sync(0xffffffffu, best, offset);
            bool const otherAny = __shfl_xor_sync(0xffffffffu, any, offset);
            best = (otherAny && (!any || other > best)) ? other : best;
            any = any || otherAny;
        }
    }
    __device__ float loadGram(float const* p) const
    {
        return __ldg(p);
    }
};

__global__ void __launch_bounds__(kThreads) residualPruneKernel(float const* __restrict__ gram, int32_t nTokens,
    int32_t const* __restrict__ residual, int32_t residualSize, int32_t kDiv, int32_t step, int32_t* __restrict__ kept)
{
    extern __shared__ __align__(16) unsigned char shared[];
    int64_t const image = blockIdx.x;
    pruneImage(BlockPolicy{}, gram + image * nTokens * static_cast<int64_t>(nTokens), nTokens,
        residual + image * residualSize, residualSize, kDiv, step, carveScratch(shared, residualSize),
        kept + image * kDiv);
}

__global__ void __launch_bounds__(kThreads) residualPruneRangeKernel(float const* __restrict__ gram, int32_t nTokens,
    int32_t const* __restrict__ residual, int32_t width, int32_t const* __restrict__ budget, RangeFields fields,
    int32_t* __restrict__ kept)
{
    extern __shared__ __align__(16) unsigned char shared[];
    int64_t const image = blockIdx.x;
    pruneImageRange(BlockPolicy{}, gram + image * nTokens * static_cast<int64_t>(nTokens), nTokens,
        residual + image * width, width, budget[image], fields, shared, kept + image * fields.kDivMax);
}

//! Opts a kernel into more than 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
cudaError_t allowSharedBytes(Kernel kernel, size_t bytes)
{
    if (bytes <= 48 * 1024)
    {
        return cudaSuccess;
    }
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

} // namespace

cudaError_t launchResidualPruneRange(float const* gram, int32_t batch, int32_t nTokens, int32_t const* residual,
    int32_t width, int32_t const* budget, RangeFields const& fields, int32_t* kept, cudaStream_t stream)
{
    if (!validRangeArguments(batch, nTokens, width, fields))
    {
        return cudaErrorInvalidValue;
    }
    auto const bytes = static_cast<size_t>(rangeSharedBytes(width, nTokens));
    cudaError_t const status = allowSharedBytes(residualPruneRangeKernel, bytes);
    if (status != cudaSuccess)
    {
        return status;
    }
    residualPruneRangeKernel<<<batch, kThreads, bytes, stream>>>(gram, nTokens, residual, width, budget, fields, kept);
    return cudaGetLastError();
}

cudaError_t launchResidualPrune(float const* gram, int32_t batch, int32_t nTokens, int32_t const* residual,
    int32_t residualSize, int32_t kDiv, int32_t step, int32_t* kept, cudaStream_t stream)
{
    if (!validArguments(batch, nTokens, residualSize, kDiv, step))
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
