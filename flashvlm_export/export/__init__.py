"""ONNX export of the selector core and the full LLaVA pipeline."""
