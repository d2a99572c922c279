#!/usr/bin/env bash
# Compile every plugin source with nvcc/g++ -c against a TensorRT include directory.
#   scripts/compile_check_plugin.sh /path/to/TensorRT/include [sm_87 sm_90 ...]
# The headers are NVIDIA's public ones (NVIDIA/TensorRT, include/ on release/10.3 or release/11.1);
# never commit them. Prints one line per object and exits non-zero on the first failure.
set -euo pipefail
include=${1:?usage: $0 TENSORRT_INCLUDE_DIR [sm_XX ...]}
shift
archs=("${@:-sm_87 sm_90}")
[ -f "$include/NvInferRuntime.h" ] || { echo "no NvInferRuntime.h under $include" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
src=$here/flashvlm_export/plugin/csrc
cuda=${CUDA_HOME:-/usr/local/cuda}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
version=$(sed -n 's/^#define TRT_\(MAJOR\|MINOR\|PATCH\)_ENTERPRISE \([0-9]*\).*/\2/p;s/^#define NV_TENSORRT_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' "$include/NvInferVersion.h" | head -3 | paste -sd.)
echo "TensorRT headers $version at $include"
flags=(-std=c++17 -Wall -Werror -Wno-deprecated-declarations -I"$src" -I"$include" -I"$cuda/include")
for f in residualPrunePlugin.cpp pluginHarness.cpp residualPruneCpu.cpp; do
  g++ "${flags[@]}" -fPIC -c "$src/$f" -o "$out/${f%.cpp}.o"
  echo "  g++  $f ok"
done
for arch in ${archs[@]}; do
  "$cuda/bin/nvcc" -std=c++17 -arch="$arch" -Xcompiler=-Wall,-Werror,-fPIC -Wno-deprecated-declarations \
    -I"$src" -I"$include" -c "$src/residualPruneKernel.cu" -o "$out/kernel_$arch.o"
  echo "  nvcc residualPruneKernel.cu -arch=$arch ok"
done
g++ -shared -o "$out/libflashvlm_plugins.so" "$out/residualPrunePlugin.o" "$out/kernel_${archs[0]%% *}.o" \
  -L"$cuda/lib64" -lcudart -ldl
nm -D --defined-only "$out/libflashvlm_plugins.so" | grep -q " T getCreators$"
echo "  link libflashvlm_plugins.so ok, exports getCreators"
