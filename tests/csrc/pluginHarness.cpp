/*
 * flashvlm_plugin_harness: exercise libflashvlm_plugins.so the way TensorRT does, without TensorRT.
 *
 *   flashvlm_plugin_harness LIB GRAM.f32 RESIDUAL.i32 BATCH N R0 K_DIV STEP OUT.i32 [ITERS]
 *   flashvlm_plugin_harness LIB        (steps 1-3 only: no GPU needed)
 *   flashvlm_plugin_harness --load-order ORDER LIB REGISTER_LIB   (no GPU needed)
 *
 * 1. dlopen LIB and find ResidualPrune through getCreators (and, lifecycle only, ResidualPruneRange too);
 * 2. create the plugin from a PluginFieldCollection {k_div, step};
 * 3. serialise it (getFieldsToSerialize) and re-create it from those fields (runtime phase);
 * 4. onShapeChange + enqueue on real CUDA buffers; write the kept indices to OUT;
 * 5. with ITERS > 0, time enqueue with CUDA events and print median / p10 / p90 microseconds.
 * Prints one JSON line. Used by scripts/plugin_harness.py, which checks parity with the reference.
 *
 * --load-order reaches the creator through a plugin registry instead, the way each tool loads:
 *   loadlibrary               libnvinfer, then IPluginRegistry::loadLibrary(LIB)  (Python, --dynamicPlugins)
 *   register-first            dlopen(REGISTER_LIB) before libnvinfer              (polygraphy --plugins)
 *   nvinfer-then-register     libnvinfer, then dlopen(REGISTER_LIB)               (trtexec --staticPlugins)
 *   loadlibrary-then-register loadLibrary(LIB), then dlopen(REGISTER_LIB)
 *   register-then-loadlibrary dlopen(REGISTER_LIB), then loadLibrary(LIB)
 *   plain-dlopen              libnvinfer, then dlopen(LIB): must register nothing
 * libnvinfer is opened by its soname libnvinfer.so.<NV_TENSORRT_MAJOR>; CI puts a stand-in there
 * (testNvinferStandIn.cpp, which counts registrations); on a TensorRT machine it is the real one
 * and the counts print as -1. The creator found in the registry then runs steps 2-3.
 */
#include "NvInferRuntime.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <fstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int fail(std::string const& what)
{
    std::fprintf(stderr, "harness: %s\n", what.c_str());
    return 1;
}

#define CHECK_CUDA(call)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const status_ = (call);                                                                            \
        if (status_ != cudaSuccess)                                                                                    \
            return fail(std::string(#call) + ": " + cudaGetErrorString(status_));                                      \
    } while (0)

template <typename T>
bool readFile(char const* path, std::vector<T>& data)
{
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(T)));
    return static_cast<size_t>(in.gcount()) == data.size() * sizeof(T);
}

PluginTensorDesc describe(DataType type, std::vector<int64_t> const& shape)
{
    PluginTensorDesc desc{};
    desc.type = type;
    desc.format = TensorFormat::kLINEAR;
    desc.scale = 1.0F;
    desc.dims.nbDims = static_cast<int32_t>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i)
    {
        desc.dims.d[i] = shape[i];
    }
    return desc;
}

