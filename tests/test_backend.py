"""One backend interface (a name, infer(feeds) -> dict of arrays) and one ONNX Runtime session helper."""

import inspect

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from flashvlm_export.backend import CPU, Backend, ort_session
from flashvlm_export.errors import MissingDependencyError, UsageError
from flashvlm_export.export.interface import INDICES, VISUAL_EMBEDS


@pytest.fixture(scope="module")
def passthrough(tmp_path_factory):
    """A hand-built graph: indices and visual_embeds are its inputs i and x passed through."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["i"], [INDICES]), helper.make_node("Identity", ["x"], [VISUAL_EMBEDS])],
        "passthrough",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3]),
        ],
        [
            helper.make_tensor_value_info(INDICES, TensorProto.INT64, [1, 2]),
            helper.make_tensor_value_info(VISUAL_EMBEDS, TensorProto.FLOAT, [1, 2, 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path = tmp_path_factory.mktemp("backend") / "passthrough.onnx"
    onnx.save(model, str(path))
    return path


FEEDS = {"i": np.array([[3, 5]], dtype=np.int64), "x": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}


def test_onnx_runtime_graphs_are_backends(passthrough):
    from flashvlm_export.parity.backends import OnnxRuntime
    from flashvlm_export.runtime.session import OrtGraph

    for backend in (OrtGraph(passthrough, provider=CPU), OnnxRuntime(passthrough)):
        out = backend.infer(FEEDS)
        assert isinstance(backend, Backend) and isinstance(backend.name, str)
        assert np.array_equal(out[INDICES], FEEDS["i"])


def test_torch_backends_are_backends():
    from flashvlm_export.export.graphs import ExportRequest
    from flashvlm_export.models.registry import get_spec
    from flashvlm_export.parity.backends import SelectorReference, TorchModule
    from flashvlm_export.selector.config import SelectorConfig

    spec = get_spec("llava15-tiny")
    request = ExportRequest(spec=spec, budget=64, t_max=spec.t_max, batch=1, config=SelectorConfig(), selector_only=True)
    for backend in (SelectorReference(64, request.config), TorchModule(request.module(), request.interface())):
        assert isinstance(backend, Backend)


@pytest.mark.parametrize(
    "home, name",
    [
        ("flashvlm_export.trt.runner", "EngineRunner"),
        ("flashvlm_export.parity.engine", "EngineBackend"),
        ("flashvlm_export.runtime.chain", "BudgetBackend"),
    ],
)
def test_engines_and_chains_take_feeds_alone(home, name):
    """They need TensorRT or a manifest to build; their infer takes the feeds and nothing else, as Backend says."""
    import importlib

    cls = getattr(importlib.import_module(home), name)
    assert list(inspect.signature(cls.infer).parameters) == ["self", "feeds"]


def test_an_object_with_only_run_is_not_a_backend():
    class RunOnly:
        name = "old"

        def run(self, feeds):
            return {}

    assert not isinstance(RunOnly(), Backend)


def test_ort_session_caps_threads(passthrough):
    session = ort_session(passthrough, CPU, threads=1)
    assert session.get_session_options().intra_op_num_threads == 1


def test_ort_session_refuses_a_graph_it_cannot_run_in_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    # a well-formed graph (it passes artifact_paths' rule) whose only node is an op no ONNX Runtime knows
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    node = helper.make_node("NoSuchOp", ["x"], ["x2"], domain="org.flashvlm.missing")
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("org.flashvlm.missing", 1)])
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(MissingDependencyError, match=r"ONNX Runtime \(CPUExecutionProvider\) cannot run bad.onnx") as caught:
        ort_session(bad, CPU)
    assert len(str(caught.value).splitlines()) == 1


def test_an_unavailable_provider_is_named():
    from flashvlm_export.backend import ort_provider

    with pytest.raises(UsageError, match="NoSuchExecutionProvider is not available here"):
        ort_provider("NoSuchExecutionProvider")
