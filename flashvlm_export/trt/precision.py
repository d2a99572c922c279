"""Which float type every node of an exported graph computes in, and the check that the selector is fp32.

trt/build.py builds every engine as a strongly typed network (TensorRT 10.x with the STRONGLY_TYPED
flag, TensorRT 11 always): each layer computes in the types its tensors carry, which the ONNX parser
takes from the graph. So the graph's own types are TensorRT's precision decision, and this module
reads that decision off the ONNX file, before and without TensorRT:

- a node computes in fp16 (bf16) when any of its float tensors is fp16 (bf16), in fp32 when its float
  tensors are all fp32, and in no float type ("int") when it has none (index and mask arithmetic);
- the encoder side is the casts back to fp32 (fp16/bf16 -> fp32) that end the reduced-precision
  encoder and projector, and every node that feeds them. Those casts are the producers of the tensors
  the graph names X, a, P(X) and, for Qwen3-VL, the DeepStack rows (export/interface.py
  ENCODER_OUTPUTS), when it names them and they are casts back; otherwise the first casts back (a cast
  back downstream of another is a round trip inside the selector). Naming lets an encoder round-trip
  to fp32 inside (Qwen2.5-VL's rotary and softmax); the selector is every other node: all that is
  downstream of the casts back, and the text side (T, the mask) that never meets the encoder. (A
  reduced round trip on the text side, before it meets the encoder's outputs, would count as encoder
  side: the tests pin the exported graphs' casts back to exactly X, a and P(X), and Qwen3-VL's to
  those and the DeepStack rows.)
- TensorRT holds in fp32 exactly the nodes that compute in fp32 (`PrecisionPlan.held_fp32`).

The check (`PrecisionPlan.violations`): no selector node computes in anything but fp32 or "int", and a
graph with reduced-precision tensors has casts back to fp32 at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from flashvlm_export.errors import FlashVLMError
from flashvlm_export.export.interface import ENCODER_OUTPUTS
from flashvlm_export.export.options import REDUCED_PRECISIONS
from flashvlm_export.progress import plural


def compute_type(tensor_types: list[str | None]) -> str:
    """The float type a node (or TensorRT layer) computes in, from the types of all its inputs and outputs.

    Types are "fp32", "fp16", "bf16", "fp64", another name for non-float tensors, or None when unknown.
    """
    if any(t is None for t in tensor_types):
        return "unknown"
    floats = {t for t in tensor_types if t in ("fp32", "fp64", *REDUCED_PRECISIONS)}
    for kind in (*REDUCED_PRECISIONS, "fp64"):
        if kind in floats:
            return kind
    return "fp32" if floats else "int"


@dataclass(frozen=True)
class NodePrecision:
    name: str
    op_type: str
    computes_in: str  # "fp32", "fp16", "bf16", "fp64", "int" (no float tensor) or "unknown"
    selector: bool  # not on the encoder side: does not feed a cast back to fp32


@dataclass(frozen=True)
class PrecisionPlan:
    nodes: tuple[NodePrecision, ...]
    casts_back: tuple[str, ...]  # the Cast nodes fp16/bf16 -> fp32 where the selector begins
    has_reduced: bool  # any fp16/bf16 tensor in the graph

    @property
    def held_fp32(self) -> frozenset[str]:
        """The nodes a strongly typed TensorRT network computes in fp32."""
        return frozenset(n.name for n in self.nodes if n.computes_in == "fp32")

    @property
    def selector_nodes(self) -> tuple[NodePrecision, ...]:
        return tuple(n for n in self.nodes if n.selector)

    def violations(self) -> list[str]:
        """Every selector node that would not compute in fp32, as 'name (op_type) computes in fp16'."""
        found = [
            f"{n.name} ({n.op_type}) computes in {n.computes_in}"
            for n in self.selector_nodes
            if n.computes_in not in ("fp32", "int")
        ]
        if self.has_reduced and not self.casts_back:
            found.append("the graph has fp16/bf16 tensors but no Cast back to fp32: the selector would run reduced")
        return found

    def summary(self) -> str:
        counts = Counter(n.computes_in for n in self.nodes)
        selector = Counter(n.computes_in for n in self.selector_nodes)
        overall = ", ".join(f"{counts[k]} {k}" for k in sorted(counts))
        inside = ", ".join(f"{selector[k]} {k}" for k in sorted(selector)) or "none"
        return (
            f"{len(self.nodes)} nodes ({overall}); selector (after {plural(len(self.casts_back), 'cast')} back to fp32): {inside}"
        )

    def check(self, source) -> None:
        """Raise one line naming the first offending nodes when a selector node is not fp32."""
        bad = self.violations()
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise FlashVLMError(
                f"{source}: the selector must compute in fp32 but {'; '.join(bad[:3])}{more}; "
                "re-export it with flashvlm-export (the selector is cast back to fp32 after the encoder)"
            )


def _onnx_types():
    from onnx import TensorProto

    return {
        TensorProto.FLOAT: "fp32",
        TensorProto.FLOAT16: "fp16",
        TensorProto.BFLOAT16: "bf16",
        TensorProto.DOUBLE: "fp64",
    }


def tensor_types(model) -> dict[str, str]:
    """Every named tensor's element type after ONNX shape inference ("fp32", "fp16", ..., or "int64"-like names)."""
    import onnx

    floats = _onnx_types()
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types: dict[str, str] = {}

    def name_of(elem_type: int) -> str:
        return floats.get(elem_type) or onnx.TensorProto.DataType.Name(elem_type).lower()

    for value in (*graph.input, *graph.value_info, *graph.output):
        elem = value.type.tensor_type.elem_type
        if elem:
            types[value.name] = name_of(elem)
    for init in graph.initializer:
        types[init.name] = name_of(init.data_type)
    return types


