"""Export a static module to ONNX with its metadata, checked, atomically, never over a user's file."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from flashvlm_export.artifacts.files import existing_ancestor, human_size
from flashvlm_export.artifacts.naming import external_data_path
from flashvlm_export.artifacts.placement import atomic_outputs
from flashvlm_export.artifacts.sidecar import sidecar_path
from flashvlm_export.errors import FlashVLMError, UsageError
from flashvlm_export.export.metadata import stamped, typed_values
from flashvlm_export.export.options import DEFAULT_EXPORTER, DEFAULT_OPSET, EXPORTERS

EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's 2 GB limit
HEADROOM_BYTES = 64 * 1024**2  # graph structure, sidecar and file-system slack beyond the weights


@dataclass(frozen=True)
class GraphIO:
    """What one export traces: input and output names (from export/interface.py) and example inputs.

    The module returns the outputs, then the verification outputs; the shipped graph keeps the
    latter as named internal tensors only (a verification build exposes them again).
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example_inputs: tuple  # torch.Tensor each
    verification_names: tuple[str, ...] = ()


def parameter_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class _OtherThreadsOnly(io.TextIOBase):
    """sys.stdout while an exporter runs: what the exporting thread prints is dropped, what any other thread prints
    (the progress lines of a log, progress.py) goes on to the stream that was there before."""

    def __init__(self, stream):
        super().__init__()
        self._stream, self._exporting = stream, threading.get_ident()

    def write(self, text: str) -> int:
        return len(text) if threading.get_ident() == self._exporting else self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


def _quiet():
    """The exporters print progress and warnings of their own; keep the CLI's log to our lines (the progress
    thread's included: swallowing all of stdout silenced a 126 s export in a log)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(_OtherThreadsOnly(sys.stdout)))
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return stack


SHAPE_VECTOR = 64  # elements: a ConstantOfShape no larger builds a shape or an index vector, not data


def _fold_small_constant_of_shape(node) -> bool | None:
    """onnxscript's folder keeps every ConstantOfShape (to keep large constants out of the file); fold the small ones."""
    if node.op_type != "ConstantOfShape" or node.inputs[0].const_value is None:
        return None  # the folder's own rules
    return int(node.inputs[0].const_value.numpy().prod()) <= SHAPE_VECTOR or None


def fold_shape_constants(proto):
    """The TorchScript exporter leaves shape arithmetic on constants as nodes: CLIP's class token
    `expand(B, 1, -1)` becomes Expand(Where(Equal(shape, ConstantOfShape(...) * -1), ...)), static but
    past ONNX shape inference, so the static-graph check refuses it. Fold such subgraphs into constants,
    as the dynamo exporter's optimize=True does; every value is computed as before (same ops on the same
    constants), and the nodes left unused go."""
    import onnx_ir as ir
    from onnxscript import optimizer

    model = ir.serde.deserialize_model(proto)
    optimizer.fold_constants(model, should_fold=_fold_small_constant_of_shape)
    optimizer.remove_unused_nodes(model)
    return ir.serde.serialize_model(model)


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(existing_ancestor(folder)).free  # the folder is made when the graph is placed
    if free < needed:
        raise UsageError(
            f"{folder} has {human_size(free)} free but the graph needs about {human_size(needed)}; "
            "free some space or choose another --out-dir"
        )


