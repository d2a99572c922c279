"""The ResidualPrune plugins: C++/CUDA sources (csrc/), their ONNX nodes, ONNX Runtime twins and build.

ResidualPrune takes one budget fixed at export; ResidualPruneRange a budget per image (issue 23).
"""

from pathlib import Path

PLUGIN_NAME = "ResidualPrune"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "flashvlm"
PLUGIN_DOMAIN = "flashvlm"  # the ONNX node's domain
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}/{PLUGIN_VERSION}"  # recorded in graph metadata and engine sidecars
RANGE_PLUGIN_NAME = "ResidualPruneRange"  # the budget-per-image plugin (csrc/residualPruneRangePlugin.h)
RANGE_PLUGIN_VERSION = "1"
RANGE_PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{RANGE_PLUGIN_NAME}/{RANGE_PLUGIN_VERSION}"
SOURCE_DIR = Path(__file__).parent  # CMakeLists.txt and csrc/ ship inside the package
