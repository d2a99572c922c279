#!/usr/bin/env bash
# Create the OpenVINO GenAI peer's own virtual environment (issue 35): optimum-intel 2.2 pins transformers<5.6,
# which clashes with the project's transformers 5.x, so the peer never shares the project's venv.
# Usage: scripts/setup_openvino_genai.sh [VENV]
#   (default: $FLASHVLM_OPENVINO_GENAI_VENV or ~/.cache/flashvlm-export/openvino-genai-venv)
# Idempotent: an existing venv whose pins already import is reused. Prints the venv's path on its last line.
# torch comes from the local CPU wheel ("torch==2.13.0"); the pytorch index is not used (unreachable here).
# transformers 5.0.0: optimum-intel 2.2's Qwen2.5-VL export config caps it at 5.0 (MAX_TRANSFORMERS_VERSION), though
# the package itself admits <5.6. torchvision is removed after the install: optimum-intel pulls PyPI's 0.28.0, built
# for the CUDA torch, whose ops fail to load beside the CPU torch ("operator torchvision::nms does not exist") and
# break `import transformers`; nothing in the Qwen2.5-VL export needs it (pip then warns that it is missing).
set -euo pipefail
VENV="${1:-${FLASHVLM_OPENVINO_GENAI_VENV:-$HOME/.cache/flashvlm-export/openvino-genai-venv}}"
PY="${PYTHON:-python3}"
PINS=(
  "torch==2.13.0"
  "transformers==5.0.0"
  "optimum==2.3.0"
  "optimum-intel==2.2.0"
  "openvino==2026.4.1"
  "openvino-tokenizers==2026.4.1.0"
  "openvino-genai==2026.4.1.0"
  "nncf==3.4.0"
  "pillow==13.0.0"
)
check='import openvino, openvino_genai, openvino_tokenizers, optimum.intel, transformers, torch; print("ok")'
stamp="$VENV/.flashvlm-pins"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${PINS[*]}" ] \
  && "$VENV/bin/python" -c "$check" >/dev/null 2>&1; then
  echo "setup_openvino_genai: $VENV ready (cached)"
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q "${PINS[@]}"
  "$VENV/bin/python" -m pip uninstall -q -y torchvision
  "$VENV/bin/python" -c "$check" >/dev/null
  echo "${PINS[*]}" >"$stamp"
fi
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version

names = ["torch", "transformers", "optimum", "optimum-intel", "openvino", "openvino-tokenizers", "openvino-genai"]
print("setup_openvino_genai: " + ", ".join(f"{n} {version(n)}" for n in names))
PY
echo "$VENV"
