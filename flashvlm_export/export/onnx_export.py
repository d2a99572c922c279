"""Export a static module to ONNX with its metadata, checked, atomically, never over a user's file."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from flashvlm_export import __version__
from flashvlm_export.artifacts import atomic_outputs, external_data_path, sidecar_path, write_json_atomic
from flashvlm_export.errors import FlashVLMError
from flashvlm_export.export.graph_check import static_graph_problems

DEFAULT_OPSET = 18  # LayerNormalization is one op from 17 on; 18 is what the dynamo exporter targets
EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's 2 GB limit
EXPORTERS = ("dynamo", "torchscript")


@dataclass(frozen=True)
class GraphIO:
    """What one export traces: input and output names (from export/interface.py) and example inputs.

    The module returns the outputs, then the verification outputs; the shipped graph keeps the
    latter as named internal tensors only (a verification build exposes them again).
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example_inputs: tuple[torch.Tensor, ...]
    verification_names: tuple[str, ...] = ()


def _parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _quiet():
    """The exporters print progress and warnings of their own; keep the CLI's log to our lines."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return stack


def export_onnx(
    module: torch.nn.Module,
    graph_io: GraphIO,
    path: Path,
    metadata: dict[str, str],
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> Path:
    """Write `path` (+ `path`.data when over 2 GB) and its sidecar .json; nothing is left on failure."""
    large = _parameter_bytes(module) >= EXTERNAL_DATA_BYTES
    finals = [path, sidecar_path(path)] + ([external_data_path(path)] if large else [])
    metadata = {"producer": "flashvlm-export", "flashvlm_export_version": __version__, "opset": str(opset), **metadata}
    module = module.eval()
    with atomic_outputs(finals) as temps:
        temp_graph = temps[0]
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
            elif exporter == "torchscript":
                torch.onnx.export(
                    module,
                    graph_io.example_inputs,
                    str(temp_graph),
                    input_names=list(graph_io.input_names),
                    output_names=list(graph_io.output_names + graph_io.verification_names),
                    opset_version=opset,
                    dynamo=False,
                )
                proto = onnx.load(str(temp_graph))
                kept = [o for o in proto.graph.output if o.name not in graph_io.verification_names]
                del proto.graph.output[:]
                proto.graph.output.extend(kept)
                for key, value in metadata.items():
                    proto.metadata_props.add(key=key, value=value)
                onnx.save(proto, str(temp_graph), save_as_external_data=large, location=external_data_path(path).name)
                del proto
            else:
                raise FlashVLMError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
        problems = static_graph_problems(onnx.load(str(temp_graph), load_external_data=False))
        if problems:
            raise FlashVLMError(f"exported graph breaks the static-graph rules: {'; '.join(problems)}")
        write_json_atomic(temps[1], {**metadata, "onnx": path.name})
    return path


def read_metadata(path: Path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
