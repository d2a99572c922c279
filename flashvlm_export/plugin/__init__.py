"""The ResidualPrune plugin: C++/CUDA sources (csrc/), its ONNX node, ONNX Runtime twin and build."""

from pathlib import Path

PLUGIN_NAME = "ResidualPrune"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "flashvlm"
PLUGIN_DOMAIN = "flashvlm"  # the ONNX node's domain
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}/{PLUGIN_VERSION}"  # recorded in graph metadata and engine sidecars
SOURCE_DIR = Path(__file__).parent  # CMakeLists.txt and csrc/ ship inside the package
