"""TensorRT engines and reduced precision.

Engine tests need TensorRT and an NVIDIA GPU and skip, with the reason, where either is absent
(CI, the 2-core machines). Nothing here fakes TensorRT. What runs everywhere: the missing-TensorRT
error paths, the fp16 encoder's accuracy against fp32 in ONNX Runtime (CPU), the `sidecar` command's
checks before TensorRT, the sidecar record, the runner's checks before TensorRT, and the choice of
network flags and CUDA arch (on stand-ins for the bindings' enum and the driver: our logic only).
"""

import hashlib
import importlib.util
import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from flashvlm_export.cli import main
from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.parity.corpus import Geometry, pipeline_corpus
from flashvlm_export.selector import SelectorConfig

from ci_skips import unavailable_here
from conftest import TINY

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = torch.cuda.is_available() or shutil.which("nvidia-smi") is not None
needs_trt_gpu = pytest.mark.skipif(not (HAVE_TRT and HAVE_GPU), reason=unavailable_here("needs TensorRT and an NVIDIA GPU"))


@pytest.mark.skipif(HAVE_TRT, reason=unavailable_here("TensorRT is installed: the missing-TensorRT message cannot be shown"))
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
    """The verification build of a tiny fp16 graph: X, a and P(X) exposed beside the outputs."""
    from flashvlm_export.export.verification import add_verification_outputs

    request = ExportRequest(
        spec=TINY, budget=64, t_max=TINY.t_max, batch=1, config=SelectorConfig(), selector_only=False, precision="fp16"
    )
    folder = tmp_path_factory.mktemp("fp16")
    shipped = export_graph(request, folder / "tiny_fp16.onnx", tiny_parts, "random:0", exporter="torchscript")
    path = folder / "tiny_fp16_verify.onnx"
    onnx.save(add_verification_outputs(onnx.load(str(shipped)), request.interface(), str(shipped)), str(path))
    return path


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
        x16, a16, p16 = session.run(["vision_features", "cls_attention", "projected_features"], case.feeds)
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
    from flashvlm_export.artifacts.sidecar import read_sidecar

    assert export_with_engine(tmp_path, "--random-weights", "--budget", "64") == 0
    engine = tmp_path / "llava15-tiny_b64.plan"
    record = read_sidecar(engine)
    assert record["budget"] == 64 and record["precision"] == "fp32" and len(record["onnx_sha256"]) == 64
    assert record["built_by"] == "flashvlm-export" and record["precision_path"].startswith("strongly typed")
    assert (tmp_path / "timing.cache").is_file()
    assert main(["parity", "--engine", str(engine), "--repeats", "1", "--save-dir", str(tmp_path / "p")]) == 0


@needs_trt_gpu
def test_engine_runner_refuses_a_budget_other_than_the_engine_keeps(tmp_path):
    from flashvlm_export.errors import UsageError
    from flashvlm_export.trt.runner import EngineRunner

    assert export_with_engine(tmp_path, "--selector-only", "--budget", "32") == 0
    with pytest.raises(UsageError, match="K=32"):
        EngineRunner(tmp_path / "llava15-tiny_selector_b32.plan", expect_budget=64)


@needs_trt_gpu
def test_a_recorded_engine_without_its_build_sidecar_passes_parity(tmp_path):
    """Stands in for a trtexec engine: the sidecar command rewrites the record from the engine and graph."""
    assert export_with_engine(tmp_path, "--selector-only", "--budget", "32") == 0
    engine = tmp_path / "llava15-tiny_selector_b32.plan"
    (tmp_path / "llava15-tiny_selector_b32.json").unlink()
    graph = tmp_path / "llava15-tiny_selector_b32.onnx"
    assert main(["sidecar", "--engine", str(engine), "--onnx", str(graph)]) == 0
    assert main(["parity", "--engine", str(engine), "--repeats", "1", "--save-dir", str(tmp_path / "p")]) == 0


# ---------------------------------------------------------------- what runs without TensorRT


