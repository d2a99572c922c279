"""Triton Python-backend entry model (the ONNX and TensorRT flavours): a BLS chain encoder -> selector of the budget.

Copied as <repository>/flashvlm/1/model.py by `flashvlm-export triton --flavour onnx|tensorrt`. It runs the
encoder model, then the selector model that serves the request's budget (read from the manifest copy beside it),
(over a split of several shapes, the chain of the shape the request's pixel_values have: its `routes` parameter),
passing the encoder's outputs its `shared` parameter names (X, a, P(X), and Qwen3-VL's deepstack_features) as Triton
tensors (on the GPU they stay there, through DLPack); the client gets what the entry's config declares (indices,
visual_embeds, and positions / deepstack_embeds / kept where the graphs have them). Needs flashvlm_export importable
in the Python backend (docs/TRITON.md).
"""

import json
import os
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

BUDGET, KEPT, PIXEL_VALUES, TEXT_EMBEDS, TEXT_MASK = "budget", "kept", "pixel_values", "text_embeds", "text_mask"


def parameters_of(config: dict) -> dict[str, str]:
    """The config's parameters; its `python_path` folders go first on sys.path (model_chain.py's rule)."""
    found = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    for folder in reversed([p for p in found.get("python_path", "").split(os.pathsep) if p]):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    return found


def host_array(tensor):
    """A host tensor as a numpy array, through DLPack (model_chain.py's host_array: as_numpy() of a Python backend built
    against numpy 1 reads wrong data under numpy 2)."""
    return np.from_dlpack(tensor)


def host_tensor(name: str, array):
    """A Triton tensor of a host array through DLPack (pb_utils.Tensor(name, ndarray) of a Python backend built
    against numpy 1 answers an empty tensor under numpy 2; model_chain.py)."""
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = parameters_of(config)
        global np, UsageError, Manifest, selector_stem, REQUEST_INPUTS, padded, padded_budget, request_budget
        import numpy as np

        from flashvlm_export.errors import UsageError
        from flashvlm_export.export.manifest import Manifest, selector_stem
        from flashvlm_export.serve.handler import REQUEST_INPUTS, padded, padded_budget, request_budget

        folder = Path(args["model_repository"]) / args["model_version"]

        def route(manifest: str, encoder: str, prefix: str):
            path = folder / manifest
            return Manifest(path, json.loads(path.read_text())), encoder, prefix  # budgets only: the graphs are sub-models

        # a split of several shapes: "3x448x448=manifest_448.json,flashvlm_448_encoder,flashvlm_448_;..." (repository.py)
        self.routes = {None: route(parameters["manifest"], parameters["encoder"], parameters["selector_prefix"])}
        if parameters.get("routes"):
            self.routes = {}
            for item in parameters["routes"].split(";"):
                dims, _, names = item.partition("=")
                self.routes[tuple(int(d) for d in dims.split("x"))] = route(*names.split(","))
        self.shared = parameters["shared"].split(",")  # the encoder's outputs the selectors read (repository.py writes it)
        self.outputs = [o["name"] for o in config["output"]]

    def _route(self, pixels):
        """The shape's (manifest, encoder model, selector prefix) for these pixel_values; one line for another shape."""
        if None in self.routes:
            return self.routes[None]
        dims = tuple(pixels.shape[1:])
        if dims not in self.routes:
            served = ", ".join("x".join(map(str, d)) for d in self.routes)
            raise UsageError(
                f"pixel_values of shape {'x'.join(map(str, dims))} is none of this repository's shapes: {served}; "
                "resize the photo to one (run --manifest picks it as the model's processor would)"
            )
        return self.routes[dims]

    def _one(self, request):
        feeds = {name: host_array(pb_utils.get_input_tensor_by_name(request, name)) for name in REQUEST_INPUTS}
        budget = host_array(pb_utils.get_input_tensor_by_name(request, BUDGET))
        manifest, encoder_model, prefix = self._route(feeds[PIXEL_VALUES])
        batch = manifest.record["batch"]
        key, run = request_budget(manifest, budget, len(feeds[TEXT_MASK]))
        feeds, images = padded(feeds, batch)
        encoded = pb_utils.InferenceRequest(
            model_name=encoder_model,
            requested_output_names=list(self.shared),
            inputs=[host_tensor(PIXEL_VALUES, feeds[PIXEL_VALUES])],
        ).exec()
        if encoded.has_error():
            raise RuntimeError(encoded.error().message())
        inputs = [pb_utils.get_output_tensor_by_name(encoded, name) for name in self.shared]
        inputs += [host_tensor(TEXT_EMBEDS, feeds[TEXT_EMBEDS]), host_tensor(TEXT_MASK, feeds[TEXT_MASK])]
        low = manifest.budget_range[0] if manifest.budget_range is not None else None
        if low is not None:
            inputs.append(host_tensor(BUDGET, np.asarray(padded_budget(run, images, batch), dtype=np.int64)))
        selected = pb_utils.InferenceRequest(
            model_name=prefix + selector_stem(key, low), requested_output_names=self.outputs, inputs=inputs
        ).exec()
        if selected.has_error():
            raise RuntimeError(selected.error().message())
        tensors = [pb_utils.get_output_tensor_by_name(selected, name) for name in self.outputs]
        if images == batch and KEPT not in self.outputs:  # as they are: on the GPU, no copy
            return pb_utils.InferenceResponse(output_tensors=tensors)
        found = {t.name(): host_array(t)[:images] for t in tensors}  # host tensors (the selector's outputs on the CPU)
        if KEPT in found:
            found[KEPT] = found[KEPT].reshape(images, 1)
        return pb_utils.InferenceResponse(output_tensors=[host_tensor(n, v) for n, v in found.items()])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except (UsageError, RuntimeError) as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
