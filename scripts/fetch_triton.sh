#!/usr/bin/env bash
# Fetch a real tritonserver (Python backend only) and tritonclient into a cache folder, outside the project's venv:
# nvidia-pytriton 0.7.0's wheel bundles tritonserver but pins numpy<2, so it is unzipped, never pip-installed; the
# tritonclient wheel pins protobuf<7 (onnx here runs 7), so it goes to <cache>/client, which tests put last on sys.path.
# Usage: scripts/fetch_triton.sh [CACHE] (default: $FLASHVLM_TRITON_CACHE or ~/.cache/flashvlm-export/triton).
# Exits 0 with a message when anything cannot be had: tests/test_triton.py then skips and says why.
set -uo pipefail
CACHE="${1:-${FLASHVLM_TRITON_CACHE:-$HOME/.cache/flashvlm-export/triton}}"
PY="${PYTHON:-python}"
SERVER="$CACHE/wheel/pytriton/tritonserver"
if [ -x "$SERVER/bin/tritonserver" ] && [ -x "$SERVER/backends/python/triton_python_backend_stub" ] && [ -d "$CACHE/client/tritonclient" ]; then
  echo "fetch_triton: $CACHE ready (cached)"; exit 0
fi
mkdir -p "$CACHE" && tmp="$(mktemp -d "$CACHE/.fetch-XXXXXX")" || { echo "fetch_triton: cannot write $CACHE; the live Triton test will skip"; exit 0; }
trap 'rm -rf "$tmp"' EXIT
if ! timeout 300 "$PY" -m pip download -q nvidia-pytriton==0.7.0 --no-deps -d "$tmp/dl" \
  || ! (cd "$tmp" && mkdir wheel && cd wheel && unzip -q ../dl/nvidia_pytriton-0.7.0-*.whl); then
  echo "fetch_triton: could not fetch nvidia-pytriton 0.7.0; the live Triton test will skip"; exit 0
fi
stub="$tmp/wheel/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub"
cp "$stub" "$tmp/wheel/pytriton/tritonserver/backends/python/" || { echo "fetch_triton: no 3.11 Python backend stub in the wheel"; exit 0; }
chmod +x "$tmp/wheel/pytriton/tritonserver/bin/tritonserver" "$tmp/wheel/pytriton/tritonserver/backends/python/triton_python_backend_stub"
if ! timeout 300 "$PY" -m pip install -q --target "$tmp/client" "tritonclient[http,grpc]"; then
  echo "fetch_triton: could not fetch tritonclient; the live Triton test will skip"; exit 0
fi
rm -rf "$tmp"/client/numpy "$tmp"/client/numpy-* "$tmp"/client/numpy.libs  # the project's numpy stays the one imported
rm -rf "$CACHE/wheel" "$CACHE/client" && mv "$tmp/wheel" "$tmp/client" "$CACHE/" && echo "fetch_triton: $CACHE ready"