@pytest.fixture(scope="module")
def tiny_selector_graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("selector")
    argv = ["--model", "llava15-tiny", "--selector-only", "--budget", "32", "--out-dir", str(folder), "--exporter", "torchscript"]
    assert main(argv) == 0  # TorchScript: several times faster at 70 rounds; dynamo: tests/test_exporters.py
    return folder / "llava15-tiny_selector_b32.onnx"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_sidecar_needs_both_the_engine_and_the_graph(capsys):
    assert main(["sidecar", "--engine", "x.plan"]) == 2
    assert "--onnx" in one_line_error(capsys)


@pytest.mark.parametrize(
    "engine_name, graph_name, message",
    [
        ("missing.plan", "graph", "does not exist; build it first"),
        ("engine.bin", "graph", "must end in .plan"),
        ("engine.plan", "missing.onnx", "graph .*missing.onnx does not exist"),
        ("engine.plan", "not_onnx", "is not an ONNX graph"),
    ],
)
def test_sidecar_bad_files_are_one_line_errors(tmp_path, tiny_selector_graph, capsys, engine_name, graph_name, message):
    for name in ("engine.plan", "engine.bin"):
        (tmp_path / name).write_bytes(b"engine bytes")
    (tmp_path / "not_onnx").write_text("not a graph")
    graph = tiny_selector_graph if graph_name == "graph" else tmp_path / graph_name
    assert main(["sidecar", "--engine", str(tmp_path / engine_name), "--onnx", str(graph)]) == 2
    assert re.search(message, one_line_error(capsys))
    assert not list(tmp_path.glob("*.json"))


def test_sidecar_refuses_a_graph_without_flashvlm_metadata(tmp_path, tiny_selector_graph, capsys):
    model = onnx.load(str(tiny_selector_graph))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    (tmp_path / "engine.plan").write_bytes(b"engine bytes")
    assert main(["sidecar", "--engine", str(tmp_path / "engine.plan"), "--onnx", str(tmp_path / "bare.onnx")]) == 2
    assert "lacks flashvlm metadata" in one_line_error(capsys)


def test_sidecar_does_not_overwrite_without_force(tmp_path, tiny_selector_graph, capsys):
    (tmp_path / "engine.plan").write_bytes(b"engine bytes")
    (tmp_path / "engine.json").write_text("{}")
    assert main(["sidecar", "--engine", str(tmp_path / "engine.plan"), "--onnx", str(tiny_selector_graph)]) == 2
    assert "--force" in one_line_error(capsys) and (tmp_path / "engine.json").read_text() == "{}"


@pytest.mark.skipif(HAVE_TRT, reason=unavailable_here("TensorRT is installed: the missing-TensorRT message cannot be shown"))
def test_sidecar_without_tensorrt_is_a_one_line_error_after_the_file_checks(tmp_path, tiny_selector_graph, capsys):
    (tmp_path / "engine.plan").write_bytes(b"engine bytes")
    argv = ["sidecar", "--engine", str(tmp_path / "engine.plan"), "--onnx", str(tiny_selector_graph), "--force"]
    assert main(argv) == 2
    assert "TensorRT is not installed" in one_line_error(capsys) and not (tmp_path / "engine.json").exists()


def test_engine_record_from_explicit_values(tmp_path, tiny_selector_graph):
    from flashvlm_export.export.metadata import graph_metadata
    from flashvlm_export.plugin import PLUGIN_ID
    from flashvlm_export.trt.sidecar import engine_record

    engine, library = tmp_path / "e.plan", tmp_path / "libflashvlm_plugins.so"
    engine.write_bytes(b"engine bytes")
    library.write_bytes(b"library bytes")
    meta = graph_metadata(tiny_selector_graph)
    common = dict(
        engine_path=engine,
        onnx_path=tiny_selector_graph,
        graph_meta=meta,
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision_path="strongly typed",
    )
    record = engine_record(**common, plugin_library=None, built_by="trtexec", build_seconds=None)
    assert record["engine_sha256"] == hashlib.sha256(b"engine bytes").hexdigest()
    assert record["onnx_sha256"] == hashlib.sha256(tiny_selector_graph.read_bytes()).hexdigest()
    assert (record["budget"], record["batch"], record["precision"], record["graph_kind"]) == (32, 1, "fp32", "selector")
    assert (record["tensorrt_version"], record["gpu"], record["compute_capability"]) == ("10.3.0", "Orin", "8.7")
    assert record["plugin"] is False and record["plugin_version"] is None and record["build_seconds"] is None
    assert record["built_by"] == "trtexec" and record["onnx_metadata"] == meta
    with_plugin = engine_record(**common, plugin_library=library, built_by="flashvlm-export", build_seconds=12.34)
    assert with_plugin["plugin"] is True and with_plugin["plugin_version"] == PLUGIN_ID
    assert with_plugin["plugin_library_sha256"] == hashlib.sha256(b"library bytes").hexdigest()
    assert with_plugin["build_seconds"] == 12.3


