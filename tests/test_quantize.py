"""INT8 and FP8 encoders (issue 34): Q/DQ nodes in the encoder only, calibrated on pictures, parity in three layers.

The tiny models' graphs are exported once per test run (TorchScript, 8 demo pictures) and shared. What this does not
prove: speed (a benchmark's job, docs/QUANTIZATION.md) or that TensorRT builds these graphs (no TensorRT here).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_hardening import expect_error

from flashvlm_export.cli import main
from flashvlm_export.export.interface import ENCODER_OUTPUTS
from flashvlm_export.export.quantize import encoder_nodes

from conftest import shared_folder

TINY = ["--random-weights", "--exporter", "torchscript", "--calib-demo", "8"]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    def build(folder):
        for argv in (
            ["--model", "llava15-tiny", "--budget", "560", "--precision", "int8"],
            ["--model", "llava15-tiny", "--budget-range", "528..560", "--precision", "int8"],
            ["--model", "qwen2.5-vl-tiny", "--budget", "240,224", "--precision", "int8"],
            ["--model", "llava15-tiny", "--budget", "560", "--precision", "fp8"],
        ):
            assert main([*argv, *TINY, "--out-dir", str(folder)]) == 0

    return shared_folder(tmp_path_factory, "quantized_graphs", build)


def parity(*argv) -> int:
    return main(["parity", *argv, "--random-weights", "--repeats", "1", "--no-save"])


@pytest.mark.parametrize("name", ["llava15-tiny_b560_int8.onnx", "llava15-tiny_b528-560_int8.onnx", "llava15-tiny_b560_fp8.onnx"])
def test_a_quantized_full_graph_passes_parity(graphs, name):
    assert parity("--graph", str(graphs / name)) == 0


def test_an_int8_split_passes_parity_at_each_budget(graphs):
    assert parity("--manifest", str(graphs / "qwen2.5-vl-tiny_int8_split" / "manifest.json")) == 0


def test_only_the_encoder_holds_q_dq_nodes_and_the_selector_reads_float(graphs):
    """Every Q/DQ node lies before the encoder's outputs X, a, P(X); no node after them reads a dequantized copy."""
    model = onnx.load(str(graphs / "llava15-tiny_b560_int8.onnx"))
    inside = encoder_nodes(model, ENCODER_OUTPUTS)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(n.name in inside for n in qdq)
    dequantized = {o for n in qdq if n.op_type == "DequantizeLinear" for o in n.output}
    selector = [n for n in model.graph.node if n.name not in inside]
    assert selector and not any(i in dequantized for n in selector for i in n.input)
    weights = {i.name: i for i in model.graph.initializer}
    quantized = [weights[n.input[0]] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert quantized and all(w.data_type == onnx.TensorProto.INT8 for w in quantized)  # weights stored as int8


def test_no_int32_bias_and_a_splits_outputs_stay_float(graphs):
    """onnx-tensorrt dequantizes INT8 and FP8 only: every dequantized initializer is int8; a split encoder's X, a, P(X)
    (what its selectors read) are float tensors, not a dequantized copy."""
    for path in (graphs / "llava15-tiny_b560_int8.onnx", graphs / "qwen2.5-vl-tiny_int8_split" / "encoder.onnx"):
        model = onnx.load(str(path))
        producer = {o: n for n in model.graph.node for o in n.output}
        weights = {i.name: i for i in model.graph.initializer}
        dq_types = {
            weights[n.input[0]].data_type for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
        }
        assert dq_types == {onnx.TensorProto.INT8}, dq_types
        for output in model.graph.output:
            if output.name in ENCODER_OUTPUTS:
                assert producer[output.name].op_type != "DequantizeLinear", output.name


def test_the_graph_and_its_sidecar_record_the_precision_and_calibration_set(graphs):
    meta = {
        p.key: p.value for p in onnx.load(str(graphs / "llava15-tiny_b560_int8.onnx"), load_external_data=False).metadata_props
    }
    sidecar = json.loads((graphs / "llava15-tiny_b560_int8.json").read_text())
    for record in (meta, sidecar):
        assert str(record["precision"]) == "int8" and str(record["calib_images"]) == "8"
        assert len(record["calib_sha256"]) == 64 and "not representative" in record["calib_demo"]


def test_a_zero_scale_in_one_q_node_fails_parity(graphs, tmp_path):
    model = onnx.load(str(graphs / "llava15-tiny_b560_int8.onnx"))
    weights = {i.name: i for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in weights)
    scale = weights[q.input[1]]
    scale.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(scale)), scale.name))
    broken = tmp_path / "llava15-tiny_b560_int8.onnx"
    onnx.save(model, str(broken))
    assert parity("--graph", str(broken)) == 1


