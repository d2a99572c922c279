/*
 * TEST STUB, for machines without nvcc: stands in for residualPruneKernel.cu so that
 * libflashvlm_plugins.so still links and its loading logic (getCreators, registration, the plugin
 * lifecycle) can be tested. Every launch fails with cudaErrorNotSupported. Never shipped: CMake and
 * build-plugin always compile the real kernel.
 */
#include "residualPruneKernel.h"

namespace flashvlm
{

cudaError_t launchResidualPrune(float const*, int32_t, int32_t, int32_t const*, int32_t, int32_t, int32_t, int32_t*,
    cudaStream_t)
{
    return cudaErrorNotSupported;
}

cudaError_t launchResidualPruneRange(
    float const*, int32_t, int32_t, int32_t const*, int32_t, int32_t const*, RangeFields const&, int32_t*, cudaStream_t)
{
    return cudaErrorNotSupported;
}

} // namespace flashvlm
