"""Serving a split export from a Triton Inference Server model repository (docs/TRITON.md).

layout.py: the models' tensors and config.pbtxt; repository.py: writes the repository from a manifest;
handler.py: what a request does (its budget, its batch) inside the Python-backend models model_chain.py
(the CPU flavour: the split chain in ONNX Runtime) and model_bls.py (the entry of the ONNX and TensorRT flavours).
"""