def test_io_mismatch_names_what_differs():
    from flashvlm_export.trt.sidecar import io_mismatch

    assert io_mismatch({"a", "indices"}, {"indices", "a"}) is None
    assert "['b'] which the engine lacks" in io_mismatch({"a"}, {"a", "b"})
    assert "['c'] which the graph lacks" in io_mismatch({"a", "c"}, {"a"})


def test_runner_refuses_an_engine_its_sidecar_does_not_describe(tmp_path):
    from flashvlm_export.errors import UsageError
    from flashvlm_export.trt.runner import EngineRunner

    engine = tmp_path / "e.plan"
    engine.write_bytes(b"rebuilt engine")
    with pytest.raises(UsageError, match="flashvlm-export sidecar --engine"):
        EngineRunner(engine)
    from flashvlm_export.trt.runner import SIDECAR_KEYS

    record = {key: "stand-in" for key in SIDECAR_KEYS}  # complete, but for another engine's bytes
    record["engine_sha256"] = hashlib.sha256(b"old engine").hexdigest()
    (tmp_path / "e.json").write_text(json.dumps(record))
    with pytest.raises(UsageError, match="sha256 differs"):
        EngineRunner(engine)


def test_strongly_typed_flags_read_with_getattr():
    """A stand-in for the bindings' enum: proves our choice of flags, not TensorRT's behaviour."""
    from flashvlm_export.errors import MissingDependencyError
    from flashvlm_export.trt.build import strongly_typed_flags

    def bindings(version, **flags):
        return SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=SimpleNamespace(**flags))

    assert strongly_typed_flags(bindings("10.3.0", STRONGLY_TYPED=1)) == 1 << 1  # kSTRONGLY_TYPED = 1 on 10.3
    assert strongly_typed_flags(bindings("11.1.0", STRONGLY_TYPED=0)) == 1 << 0  # deprecated, ignored on 11.1
    assert strongly_typed_flags(bindings("12.0.0")) == 0  # removed: strongly typed is the only mode
    with pytest.raises(MissingDependencyError, match="TensorRT 10 or newer"):
        strongly_typed_flags(bindings("8.6.1"))


def test_gpu_arch_is_the_compute_capability_without_the_dot():
    from flashvlm_export.device import GpuInfo

    assert GpuInfo("Orin", "8.7").cuda_arch == "87" and GpuInfo("Thor", "11.0").cuda_arch == "110"


def test_build_plugin_arch_follows_the_gpu_and_aarch64_without_one_must_choose(monkeypatch):
    from flashvlm_export import device
    from flashvlm_export.errors import MissingDependencyError, UsageError
    from flashvlm_export.plugin import build

    monkeypatch.setattr(device, "gpu_info", lambda: device.GpuInfo("NVIDIA Jetson AGX Thor", "11.0"))
    monkeypatch.setattr(build.platform, "machine", lambda: "aarch64")
    arch, why = build.default_cuda_arch()
    assert arch == "110" and "Thor" in why

    def no_gpu():
        raise MissingDependencyError("no CUDA driver")

    monkeypatch.setattr(device, "gpu_info", no_gpu)
    with pytest.raises(UsageError, match="--cuda-arch 87 .*--cuda-arch 110"):
        build.default_cuda_arch()
    monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
    arch, why = build.default_cuda_arch()
    assert arch == build.X86_FALLBACK_ARCHS and "no GPU readable" in why
