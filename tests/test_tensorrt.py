"""TensorRT engines and reduced precision.

Engine tests need TensorRT and an NVIDIA GPU and skip, with the reason, where either is absent
(CI, the 2-core machines). Nothing here fakes TensorRT. What runs everywhere: the missing-TensorRT
error path and the fp16 encoder's accuracy against fp32 in ONNX Runtime (CPU).
"""

import importlib.util
import shutil

import numpy as np
import onnx
import pytest
import torch

from flashvlm_export.cli import main
from flashvlm_export.export.graphs import ExportRequest
from flashvlm_export.export.onnx_export import GraphIO, export_onnx
from flashvlm_export.models.vision import FlashVLMPipeline
from flashvlm_export.parity.corpus import PIPELINE_INPUTS, Geometry, pipeline_corpus
from flashvlm_export.selector import SelectorConfig, StaticSelector

from conftest import TINY

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = torch.cuda.is_available() or shutil.which("nvidia-smi") is not None
needs_trt_gpu = pytest.mark.skipif(not (HAVE_TRT and HAVE_GPU), reason="needs TensorRT and an NVIDIA GPU (absent here)")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: the missing-TensorRT message cannot be shown")
def test_engine_without_tensorrt_is_a_one_line_error_before_any_export(tmp_path, capsys):
    code = main(["--model", "llava15-tiny", "--random-weights", "--engine", "--out-dir", str(tmp_path / "g")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "TensorRT is not installed" in err[0] and ("NVIDIA's package index" in err[0] or "JetPack" in err[0])
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())


def test_parity_against_a_missing_engine_is_a_one_line_error(tmp_path, capsys):
    assert main(["parity", "--engine", str(tmp_path / "none.plan")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fp16_features_graph(tiny_parts, tmp_path_factory):
    request = ExportRequest(
        spec=TINY, budget=64, t_max=TINY.t_max, batch=1, config=SelectorConfig(), selector_only=False, precision="fp16"
    )
    pipeline = request.module(tiny_parts)
    pipeline = FlashVLMPipeline(pipeline.vision, pipeline.projector, StaticSelector(576, 64), True, torch.float16)
    outputs = ("indices", "visual_embeds", "vision_features", "cls_attention", "projected_features")
    path = tmp_path_factory.mktemp("fp16") / "tiny_fp16_features.onnx"
    return export_onnx(
        pipeline, GraphIO(PIPELINE_INPUTS, outputs, request.graph_io().example_inputs), path, request.metadata("random:0")
    )


def test_fp16_graph_casts_the_encoder_and_keeps_the_selector_fp32(fp16_features_graph):
    model = onnx.load(str(fp16_features_graph))
    casts = [next(a.i for a in n.attribute if a.name == "to") for n in model.graph.node if n.op_type == "Cast"]
    assert onnx.TensorProto.FLOAT16 in casts and onnx.TensorProto.FLOAT in casts
    assert "LayerNormalization" in {n.op_type for n in model.graph.node}  # one op: no fp16 mean/var overflow path
    assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in model.graph.input)
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs["vision_features"] == outputs["projected_features"] == onnx.TensorProto.FLOAT


def test_fp16_encoder_outputs_track_fp32_in_onnxruntime(fp16_features_graph, tiny_parts):
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp16_features_graph), providers=["CPUExecutionProvider"])
    vision = tiny_parts.vision_features()
    for case in pipeline_corpus(Geometry(576, TINY.vision_hidden, TINY.text_hidden, TINY.t_max, 1), 336, repeats=1):
        _, _, x16, a16, p16 = session.run(None, case.feeds)
        with torch.no_grad():
            x, a = vision(torch.from_numpy(case.feeds["pixel_values"]))
            p = tiny_parts.projector(x)
        for got, want in ((x16, x), (a16, a), (p16, p)):
            want = want.numpy()
            assert np.isfinite(got).all()  # no fp16 overflow in LayerNorm / softmax
            assert np.abs(got - want).max() <= 2e-2 * max(1.0, np.abs(want).max()), case.name


def export_with_engine(tmp_path, *flags) -> int:
    return main(["--model", "llava15-tiny", *flags, "--out-dir", str(tmp_path), "--engine", "--engine-dir", str(tmp_path)])


@needs_trt_gpu
def test_fp32_engine_matches_reference_and_records_its_build(tmp_path):
    from flashvlm_export.artifacts import read_sidecar

    assert export_with_engine(tmp_path, "--random-weights", "--budget", "64") == 0
    engine = tmp_path / "llava15-tiny_b64.plan"
    record = read_sidecar(engine)
    assert record["budget"] == 64 and record["precision"] == "fp32" and len(record["onnx_sha256"]) == 64
    assert (tmp_path / "timing.cache").is_file()
    assert main(["parity", "--engine", str(engine), "--repeats", "1", "--save-dir", str(tmp_path / "p")]) == 0


@needs_trt_gpu
def test_engine_runner_refuses_a_budget_other_than_the_engine_keeps(tmp_path):
    from flashvlm_export.errors import UsageError
    from flashvlm_export.trt.runner import EngineRunner

    assert export_with_engine(tmp_path, "--selector-only", "--budget", "32") == 0
    with pytest.raises(UsageError, match="K=32"):
        EngineRunner(tmp_path / "llava15-tiny_selector_b32.plan", expect_budget=64)
