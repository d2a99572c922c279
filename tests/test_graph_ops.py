"""Every kind of exported selector graph is free of what TensorRT 10.3 builds as a loop or cannot compare.

Issue 31 items 18 and 19: no CumSum (or any op TensorRT 10.3's ONNX parser builds as an ILoop) and no Equal
(or other comparison) on booleans, in the fixed, budget-range, LLaVA-NeXT crops and joint clip graphs, from
both exporters. Read off the ONNX files with ONNX's own shape inference, not with export/graph_check.py (which
the export already ran); budgets near N keep each graph at a round or two, so an export takes seconds. That the
graphs still select the reference's tokens is parity's (test_selector.py, test_onnx_selector.py, test_budget_range.py).
"""

import onnx
import pytest
from onnx import TensorProto

from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.models.registry import get_spec
from flashvlm_export.selector.config import SelectorConfig

LOOPS = {"CumSum", "Loop", "Scan", "RNN", "GRU", "LSTM"}  # onnx-tensorrt 10.1-GA onnxOpImporters.cpp: addLoop
COMPARISONS = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"}
NUMBERS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32, TensorProto.INT64}

KINDS = {  # (model, budget, n_tokens, budget_min, frames, video_budget): one round or two each
    "fixed": ("llava15-tiny", 56, 64, None, None, "per-group"),
    "range": ("llava15-tiny", 56, 64, 48, None, "per-group"),
    "crops": ("llava-next-tiny", 5 * 560, None, None, None, "per-group"),
    "joint": ("qwen2.5-vl-tiny", 496, None, None, 4, "joint"),
}


@pytest.fixture(scope="module", params=[(k, e) for k in KINDS for e in ("dynamo", "torchscript")], ids="-".join)
def graph(request, tmp_path_factory):
    kind, exporter = request.param
    model, budget, n_tokens, budget_min, frames, rule = KINDS[kind]
    spec = get_spec(model)
    req = ExportRequest(
        spec=spec,
        budget=budget,
        budget_min=budget_min,
        t_max=16,
        batch=1,
        config=SelectorConfig(),
        selector_only=True,
        n_tokens=n_tokens,
        frames=frames,
        video_budget=rule,
    )
    return export_graph(req, tmp_path_factory.mktemp(kind) / f"{kind}_{exporter}.onnx", exporter=exporter)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    return types | {i.name: i.data_type for i in g.initializer}


def test_no_op_tensorrt_10_3_builds_as_a_loop(graph):
    model = onnx.load(str(graph))
    assert not LOOPS & {n.op_type for n in model.graph.node}
    assert any(n.op_type == "MatMul" for n in model.graph.node)  # the running count of the stable order (selector/static.py)


def test_every_comparison_compares_numbers(graph):
    model = onnx.load(str(graph))
    types = _types(model)
    compared = [(n.op_type, n.name, types.get(i)) for n in model.graph.node if n.op_type in COMPARISONS for i in n.input]
    assert compared  # the stable order's value changes are an Equal on float32
    assert [c for c in compared if c[2] not in NUMBERS] == []
