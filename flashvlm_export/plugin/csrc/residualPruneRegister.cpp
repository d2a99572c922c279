/*
 * libflashvlm_plugins_register.so: for tools that only dlopen a plugin library and never call
 * getCreators. Both load a path with a plain dlopen:
 *  - polygraphy run --plugins: LoadPlugins.call_impl does ctypes.CDLL(path), before anything imports
 *    tensorrt (tools/Polygraphy/polygraphy/backend/trt/loader.py, LoadPlugins, release/10.3 l.68-70,
 *    release/11.1 l.73-75; the same in Polygraphy 0.53.6);
 *  - trtexec --staticPlugins (and the deprecated --plugins): samples/trtexec/trtexec.cpp l.300-303 on
 *    release/10.3 dlopens each path through samples/common/common.h DynamicLibrary, after libnvinfer.
 * At load time this library registers every creator that libflashvlm_plugins.so's getCreators returns
 * with IPluginRegistry::registerCreator, the documented call that REGISTER_TENSORRT_PLUGIN makes
 * (NvInferRuntime.h, PluginRegistrar). getPluginRegistry is found by opening libnvinfer by its soname,
 * libnvinfer.so.<NV_TENSORRT_MAJOR of the headers this was compiled against>: when libnvinfer is
 * already in the process (trtexec, `import tensorrt`) that returns the very same copy; when it is not
 * (Polygraphy) the dynamic loader finds it as it would for the tensorrt module, and the later
 * `import tensorrt` reuses it when it resolves the same file (LD_LIBRARY_PATH or the system path;
 * FLASHVLM_NVINFER_LIB=<path> names the file explicitly, e.g. pip's tensorrt_libs/libnvinfer.so.10).
 * A creator already in the registry (loaded before through loadLibrary) is left alone: nothing is
 * registered twice. Never give this library to loadLibrary / --dynamicPlugins: that is
 * libflashvlm_plugins.so's path.
 */
#include "NvInferRuntime.h"
#include "residualPrunePlugin.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <string>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{

constexpr char const* kTag = "[flashvlm] libflashvlm_plugins_register.so";

// Outcome of the load-time registration, readable through flashvlm_registration_status().
enum Status : int32_t
{
    kRegistered = 0,        // this library registered the creator
    kAlreadyRegistered = 1, // the creator was in the registry already (loadLibrary came first)
    kNoLibnvinfer = -1,     // libnvinfer.so.<major> could not be opened
    kNoRegistry = -2,       // it has no getPluginRegistry, or that returned null
    kRejected = -3,         // registerCreator returned false
    kNoCreator = -4         // getCreators returned no V3 creator
};

int32_t gStatus = kNoCreator;

int32_t registerAll() noexcept
{
    std::string const soname = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
    char const* explicitPath = std::getenv("FLASHVLM_NVINFER_LIB");
    char const* const name = explicitPath != nullptr && *explicitPath != '\0' ? explicitPath : soname.c_str();
    void* nvinfer = dlopen(name, RTLD_LAZY);  // never closed: the registry keeps pointers into us
    if (nvinfer == nullptr)
    {
        std::fprintf(stderr,
            "%s: cannot open %s (%s); put TensorRT's lib directory on LD_LIBRARY_PATH or set FLASHVLM_NVINFER_LIB; "
            "nothing registered\n",
            kTag, name, dlerror());
        return kNoLibnvinfer;
    }
    using GetRegistry = nvinfer1::IPluginRegistry* (*) ();
    auto getRegistry = reinterpret_cast<GetRegistry>(dlsym(nvinfer, "getPluginRegistry"));
    nvinfer1::IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
    if (registry == nullptr)
    {
        std::fprintf(stderr, "%s: %s has no plugin registry; nothing registered\n", kTag, name);
        return kNoRegistry;
    }
    int32_t nbCreators = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    int32_t status = kNoCreator;
    for (int32_t i = 0; i < nbCreators; ++i)
    {
        if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
        {
            continue;
        }
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        char const* ns = creator->getPluginNamespace();
        if (registry->getCreator(creator->getPluginName(), creator->getPluginVersion(), ns) != nullptr)
        {
            status = kAlreadyRegistered;
        }
        else if (registry->registerCreator(*creator, ns))
        {
            status = kRegistered;
        }
        else
        {
            std::fprintf(stderr, "%s: registerCreator refused %s::%s\n", kTag, ns, creator->getPluginName());
            return kRejected;
        }
    }
    return status;
}

struct RegisterAtLoad
{
    RegisterAtLoad() noexcept
    {
        gStatus = registerAll();
    }
} gRegisterAtLoad;

} // namespace

//! What the load-time registration did (Status above); for tests and for diagnosing a tool's load.
extern "C" FLASHVLM_EXPORT int32_t flashvlm_registration_status()
{
    return gStatus;
}
