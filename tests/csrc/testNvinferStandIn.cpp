/*
 * TEST STAND-IN, not TensorRT: a libnvinfer.so.<major> that exports getPluginRegistry() and nothing
 * else, so CI can test how libflashvlm_plugins.so and libflashvlm_plugins_register.so reach a plugin
 * registry in every load order (tests/test_plugin.py, pluginHarness.cpp --load-order). Never built by
 * CMake, never shipped as a library.
 *
 * Its registry models only what NvInferRuntimeCommon.h documents:
 *  - registerCreator "returns false if a plugin creator with the same type is already registered";
 *  - loadLibrary "loads and registers a shared library of plugins" and "will fail and return nullptr
 *    if any of the plugins are already registered"; it finds them through the library's getCreators,
 *    the symbol NVIDIA's own plugin library exports for it (plugin/common/vfcCommon.cpp, release/10.3).
 * What it does NOT prove: how the real libnvinfer's registry behaves beyond that (namespaces, parent
 * registries, getPluginCreators for V2 creators, thread safety), nor that a real engine deserialises.
 */
#include "NvInferRuntime.h"

#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

#define FLASHVLM_EXPORT __attribute__((visibility("default")))

using namespace nvinfer1;

namespace
{

struct Entry
{
    IPluginCreatorInterface* creator;
    std::string name, version, ns;
};

class StandInRegistry : public IPluginRegistry
{
public:
    std::vector<Entry> entries;
    std::vector<IPluginCreatorInterface*> all;
    int32_t refused{0};

    static bool describe(IPluginCreatorInterface& creator, std::string& name, std::string& version)
    {
        if (std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
        {
            return false;
        }
        auto& v3 = static_cast<IPluginCreatorV3One&>(creator);
        name = v3.getPluginName();
        version = v3.getPluginVersion();
        return true;
    }

    IPluginCreatorInterface* find(char const* name, char const* version, char const* ns)
    {
        for (Entry const& e : entries)
        {
            if (e.name == name && e.version == version && e.ns == (ns != nullptr ? ns : ""))
            {
                return e.creator;
            }
        }
        return nullptr;
    }

    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override
    {
        std::string name, version;
        if (!describe(creator, name, version) || find(name.c_str(), version.c_str(), ns) != nullptr)
        {
            ++refused;
            return false;
        }
        entries.push_back({&creator, name, version, ns != nullptr ? ns : ""});
        all.push_back(&creator);
        return true;
    }

    PluginLibraryHandle loadLibrary(AsciiChar const* path) noexcept override
    {
        void* handle = dlopen(path, RTLD_LAZY);
        using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
        auto getCreators = handle != nullptr ? reinterpret_cast<GetCreators>(dlsym(handle, "getCreators")) : nullptr;
        if (getCreators == nullptr)
        {
            return nullptr;
        }
        int32_t n = 0;
        IPluginCreatorInterface* const* creators = getCreators(n);
        for (int32_t i = 0; i < n; ++i)
        {
            std::string name, version;
            if (describe(*creators[i], name, version)
                && find(name.c_str(), version.c_str(),
                       static_cast<IPluginCreatorV3One*>(creators[i])->getPluginNamespace())
                    != nullptr)
            {
                return nullptr;  // documented: fails if any of the plugins are already registered
            }
        }
        for (int32_t i = 0; i < n; ++i)
        {
            registerCreator(*creators[i], static_cast<IPluginCreatorV3One*>(creators[i])->getPluginNamespace());
        }
        return handle;
    }

    IPluginCreatorInterface* getCreator(AsciiChar const* const name, AsciiChar const* const version,
        AsciiChar const* const ns) noexcept override
    {
        return find(name, version, ns);
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = static_cast<int32_t>(all.size());
        return all.data();
    }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override
    {
        return false;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return -1;
    }
#if NV_TENSORRT_MAJOR >= 11
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        return getAllCreators(n);
    }
#else
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override
    {
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override
    {
        return false;
    }
#endif
};

StandInRegistry gRegistry;

} // namespace

extern "C" FLASHVLM_EXPORT nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &gRegistry;
}

//! Test hooks: creators registered, and registerCreator calls refused as duplicates.
extern "C" FLASHVLM_EXPORT int32_t flashvlmStandInRegistered()
{
    return static_cast<int32_t>(gRegistry.entries.size());
}
extern "C" FLASHVLM_EXPORT int32_t flashvlmStandInRefused()
{
    return gRegistry.refused;
}
