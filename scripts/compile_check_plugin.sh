#!/usr/bin/env bash
# Compile every plugin source with g++/nvcc -Werror against a TensorRT include directory, link the two
# libraries and prove their exported symbols with nm.
#   scripts/compile_check_plugin.sh /path/to/TensorRT/include [sm_87 sm_90 ...]
#   FLASHVLM_PLUGIN_OUT=DIR keeps what it built there (else a temporary folder):
#     libflashvlm_plugins.so            the plugin; exports getCreators only (loadLibrary, --dynamicPlugins)
#     libflashvlm_plugins_register.so   registers the plugin's creator when dlopened (polygraphy --plugins,
#                                       trtexec --staticPlugins); exports flashvlm_registration_status only
#     flashvlm_plugin_harness           the harness (tests/csrc/pluginHarness.cpp)
#     standin/libnvinfer.so.<major>     TEST STAND-IN registry (tests/csrc/testNvinferStandIn.cpp), not TensorRT
# The headers are NVIDIA's public ones (NVIDIA/TensorRT, include/ on release/10.3 or release/11.1);
# never commit them. Without nvcc the kernel is replaced by tests/csrc/testKernelStub.cpp (said so in the output):
# the libraries then serve the loading tests only. Exits non-zero on the first failure.
set -euo pipefail
include=${1:?usage: $0 TENSORRT_INCLUDE_DIR [sm_XX ...]}
shift
archs=("${@:-sm_87 sm_90}")
[ -f "$include/NvInferRuntime.h" ] || { echo "no NvInferRuntime.h under $include" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
src=$here/flashvlm_export/plugin/csrc  # what ships
tests=$here/tests/csrc                 # test-only: the harness, the stand-in registry, the kernel stub
cuda=${CUDA_HOME:-/usr/local/cuda}
[ -f "$cuda/include/cuda_runtime_api.h" ] || { echo "no CUDA headers under $cuda/include (set CUDA_HOME)" >&2; exit 2; }
if [ -n "${FLASHVLM_PLUGIN_OUT:-}" ]; then
  out=$FLASHVLM_PLUGIN_OUT
  mkdir -p "$out"
else
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
major=$(sed -n 's/^#define TRT_MAJOR_ENTERPRISE \([0-9]*\).*/\1/p;s/^#define NV_TENSORRT_MAJOR \([0-9]*\).*/\1/p' "$include/NvInferVersion.h" | head -1)
version=$(sed -n 's/^#define TRT_\(MAJOR\|MINOR\|PATCH\)_ENTERPRISE \([0-9]*\).*/\2/p;s/^#define NV_TENSORRT_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' "$include/NvInferVersion.h" | head -3 | paste -sd.)
echo "TensorRT headers $version at $include"
flags=(-std=c++17 -Wall -Werror -Wno-deprecated-declarations -fPIC -I"$src" -I"$include" -I"$cuda/include")
for path in "$src"/{residualPrunePlugin,residualPruneRangePlugin,residualPruneRegister,residualPruneCpu}.cpp "$tests"/{pluginHarness,testNvinferStandIn}.cpp; do
  f=$(basename "$path")
  g++ "${flags[@]}" -fvisibility=hidden -c "$path" -o "$out/${f%.cpp}.o"
  echo "  g++  $f ok"
done
nvcc=$(command -v nvcc || true)
[ -n "$nvcc" ] || { [ -x "$cuda/bin/nvcc" ] && nvcc=$cuda/bin/nvcc; } || true
kernel=""
if [ -n "$nvcc" ]; then
  for arch in ${archs[@]}; do
    "$nvcc" -std=c++17 -arch="$arch" -Werror all-warnings -Xcompiler=-Wall,-Werror,-fPIC,-fvisibility=hidden \
      -Wno-deprecated-declarations -I"$src" -I"$include" -c "$src/residualPruneKernel.cu" -o "$out/kernel_$arch.o"
    echo "  nvcc residualPruneKernel.cu -arch=$arch ok"
    kernel=${kernel:-$out/kernel_$arch.o}
  done
else
  g++ "${flags[@]}" -fvisibility=hidden -c "$tests/testKernelStub.cpp" -o "$out/kernel_stub.o"
  kernel=$out/kernel_stub.o
  echo "  nvcc absent: the kernel is STUBBED (testKernelStub.cpp); these libraries serve loading tests only"
fi
g++ -shared -o "$out/libflashvlm_plugins.so" "$out/residualPrunePlugin.o" "$out/residualPruneRangePlugin.o" "$kernel" -L"$cuda/lib64" -lcudart \
  -Wl,--version-script="$src/libflashvlm_plugins.map"
g++ -shared -o "$out/libflashvlm_plugins_register.so" "$out/residualPruneRegister.o" -L"$out" -lflashvlm_plugins \
  -Wl,-rpath,'$ORIGIN' -ldl -Wl,--version-script="$src/libflashvlm_plugins_register.map"
g++ -o "$out/flashvlm_plugin_harness" "$out/pluginHarness.o" -L"$cuda/lib64" -lcudart -ldl -Wl,-rpath,"$cuda/lib64"
mkdir -p "$out/standin"
g++ -shared -Wl,-soname,"libnvinfer.so.$major" -o "$out/standin/libnvinfer.so.$major" "$out/testNvinferStandIn.o" -ldl
echo "  link libflashvlm_plugins.so, libflashvlm_plugins_register.so, flashvlm_plugin_harness, standin/libnvinfer.so.$major ok"

# nm proof: each library exports exactly its entry point, and neither links libnvinfer
exports() { nm -D --defined-only "$1" | awk '$2 != "A" {print $3}' | sort | paste -sd' '; }
plugin_exports=$(exports "$out/libflashvlm_plugins.so")
register_exports=$(exports "$out/libflashvlm_plugins_register.so")
[ "$plugin_exports" = "getCreators" ] || { echo "libflashvlm_plugins.so exports: $plugin_exports" >&2; exit 1; }
[ "$register_exports" = "flashvlm_registration_status" ] || { echo "register library exports: $register_exports" >&2; exit 1; }
needed=$(readelf -d "$out/libflashvlm_plugins_register.so" "$out/libflashvlm_plugins.so" | awk '/NEEDED/ {print $5}' | paste -sd' ')
case "$needed" in *nvinfer*) echo "a library links libnvinfer: $needed" >&2; exit 1 ;; esac
echo "  nm: libflashvlm_plugins.so exports getCreators only; libflashvlm_plugins_register.so exports flashvlm_registration_status only"
echo "  readelf NEEDED: $needed"
