"""TensorRT engines: build (weakly typed on TensorRT 10, strongly typed on 11), sidecar, runner.

`tensorrt` is imported lazily: the package and its CPU paths work where TensorRT is absent.
"""