def precision_plan(model) -> PrecisionPlan:
    """Classify every node of an ONNX model (a ModelProto) by the float type it computes in."""
    floats = _onnx_types()
    types = tensor_types(model)
    nodes = list(model.graph.node)

    candidates = set()
    for index, node in enumerate(nodes):
        if node.op_type == "Cast" and node.input and types.get(node.input[0]) in REDUCED_PRECISIONS:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if floats.get(to) == "fp32":
                candidates.add(index)
    named = [index for index, node in enumerate(nodes) if any(o in ENCODER_OUTPUTS for o in node.output)]
    if named:
        # The graph names the encoder's outputs X, a, P(X) (and Qwen3-VL's deepstack_features, whose mergers feed
        # none of the other three; export/interface.py ENCODER_OUTPUTS): their producers end the encoder,
        # whatever round trips to fp32 the encoder makes inside (Qwen2.5-VL rotates and softmaxes in fp32).
        ends = named
    else:
        # Otherwise the encoder's casts back are the first ones: a cast back downstream of another one is a round
        # trip inside the selector (and its nodes are selector nodes computing in a reduced type).
        after_cast_back: set[str] = set()
        ends = []
        for index, node in enumerate(nodes):  # ONNX nodes are topologically sorted
            downstream = any(i in after_cast_back for i in node.input if i)
            if index in candidates and not downstream:
                ends.append(index)
            if downstream or index in candidates:
                after_cast_back.update(o for o in node.output if o)
    casts_back = [nodes[index] for index in ends if index in candidates]

    producer = {out: index for index, node in enumerate(nodes) for out in node.output if out}
    encoder = set()  # the encoder's ends and every node that feeds one: the reduced-precision encoder side
    stack = list(ends)
    while stack:
        index = stack.pop()
        if index not in encoder:
            encoder.add(index)
            stack.extend(producer[i] for i in nodes[index].input if i in producer)

    classified = tuple(
        NodePrecision(
            name=node.name or node.output[0],
            op_type=node.op_type,
            computes_in=compute_type([types.get(t) for t in (*node.input, *node.output) if t]),
            selector=index not in encoder,
        )
        for index, node in enumerate(nodes)
    )
    return PrecisionPlan(
        nodes=classified,
        casts_back=tuple(c.name or c.output[0] for c in casts_back),
        has_reduced=any(t in REDUCED_PRECISIONS for t in types.values()),
    )
