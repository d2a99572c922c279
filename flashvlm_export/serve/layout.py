"""The tensors of a repository's models and their config.pbtxt (Triton's model configuration, protobuf text).

Each graph's inputs and outputs are read from the graph itself (no weights loaded). The split's graphs have a static
batch B: the encoder and selector models are max_batch_size 0 with full shapes; the entry model takes 1..B images
per request (max_batch_size B, Triton's batch dimension first) where every entry tensor leads with B.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flashvlm_export.errors import UsageError
from flashvlm_export.export.interface import (
    BUDGET,
    DEEPSTACK_EMBEDS,
    KEPT,
    PIXEL_VALUES,
    TEXT_EMBEDS,
    TEXT_MASK,
    encoder_outputs_among,
)

TRITON_TYPES = {1: "TYPE_FP32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 16: "TYPE_BF16", 6: "TYPE_INT32"}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # TYPE_FP32 ...
    dims: tuple[int, ...]  # -1: varies per request


def graph_tensors(graph: Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """A graph's inputs and outputs as Triton tensors (shapes as exported; a named dimension becomes -1)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)

    def tensors(values) -> tuple[Tensor, ...]:
        found = []
        for value in values:
            kind = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
            found.append(Tensor(value.name, TRITON_TYPES.get(kind.elem_type, f"TYPE_ONNX_{kind.elem_type}"), dims))
        return tuple(found)

    return tensors(model.graph.input), tensors(model.graph.output)


def shared_tensors(encoder: tuple, selector: tuple) -> tuple[str, ...]:
    """The encoder's outputs that the selector takes, in interface order: X, a, P(X), and Qwen3-VL's deepstack_features.
    A one-line error naming the tensor where the two graphs disagree (one writes what the other does not read)."""
    (_, enc_out), (sel_in, _) = encoder, selector
    written = set(encoder_outputs_among({t.name for t in enc_out}))
    read = set(encoder_outputs_among({t.name for t in sel_in}))
    if written != read:
        extra = ", ".join(sorted(written ^ read))
        raise UsageError(
            f"the encoder graph writes {sorted(written)}, the selector graph reads {sorted(read)} ({extra} on one side "
            "only); export the encoder and its selectors together, from one model"
        )
    return encoder_outputs_among(written)


def entry_tensors(encoder: tuple, selector: tuple, batch: int) -> tuple[int, tuple, tuple]:
    """(max_batch_size, inputs, outputs) of the entry model: pixels, text, mask and a budget per image in; indices,
    visual_embeds (positions and deepstack_embeds where the model has them, kept for a budget-range split) out, K wide
    varying per request."""
    (enc_in, _), (sel_in, sel_out) = encoder, selector
    by_name = {t.name: t for t in enc_in + sel_in}
    inputs = [by_name[PIXEL_VALUES], by_name[TEXT_EMBEDS], by_name[TEXT_MASK], Tensor(BUDGET, "TYPE_INT64", (batch, 1))]
    outputs = []
    for t in sel_out:
        if t.name == KEPT:
            outputs.append(Tensor(KEPT, t.dtype, (batch, 1)))
        elif t.name == DEEPSTACK_EMBEDS:  # (B, L, K, Dl): K is the request's
            outputs.append(Tensor(t.name, t.dtype, (*t.dims[:2], -1, *t.dims[3:])))
        else:  # indices (B, K), visual_embeds (B, K, Dl), positions (B, K, 3): K is the request's
            outputs.append(Tensor(t.name, t.dtype, (t.dims[0], -1, *t.dims[2:])))
    batched = all(t.dims and t.dims[0] == batch for t in inputs + outputs)
    if not batched:
        return 0, tuple(inputs), tuple(outputs)
    strip = lambda ts: tuple(Tensor(t.name, t.dtype, t.dims[1:]) for t in ts)  # noqa: E731
    return batch, strip(inputs), strip(outputs)


def _tensor_block(kind: str, tensors) -> str:
    rows = [f'  {{ name: "{t.name}" data_type: {t.dtype} dims: [ {", ".join(map(str, t.dims))} ] }}' for t in tensors]
    return f"{kind} [\n" + ",\n".join(rows) + "\n]"


def model_config(
    name: str,
    engine: str,
    max_batch_size: int,
    inputs,
    outputs,
    instances: int,
    gpu: bool,
    parameters: dict[str, str] | None = None,
    dynamic_batching: bool = False,
) -> str:
    """config.pbtxt text. `engine`: a platform (tensorrt_plan, onnxruntime_onnx) or "python" (the Python backend)."""
    head = f'backend: "{engine}"' if engine == "python" else f'platform: "{engine}"'
    lines = [
        f'name: "{name}"',
        head,
        f"max_batch_size: {max_batch_size}",
        _tensor_block("input", inputs),
        _tensor_block("output", outputs),
    ]
    lines.append(f"instance_group [ {{ count: {instances} kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]")
    if dynamic_batching and max_batch_size > 0:
        lines.append("dynamic_batching { max_queue_delay_microseconds: 100 }")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"
