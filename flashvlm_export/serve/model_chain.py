"""Triton Python-backend model (the CPU flavour): the split chain in ONNX Runtime, one chain per model instance.

Copied as <repository>/flashvlm/1/model.py by `flashvlm-export triton`. The Python backend's stub imports it; it
needs flashvlm_export and its dependencies importable: the folders in the config's `python_path` parameter (written
by the command: where this flashvlm-export and its numpy and onnxruntime live) go first on sys.path, or leave it
empty and put them on PYTHONPATH (docs/TRITON.md). A request whose budget the split does not serve gets Triton's
error carrying flashvlm-export's one-line message.
"""

import json
import os
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils


def parameters_of(config: dict) -> dict[str, str]:
    found = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    for folder in reversed([p for p in found.get("python_path", "").split(os.pathsep) if p]):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    return found


def host_array(tensor):
    """A request's tensor as a numpy array, through DLPack. The Python backend nvidia-pytriton 0.7.0 bundles was built
    against numpy 1: under numpy 2 its as_numpy() reads wrong data and pb_utils.Tensor(name, ndarray) answers an empty
    tensor ("cannot reshape array of size 0"), so both directions go through DLPack."""
    import numpy as np

    return np.from_dlpack(tensor)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = parameters_of(config)
        from flashvlm_export.errors import UsageError
        from flashvlm_export.serve.handler import REQUEST_INPUTS, handler_for

        self.usage_error, self.inputs = UsageError, REQUEST_INPUTS
        folder = Path(args["model_repository"]) / args["model_version"]
        self.handler = handler_for(folder / parameters["manifest"])  # checks every hash before it serves
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feeds = {name: host_array(pb_utils.get_input_tensor_by_name(request, name)) for name in self.inputs}
                budget = host_array(pb_utils.get_input_tensor_by_name(request, "budget"))
                found = self.handler.infer(feeds, budget)
                tensors = [pb_utils.Tensor.from_dlpack(name, found[name]) for name in self.outputs]  # see host_array
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except self.usage_error as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # this request's own failure, in one line; the other requests of the batch still answer
                line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"flashvlm: {type(exc).__name__}: {line}"))
                )
        return responses
