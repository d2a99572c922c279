"""share_weights on three tiny graphs of one "model" at three input shapes: a shared 64x64 weight (under other names
and in another storage field in one graph), a shape-specific positional table, and a bias under min_bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from flashvlm_export.artifacts.shared_weights import ALIGN, share_weights

RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((64, 64)).astype(np.float32)  # 16 KiB, the same in every graph
BIAS = RNG.standard_normal(64).astype(np.float32)  # 256 bytes: under min_bytes, stays inline
SHAPES = {"a": 16, "b": 24, "c": 32}  # tokens per graph: the positional table is 4, 6 and 8 KiB


def _graph(tokens: int, weight_name: str, typed: bool) -> onnx.ModelProto:
    pos = RNG.standard_normal((tokens, 64)).astype(np.float32)
    weight = (
        helper.make_tensor(weight_name, TensorProto.FLOAT, WEIGHT.shape, WEIGHT.ravel().tolist())  # float_data
        if typed
        else numpy_helper.from_array(WEIGHT, weight_name)  # raw_data
    )
    nodes = [
        helper.make_node("MatMul", ["x", weight_name], ["h"]),
        helper.make_node("Add", ["h", "pos"], ["p"]),
        helper.make_node("Add", ["p", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"encoder_{tokens}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, 64])],
        [weight, numpy_helper.from_array(pos, "pos"), numpy_helper.from_array(BIAS, "bias")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.fixture
def split(tmp_path: Path) -> dict[str, Path]:
    """a.onnx inline; b.onnx inline, the weight renamed and in float_data; c.onnx all in its own c.onnx.data."""
    onnx.save_model(_graph(SHAPES["a"], "encoder.proj.weight", typed=False), tmp_path / "a.onnx")
    onnx.save_model(_graph(SHAPES["b"], "onnx::MatMul_17", typed=True), tmp_path / "b.onnx")
    onnx.save_model(
        _graph(SHAPES["c"], "encoder.proj.weight", typed=False),
        tmp_path / "c.onnx",
        save_as_external_data=True,
        location="c.onnx.data",
        size_threshold=0,  # the bias too: it must come back inline before c.onnx.data is deleted
    )
    assert (tmp_path / "c.onnx.data").exists()
    return {name: tmp_path / f"{name}.onnx" for name in SHAPES}


def _run(path: Path, tokens: int) -> np.ndarray:
    x = np.linspace(-1, 1, tokens * 64, dtype=np.float32).reshape(1, tokens, 64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_one_copy_of_each_weight_same_outputs(split: dict[str, Path]) -> None:
    before = {name: _run(path, SHAPES[name]) for name, path in split.items()}
    data = split["a"].parent / "encoder.onnx.data"

    summary = share_weights(list(split.values()), data)

    distinct = WEIGHT.nbytes + sum(t * 64 * 4 for t in SHAPES.values())
    per_graph = sum(WEIGHT.nbytes + t * 64 * 4 for t in SHAPES.values())  # what three separate copies weigh
    assert summary["tensors"] == 4  # the weight once, three positional tables
    assert summary["references"] == 6  # the bias (256 bytes) was not moved
    assert summary["saved_bytes"] == 2 * WEIGHT.nbytes == per_graph - distinct
    assert summary["bytes"] == data.stat().st_size
    assert distinct <= summary["bytes"] < distinct + summary["tensors"] * ALIGN  # the content plus alignment padding
    assert summary["bytes"] < per_graph
    assert not (split["c"].parent / "c.onnx.data").exists()
    assert sorted(p.name for p in data.parent.iterdir()) == ["a.onnx", "b.onnx", "c.onnx", "encoder.onnx.data"]

    blob = data.read_bytes()
    weight_offsets = set()
    for name, path in split.items():
        onnx.checker.check_model(str(path))  # by path, so the external data is resolved and checked
        model = onnx.load(path, load_external_data=False)
        inits = {t.name: t for t in model.graph.initializer}
        assert inits["bias"].data_location == TensorProto.DEFAULT and inits["bias"].raw_data == BIAS.tobytes()
        for tensor_name in set(inits) - {"bias"}:
            tensor = inits[tensor_name]
            info = {e.key: e.value for e in tensor.external_data}
            assert tensor.data_location == TensorProto.EXTERNAL and not tensor.HasField("raw_data")
            assert info["location"] == "encoder.onnx.data" and int(info["offset"]) % ALIGN == 0
            if tensor_name != "pos":
                weight_offsets.add(info["offset"])
                start = int(info["offset"])
                assert blob[start : start + int(info["length"])] == WEIGHT.tobytes()
        # Exact equality: the same ops on the same inputs and weights, same CPU provider, same process.
        np.testing.assert_array_equal(_run(path, SHAPES[name]), before[name])
    assert len(weight_offsets) == 1  # three names, two storage fields, one copy


def test_existing_data_file_is_refused_and_nothing_is_touched(split: dict[str, Path]) -> None:
    data = split["a"].parent / "encoder.onnx.data"
    data.write_bytes(b"someone else's weights")
    folder = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.parent.iterdir()}

    with pytest.raises(FileExistsError, match="encoder.onnx.data"):
        share_weights(list(split.values()), data)

    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.parent.iterdir()} == folder


def test_failure_midway_leaves_the_graphs_and_no_data_file(split: dict[str, Path]) -> None:
    split["b"].write_bytes(b"not a protobuf")  # planted: the second graph does not load
    data = split["a"].parent / "encoder.onnx.data"
    folder = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.parent.iterdir()}

    with pytest.raises(Exception):  # noqa: B017 (whatever onnx raises for a broken file)
        share_weights(list(split.values()), data)

    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.parent.iterdir()} == folder


def test_graph_outside_the_data_folder_is_refused(split: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="not in the folder"):
        share_weights(list(split.values()), tmp_path / "other" / "encoder.onnx.data")
    assert not (tmp_path / "other" / "encoder.onnx.data").exists()
