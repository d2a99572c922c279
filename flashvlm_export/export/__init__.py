"""ONNX export of the selector core, the encoder and the full pipeline, for every model family."""