def export_onnx(
    module,
    graph_io: GraphIO,
    path: Path,
    metadata: dict[str, str],
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
    *,
    overwrite: bool = False,
    finish=None,
) -> Path:
    """Write `path` (+ `path`.data when over 2 GB) and its sidecar .json together, or nothing. `finish(temp graph)`
    rewrites the exported graph before it is checked and placed (an int8/fp8 encoder's quantization).

    overwrite=False (the default) never replaces a file at any of those paths, even one that appears
    during the export; overwrite=True replaces them all or, on failure, leaves the old ones in place.
    """
    import onnx
    import torch

    from flashvlm_export.export.graph_check import static_graph_problems

    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    weights = parameter_bytes(module)
    large = weights >= EXTERNAL_DATA_BYTES
    _check_free_space(path.parent, weights + HEADROOM_BYTES)
    # placed in this order: a reader that sees the sidecar sees the graph and its data. The data file is placed when the
    # exporter wrote one: the graph's initializers can pass 2 GB when its parameters do not (folded constants, buffers;
    # qwen3-vl-2b: 1.75 GB of parameters), and torch's exporter then writes external data on its own
    finals = [external_data_path(path), path, sidecar_path(path)]
    metadata = stamped(metadata, opset)
    module = module.eval()
    with atomic_outputs(finals, overwrite=overwrite) as temps:
        temp_graph, temp_sidecar = temps[-2], temps[-1]
        with torch.no_grad(), _quiet():
            if exporter == "dynamo":
                program = torch.onnx.export(
                    module,
                    graph_io.example_inputs,
                    input_names=list(graph_io.input_names),
                    output_names=list(graph_io.output_names + graph_io.verification_names),
                    opset_version=opset,
                    dynamo=True,
                    optimize=True,
                    verbose=False,
                )
                outputs = program.model.graph.outputs
                for value in [v for v in outputs if v.name in graph_io.verification_names]:
                    outputs.remove(value)  # the node and its named tensor stay: only the graph output goes
                program.model.metadata_props.update(metadata)
                program.save(str(temp_graph), external_data=large)
                del program
            else:
                torch.onnx.export(
                    module,
                    graph_io.example_inputs,
                    str(temp_graph),
                    input_names=list(graph_io.input_names),
                    output_names=list(graph_io.output_names + graph_io.verification_names),
                    opset_version=opset,
                    dynamo=False,
                )
                proto = fold_shape_constants(onnx.load(str(temp_graph)))
                large = large or sum(len(t.raw_data) for t in proto.graph.initializer) >= EXTERNAL_DATA_BYTES
                kept = [o for o in proto.graph.output if o.name not in graph_io.verification_names]
                del proto.graph.output[:]
                proto.graph.output.extend(kept)
                for key, value in metadata.items():
                    proto.metadata_props.add(key=key, value=value)
                onnx.save(proto, str(temp_graph), save_as_external_data=large, location=external_data_path(path).name)
                del proto
        if finish is not None:  # an int8/fp8 encoder: quantized here, before the checks and the placement
            finish(temp_graph)
        problems = static_graph_problems(onnx.load(str(temp_graph), load_external_data=False))
        if problems:
            raise FlashVLMError(f"exported graph breaks the static-graph rules: {'; '.join(problems)}")
        record = {**typed_values(metadata), "onnx": path.name}
        temp_sidecar.write_text(json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


# How long an export takes is not predicted: on 2 CPU cores it varied 3-9x with the machine's load and with N (dynamo:
# 0.16 s per unrolled pruning round at N=576 on a quiet machine, 1.2-1.4 s at N=1,024; llava15-tiny's full graph,
# 70 rounds, 192 s with dynamo and 31 s with torchscript under a load of 11 on 2026-12-06). The opening line says
# only whether an export can take minutes, and when torchscript is the quicker exporter.
MANY_ROUNDS = 20  # unrolled pruning rounds from which the dynamo exporter can take minutes (and torchscript is quicker)
LARGE_WEIGHTS = (
    256 * 1024**2
)  # bytes of weights from which an export can take minutes (llava15's 1.2 GB: 22 s quiet, 4 min loaded)


def export_hint(n_rounds: int, weight_bytes: int, exporter: str) -> str:
    """What the opening line of an export says about its time: nothing, or that it can take minutes (and the quicker
    exporter, for many dynamo rounds)."""
    many_rounds = exporter == "dynamo" and n_rounds >= MANY_ROUNDS
    if not (many_rounds or weight_bytes >= LARGE_WEIGHTS):
        return ""
    quicker = "; --exporter torchscript traces its pruning rounds several times faster" if many_rounds else ""
    return f"this can take minutes on a CPU{quicker}"