//! Steps 2-3 on a creator: create from fields, serialise, re-create (runtime), clone. Null on failure.
IPluginV3* lifecycle(IPluginCreatorV3One* creator, int32_t& kDiv, int32_t& step, IPluginV3*& built, int32_t& nbFields,
    std::string& error)
{
    std::vector<PluginField> fields{
        PluginField("k_div", &kDiv, PluginFieldType::kINT32, 1), PluginField("step", &step, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    built = creator->createPlugin("residual_prune", &fc, TensorRTPhase::kBUILD);
    if (built == nullptr)
    {
        error = "createPlugin (build phase) returned null";
        return nullptr;
    }
    auto* buildRuntime = static_cast<IPluginV3OneRuntime*>(built->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* serialised = buildRuntime->getFieldsToSerialize();
    IPluginV3* plugin = creator->createPlugin("residual_prune", serialised, TensorRTPhase::kRUNTIME);
    if (plugin == nullptr)
    {
        error = "createPlugin from the serialised fields returned null";
        return nullptr;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    if (std::strcmp(core->getPluginName(), "ResidualPrune") != 0)
    {
        error = "re-created plugin has the wrong name";
        return nullptr;
    }
    PluginFieldCollection const* again = runtime->getFieldsToSerialize();
    nbFields = again->nbFields;
    for (int32_t i = 0; i < again->nbFields; ++i)
    {
        int32_t const value = *static_cast<int32_t const*>(again->fields[i].data);
        int32_t const expected = std::strcmp(again->fields[i].name, "k_div") == 0 ? kDiv : step;
        if (value != expected)
        {
            error = std::string("field ") + again->fields[i].name + " did not survive serialisation";
            return nullptr;
        }
    }
    IPluginV3* copy = plugin->clone();
    auto* copyRuntime = static_cast<IPluginV3OneRuntime*>(copy->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    bool const cloned = *static_cast<int32_t const*>(copyRuntime->getFieldsToSerialize()->fields[0].data) == kDiv;
    delete copy;
    if (!cloned)
    {
        error = "clone lost k_div";
        return nullptr;
    }
    return plugin;
}

//! The flashvlm::<name> v1 creator among `creators` (ResidualPrune unless named), or null.
IPluginCreatorV3One* findCreator(
    IPluginCreatorInterface* const* creators, int32_t nbCreators, char const* name = "ResidualPrune")
{
    for (int32_t i = 0; i < nbCreators; ++i)
    {
        if (creators[i] != nullptr && std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0)
        {
            auto* candidate = static_cast<IPluginCreatorV3One*>(creators[i]);
            if (std::strcmp(candidate->getPluginName(), name) == 0
                && std::strcmp(candidate->getPluginNamespace(), "flashvlm") == 0
                && std::strcmp(candidate->getPluginVersion(), "1") == 0)
            {
                return candidate;
            }
        }
    }
    return nullptr;
}

/*
 * ResidualPruneRange's field round trip: create from {k_min, k_max, k_div_max, step, max_rounds}, serialise,
 * re-create (runtime), clone; each copy must hand back every field unchanged. Returns the field count, or -1.
 */
int32_t rangeLifecycle(IPluginCreatorV3One* creator, std::string& error)
{
    char const* names[] = {"k_min", "k_max", "k_div_max", "step", "max_rounds"};
    int32_t values[] = {16, 256, 128, 8, 40};
    std::vector<PluginField> fields;
    for (int32_t i = 0; i < 5; ++i)
    {
        fields.emplace_back(names[i], &values[i], PluginFieldType::kINT32, 1);
    }
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* built = creator->createPlugin("residual_prune_range", &fc, TensorRTPhase::kBUILD);
    if (built == nullptr)
    {
        error = "range createPlugin (build phase) returned null";
        return -1;
    }
    auto fieldsOf = [](IPluginV3* plugin) {
        return static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
            ->getFieldsToSerialize();
    };
    IPluginV3* plugin = creator->createPlugin("residual_prune_range", fieldsOf(built), TensorRTPhase::kRUNTIME);
    IPluginV3* copy = plugin != nullptr ? plugin->clone() : nullptr;
    int32_t count = -1;
    if (copy == nullptr)
    {
        error = "range plugin could not be re-created from its fields or cloned";
    }
    else
    {
        PluginFieldCollection const* again = fieldsOf(copy);
        count = again->nbFields;
        for (int32_t i = 0; i < again->nbFields && count >= 0; ++i)
        {
            for (int32_t j = 0; j < 5; ++j)
            {
                if (std::strcmp(again->fields[i].name, names[j]) == 0
                    && *static_cast<int32_t const*>(again->fields[i].data) != values[j])
                {
                    error = std::string("range field ") + names[j] + " did not survive serialisation and clone";
                    count = -1;
                }
            }
        }
    }
    // a refused field set: k_min above k_max must give no plugin
    values[0] = 300;
    IPluginV3* refused = creator->createPlugin("residual_prune_range", &fc, TensorRTPhase::kBUILD);
    if (refused != nullptr)
    {
        error = "range createPlugin accepted k_min > k_max";
        count = -1;
    }
    delete refused;
    delete copy;
    delete plugin;
    delete built;
    return count;
}

int loadOrder(std::string const& order, char const* library, char const* registerLibrary)
{
    std::string const soname = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
    void* nvinfer = nullptr;
    IPluginRegistry* registry = nullptr;
    auto openNvinfer = [&]() -> bool {
        nvinfer = dlopen(soname.c_str(), RTLD_LAZY);
        using GetRegistry = IPluginRegistry* (*) ();
        auto get = nvinfer != nullptr ? reinterpret_cast<GetRegistry>(dlsym(nvinfer, "getPluginRegistry")) : nullptr;
        registry = get != nullptr ? get() : nullptr;
        return registry != nullptr;
    };
    char const* loadLibraryResult = "-";
    auto loadLibrary = [&]() { loadLibraryResult = registry->loadLibrary(library) != nullptr ? "ok" : "null"; };
    int32_t registerStatus = -100;  // not loaded
    auto openRegister = [&]() -> bool {
        void* handle = dlopen(registerLibrary, RTLD_LAZY);
        using Status = int32_t (*)();
        auto status = handle != nullptr ? reinterpret_cast<Status>(dlsym(handle, "flashvlm_registration_status")) : nullptr;
        if (status == nullptr)
        {
            return false;
        }
        registerStatus = status();
        return true;
    };
    bool ok = true;
    if (order == "loadlibrary")
    {
        ok = openNvinfer();
        if (ok)
            loadLibrary();
    }
    else if (order == "register-first")
    {
        ok = openRegister() && openNvinfer();
    }
    else if (order == "nvinfer-then-register")
    {
        ok = openNvinfer() && openRegister();
    }
    else if (order == "loadlibrary-then-register")
    {
        ok = openNvinfer();
        if (ok)
        {
            loadLibrary();
            ok = openRegister();
        }
    }
    else if (order == "register-then-loadlibrary")
    {
        ok = openRegister() && openNvinfer();
        if (ok)
            loadLibrary();
    }
    else if (order == "plain-dlopen")
    {
        ok = openNvinfer() && dlopen(library, RTLD_LAZY) != nullptr;
    }
    else
    {
        return fail("unknown load order " + order);
    }
    if (!ok)
    {
        char const* why = dlerror();
        return fail("load order " + order + ": could not open " + soname + ", " + library + " or " + registerLibrary
            + (why != nullptr ? std::string(" (") + why + ")" : std::string()));
    }
    using Count = int32_t (*)();
    auto registered = reinterpret_cast<Count>(dlsym(nvinfer, "flashvlmStandInRegistered"));
    auto refused = reinterpret_cast<Count>(dlsym(nvinfer, "flashvlmStandInRefused"));
    IPluginCreatorInterface* found = registry->getCreator("ResidualPrune", "1", "flashvlm");
    IPluginCreatorV3One* creator = findCreator(&found, 1);
    std::string error = creator != nullptr ? "" : "no creator in the registry";
    int32_t kDiv = 64, step = 8, nbFields = 0;
    IPluginV3* built = nullptr;
    IPluginV3* plugin = creator != nullptr ? lifecycle(creator, kDiv, step, built, nbFields, error) : nullptr;
    std::printf("{\"order\": \"%s\", \"load_library\": \"%s\", \"register_status\": %d, \"registered\": %d, "
                "\"refused\": %d, \"creator_found\": %s, \"lifecycle\": \"%s\"}\n",
        order.c_str(), loadLibraryResult, registerStatus, registered != nullptr ? registered() : -1,
        refused != nullptr ? refused() : -1, creator != nullptr ? "true" : "false",
        plugin != nullptr ? "ok" : error.c_str());
    delete plugin;
    delete built;
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 5 && std::strcmp(argv[1], "--load-order") == 0)
    {
        return loadOrder(argv[2], argv[3], argv[4]);
    }
    bool const lifecycleOnly = argc == 2;
    if (argc < 10 && !lifecycleOnly)
    {
        return fail("usage: flashvlm_plugin_harness LIB [GRAM.f32 RESIDUAL.i32 BATCH N R0 K_DIV STEP OUT.i32 [ITERS]]");
    }
    int32_t const batch = lifecycleOnly ? 1 : std::atoi(argv[4]);
    int32_t const n = lifecycleOnly ? 576 : std::atoi(argv[5]);
    int32_t const r0 = lifecycleOnly ? 512 : std::atoi(argv[6]);
    int32_t kDiv = lifecycleOnly ? 64 : std::atoi(argv[7]);
    int32_t step = lifecycleOnly ? 8 : std::atoi(argv[8]);
    int32_t const iters = argc > 10 ? std::atoi(argv[10]) : 0;

    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        return fail(std::string("dlopen: ") + dlerror());
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    if (getCreators == nullptr)
    {
        return fail("the library does not export getCreators");
    }
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    IPluginCreatorV3One* creator = findCreator(creators, nbCreators);
    if (creator == nullptr)
    {
        return fail("getCreators returned no flashvlm::ResidualPrune version 1 creator");
    }
    IPluginV3* built = nullptr;
    int32_t nbFields = 0;
    std::string error;
    IPluginV3* plugin = lifecycle(creator, kDiv, step, built, nbFields, error);
    if (plugin == nullptr)
    {
        return fail(error);
    }
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    if (lifecycleOnly)
    {
        IPluginCreatorV3One* rangeCreator = findCreator(creators, nbCreators, "ResidualPruneRange");
        int32_t const rangeFields = rangeCreator != nullptr ? rangeLifecycle(rangeCreator, error) : -1;
        if (rangeFields < 0)
        {
            return fail(rangeCreator != nullptr ? error : "getCreators returned no flashvlm::ResidualPruneRange creator");
        }
        std::printf("{\"ok\": true, \"lifecycle\": \"getCreators, createPlugin, serialise, re-create, clone\", "
                    "\"fields\": %d, \"range_fields\": %d}\n",
            nbFields, rangeFields);
        delete plugin;
        delete built;
        return 0;
    }

    std::vector<float> gram(static_cast<size_t>(batch) * n * n);
    std::vector<int32_t> residual(static_cast<size_t>(batch) * r0);
    std::vector<int32_t> kept(static_cast<size_t>(batch) * kDiv, -1);
    if (!readFile(argv[2], gram) || !readFile(argv[3], residual))
    {
        return fail("could not read the gram / residual files (sizes must match BATCH, N, R0)");
    }
    float* dGram = nullptr;
    int32_t* dResidual = nullptr;
    int32_t* dKept = nullptr;
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dGram), gram.size() * sizeof(float)));
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dResidual), residual.size() * sizeof(int32_t)));
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dKept), kept.size() * sizeof(int32_t)));
    CHECK_CUDA(cudaMemcpy(dGram, gram.data(), gram.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dResidual, residual.data(), residual.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    cudaStream_t stream;
    CHECK_CUDA(cudaStreamCreate(&stream));

    PluginTensorDesc in[2] = {describe(DataType::kFLOAT, {batch, n, n}), describe(DataType::kINT32, {batch, r0})};
    PluginTensorDesc out[1] = {describe(DataType::kINT32, {batch, kDiv})};
    if (runtime->onShapeChange(in, 2, out, 1) != 0)
    {
        return fail("onShapeChange rejected the shapes");
    }
    void const* inputs[2] = {dGram, dResidual};
    void* outputs[1] = {dKept};
    if (runtime->enqueue(in, out, inputs, outputs, nullptr, stream) != 0)
    {
        return fail("enqueue failed");
    }
    CHECK_CUDA(cudaStreamSynchronize(stream));
    CHECK_CUDA(cudaMemcpy(kept.data(), dKept, kept.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
    std::ofstream(argv[9], std::ios::binary)
        .write(reinterpret_cast<char const*>(kept.data()), static_cast<std::streamsize>(kept.size() * sizeof(int32_t)));

    std::vector<float> micros;
    if (iters > 0)
    {
        cudaEvent_t start, stop;
        CHECK_CUDA(cudaEventCreate(&start));
        CHECK_CUDA(cudaEventCreate(&stop));
        for (int32_t i = 0; i < 10; ++i)
        {
            runtime->enqueue(in, out, inputs, outputs, nullptr, stream);
        }
        for (int32_t i = 0; i < iters; ++i)
        {
            CHECK_CUDA(cudaEventRecord(start, stream));
            runtime->enqueue(in, out, inputs, outputs, nullptr, stream);
            CHECK_CUDA(cudaEventRecord(stop, stream));
            CHECK_CUDA(cudaEventSynchronize(stop));
            float ms = 0.0F;
            CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
            micros.push_back(ms * 1000.0F);
        }
        std::sort(micros.begin(), micros.end());
    }
    auto at = [&](double q) { return micros.empty() ? 0.0 : micros[static_cast<size_t>(q * (micros.size() - 1))]; };
    cudaDeviceProp props{};
    int device = 0;
    cudaGetDevice(&device);
    cudaGetDeviceProperties(&props, device);
    std::printf("{\"ok\": true, \"gpu\": \"%s\", \"cc\": \"%d.%d\", \"batch\": %d, \"n\": %d, \"r0\": %d, \"k_div\": %d, "
                "\"step\": %d, \"iters\": %d, \"median_us\": %.2f, \"p10_us\": %.2f, \"p90_us\": %.2f}\n",
        props.name, props.major, props.minor, batch, n, r0, kDiv, step, iters, at(0.5), at(0.1), at(0.9));
    delete plugin;
    delete built;
    cudaFree(dGram);
    cudaFree(dResidual);
    cudaFree(dKept);
    return 0;
}
