"""The verification build of a shipped graph: the same nodes, with F and G (and for the pipeline
X, a and P(X)) exposed as outputs again (ALGORITHM.md "Parity", layers 1 and 2).

The export traces the module with these outputs and ships the graph without them, so their
tensors stand in the shipped graph under their own names; marking them as outputs adds no node
and changes no arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper
from onnx.external_data_helper import load_external_data_for_model

from flashvlm_export.errors import UsageError
from flashvlm_export.export.interface import GraphInterface


def add_verification_outputs(model: onnx.ModelProto, interface: GraphInterface, source: str) -> onnx.ModelProto:
    """Mark the interface's verification tensors as outputs of `model` (in place); refuse a graph that lacks one."""
    produced = {out for node in model.graph.node for out in node.output}
    present = {o.name for o in model.graph.output}
    for spec in interface.verification:
        if spec.name in present:
            continue
        if spec.name not in produced:
            raise UsageError(
                f"{source} has no tensor {spec.name!r} to verify against: it was not exported by this flashvlm-export "
                "(re-export it)"
            )
        model.graph.output.append(helper.make_tensor_value_info(spec.name, spec.onnx_type, list(spec.shape)))
    return model


def verification_model(graph: Path, interface: GraphInterface, scratch: Path) -> bytes | str:
    """The verification build of `graph`: bytes when self-contained, else a file (and its data) written to scratch."""
    from flashvlm_export.artifact_paths import load_graph

    model = load_graph(graph)  # the rule: the graph and every external-data location it names
    external = any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    if external:
        load_external_data_for_model(model, str(graph.parent))
    add_verification_outputs(model, interface, str(graph))
    if not external:
        return model.SerializeToString()
    path = scratch / f"{graph.stem}.verify.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return str(path)