def test_a_second_export_with_the_same_pictures_reuses_the_calibration(graphs, tmp_path, capsys):
    """The cache the first export wrote (same encoder: another budget) is read, not measured again."""
    folder = tmp_path / "g"
    folder.mkdir()
    shutil.copy(graphs / "llava15-tiny_int8.calib.json", folder / "llava15-tiny_int8.calib.json")
    assert main(["--model", "llava15-tiny", "--budget", "544", "--precision", "int8", *TINY, "--out-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "Calibration: 8/8" not in out


def test_a_calibration_cache_from_another_graph_is_refused_and_nothing_written(graphs, tmp_path, capsys):
    folder = tmp_path / "g"
    folder.mkdir()
    qwen_cache = graphs / "qwen2.5-vl-tiny_int8_split" / "encoder.calib.json"
    shutil.copy(qwen_cache, folder / "llava15-tiny_int8.calib.json")
    argv = ["--model", "llava15-tiny", "--budget", "544", "--precision", "int8", *TINY, "--out-dir", str(folder)]
    expect_error(capsys, argv, "calibration cache of another graph", "model")
    assert sorted(p.name for p in folder.iterdir()) == ["llava15-tiny_int8.calib.json"]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--precision", "int8"], ["--precision int8 needs calibration pictures", "--calib-images DIR", "--calib-demo N"]),
        (["--precision", "int8", "--calib-images", "EMPTY"], ["holds no pictures"]),
        (["--precision", "int8", "--calib-images", "MISSING"], ["is not a folder"]),
        (["--calib-images", "EMPTY"], ["--calib-images calibrates a quantized encoder", "--precision fp32"]),
        (["--precision", "int8", "--calib-demo", "0"], ["--calib-demo 0 is out of range"]),
        (["--precision", "int8", "--calib-demo", "4", "--calib-images", "EMPTY"], ["one of the two"]),
    ],
)
def test_bad_calibration_input_is_one_line_exit_2_and_nothing_written(capsys, tmp_path, extra, fragments):
    (tmp_path / "empty").mkdir()
    extra = [str(tmp_path / "empty") if a == "EMPTY" else str(tmp_path / "missing") if a == "MISSING" else a for a in extra]
    out = tmp_path / "o"
    expect_error(
        capsys, ["--model", "llava15-tiny", "--budget", "64", "--random-weights", "--out-dir", str(out), *extra], *fragments
    )
    assert not out.exists()


@pytest.mark.parametrize(("gpu", "refused"), [("8.7", True), ("8.0", True), ("8.9", False), ("9.0", False), ("11.0", False)])
def test_an_fp8_engine_is_refused_on_a_gpu_without_fp8_in_one_line(gpu, refused):
    """The check before TensorRT (trt/build.py) on stand-in GPU facts: Orin (8.7) and A100 (8.0) have no FP8; Ada,
    Hopper and Thor do. What it does not prove: TensorRT's own behaviour on those GPUs (none here)."""
    from flashvlm_export.device import GpuInfo
    from flashvlm_export.errors import UsageError
    from flashvlm_export.trt.build import check_fp8_support

    check_fp8_support("int8", GpuInfo("Orin", "8.7"))  # int8 is every GPU's
    if not refused:
        check_fp8_support("fp8", GpuInfo("GPU", gpu))
        return
    with pytest.raises(UsageError, match="--precision int8") as info:
        check_fp8_support("fp8", GpuInfo("GPU", gpu))
    assert "\n" not in str(info.value)


def test_an_encoder_too_large_to_quantize_here_is_refused_in_one_line_before_onnx_runtime(monkeypatch, tmp_path, capsys):
    """The memory check (limits.py) with a planted factor that puts the need past this machine: one line, exit 2,
    nothing written (what the factor is for: qwen2.5-vl-7b's encoder was killed for memory on 24 GB)."""
    import flashvlm_export.limits as limits

    monkeypatch.setattr(limits, "QUANTIZE_MEMORY_FACTOR", 10**9)
    out = tmp_path / "o"
    argv = ["--model", "llava15-tiny", "--budget", "64", "--precision", "int8", *TINY, "--out-dir", str(out)]
    expect_error(capsys, argv, "--precision int8 for llava15-tiny needs about", "more than this machine's")
    assert not out.exists() or not any(out.iterdir())
