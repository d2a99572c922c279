"""ResidualPrune: the kernel's logic (its C++ CPU twin), the plugin graph in ONNX Runtime, the C++ build.

What needs TensorRT headers or a GPU skips with the reason; nothing here fakes TensorRT.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from flashvlm_export.errors import UsageError
from flashvlm_export.export.graph_check import static_graph_problems
from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.export.interface import SELECTOR_INPUTS
from flashvlm_export.parity.run import run_parity
from flashvlm_export.plugin.cpu import REJECTED_TOKEN, STATUS_TOKEN_OUT_OF_RANGE, count_rounds_cpu, residual_prune_cpu, run_twin
from flashvlm_export.selector import SelectorConfig, round_schedule
from flashvlm_export.selector.reference import pruning_inputs, residual_prune

from ci_skips import unavailable_here
from conftest import LLAVA15, corpus

ROOT = Path(__file__).resolve().parents[1]
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build the kernel's CPU twin")


def gram_and_residual(case, budget, config=SelectorConfig()):
    """The reference's own Gram matrix and residual list for each image of a corpus case."""
    f = [torch.from_numpy(case.feeds[name]) for name in SELECTOR_INPUTS]
    gram, residual = pruning_inputs(*f, budget, config)
    return gram, residual, round_schedule(f[0].shape[1], budget, config)


@needs_gxx
@pytest.mark.parametrize("budget", [2, 3, 15, 32, 64, 128, 192])
def test_kernel_cpu_twin_equals_reference_rounds(budget):
    for case in corpus(batch=2):
        gram, residual, schedule = gram_and_residual(case, budget)
        expected = torch.stack([residual_prune(g, r, schedule.k_div, schedule.step) for g, r in zip(gram, residual, strict=True)])
        got = residual_prune_cpu(gram.numpy(), residual.numpy(), schedule.k_div, schedule.step)
        assert np.array_equal(got, expected.numpy()), case.name  # same tokens, same list order


@needs_gxx
def test_kernel_cpu_twin_equals_reference_at_2880_tokens_with_a_round_cap():
    case = corpus(n_tokens=2880, repeats=1)[1]
    config = SelectorConfig(max_rounds=40)
    gram, residual, schedule = gram_and_residual(case, 640, config)
    expected = residual_prune(gram[0], residual[0], schedule.k_div, schedule.step)
    got = residual_prune_cpu(gram.numpy(), residual.numpy(), schedule.k_div, schedule.step)
    assert schedule.n_rounds <= 40 and np.array_equal(got[0], expected.numpy())


@needs_gxx
def test_kernel_round_count_equals_python_schedule():
    for n, budget, step in [(576, 128, 8), (576, 64, 8), (576, 32, 8), (576, 3, 8), (2880, 640, 8), (576, 128, 45), (100, 10, 1)]:
        schedule = round_schedule(n, budget, SelectorConfig(step=step))
        assert count_rounds_cpu(schedule.residual_size, schedule.k_div, schedule.step) == schedule.n_rounds


@needs_gxx
def test_kernel_breaks_ties_by_position_like_a_stable_sort():
    gram = np.ones((1, 40, 40), dtype=np.float32)  # every m ties: each round drops the first r of A
    residual = np.arange(40, dtype=np.int32)[None]
    expected = residual_prune(torch.from_numpy(gram[0]), torch.from_numpy(residual[0]).long(), 10, 8)
    assert np.array_equal(residual_prune_cpu(gram, residual, 10, 8)[0], expected.numpy())


@needs_gxx
def test_kernel_and_twin_share_one_round_body():
    """The twin and the kernel call the same pruneImage template; neither writes its own round loop.

    Textual, so it proves only that the sources are wired so (the GPU harness runs the kernel itself)."""
    csrc = ROOT / "flashvlm_export/plugin/csrc"
    for name in ("residualPruneCpu.cpp", "residualPruneKernel.cu"):
        text = (csrc / name).read_text()
        assert "pruneImage(" in text and "orderedBefore" not in text and "roundRemoval" not in text, name


@needs_gxx
@pytest.mark.parametrize("bad_id", [576, -1, 2**20])
def test_twin_catches_a_token_id_outside_the_gram(bad_id):
    """A planted id outside [0, N): the shared body flags the image, writes -1 to its kept row and
    reads nothing out of range; the other image of the batch is pruned as usual."""
    case = corpus(batch=2)[0]
    gram, residual, schedule = gram_and_residual(case, 64)
    planted = residual.numpy().astype(np.int32).copy()
    planted[1, 7] = bad_id
    status, kept = run_twin(gram.numpy(), planted, schedule.k_div, schedule.step)
    assert status == STATUS_TOKEN_OUT_OF_RANGE
    assert (kept[1] == REJECTED_TOKEN).all()
    expected = residual_prune(gram[0], residual[0], schedule.k_div, schedule.step)
    assert np.array_equal(kept[0], expected.numpy())  # same path as the corpus test: exact by construction
    with pytest.raises(UsageError, match=f"token id {bad_id} at residual\\[1, 7\\] is outside \\[0, 576\\)"):
        residual_prune_cpu(gram.numpy(), planted, schedule.k_div, schedule.step)


@needs_gxx
def test_twin_rejects_an_id_the_int32_cast_would_wrap_into_range():
    gram = np.ones((1, 40, 40), dtype=np.float32)
    residual = np.arange(40, dtype=np.int64)[None]
    residual[0, 3] = 2**32 + 5  # int32 cast: 5, a valid id
    with pytest.raises(UsageError, match="outside \\[0, 40\\)"):
        residual_prune_cpu(gram, residual, 10, 8)


@pytest.fixture(scope="module")
def plugin_selector_graph(tmp_path_factory):
    request = ExportRequest(
        spec=LLAVA15, budget=128, t_max=LLAVA15.t_max, batch=1, config=SelectorConfig(), selector_only=True, plugin=True
    )
    path = tmp_path_factory.mktemp("plugin") / "llava15_selector_b128_plugin.onnx"
    return export_graph(request, path)


def test_plugin_graph_has_one_residual_prune_node_with_parser_attributes(plugin_selector_graph):
    model = onnx.load(str(plugin_selector_graph))
    nodes = [n for n in model.graph.node if n.domain == "flashvlm"]
    assert [n.op_type for n in nodes] == ["ResidualPrune"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    schedule = round_schedule(576, 128)
    assert attrs == {"k_div": schedule.k_div, "step": schedule.step, "plugin_version": b"1", "plugin_namespace": b"flashvlm"}
    assert static_graph_problems(model) == []
    # the unrolled rounds' TopKs are gone: left are the partition's stable order (two), the top-p gate's and step 12's
    assert sum(n.op_type == "TopK" for n in model.graph.node) <= 4
    assert {o.domain for o in model.opset_import} >= {"", "flashvlm"}


def test_plugin_graph_in_onnxruntime_matches_reference(plugin_selector_graph):
    reports = run_parity(plugin_selector_graph, repeats=1, log=lambda _: None)
    assert reports[1].backend == "onnxruntime[CPU, plugin op]"
    for report in reports:
        assert report, "\n".join(report.lines())


def test_plugin_graph_in_openvino_passes_parity(plugin_selector_graph):
    """OpenVINO given the plugin op (plugin/openvino_op.py, issue 35): the whole plugin graph passes layers 1 and 2."""
    pytest.importorskip("openvino", reason="OpenVINO Runtime is not installed (pip install openvino)")
    from flashvlm_export.backend import OPENVINO

    reports = run_parity(plugin_selector_graph, repeats=1, log=lambda _: None, provider=OPENVINO)
    assert reports[1].backend == "openvino[CPU, plugin op]"
    for report in reports:
        assert report, "\n".join(report.lines())


def test_plugin_and_unrolled_graphs_choose_the_same_tokens(plugin_selector_graph, selector_graphs):
    from flashvlm_export.parity.backends import OnnxRuntime
    from flashvlm_export.parity.corpus import Geometry, selector_corpus

    plugin, unrolled = OnnxRuntime(plugin_selector_graph, plugin=True), OnnxRuntime(selector_graphs[128])
    for case in selector_corpus(Geometry(576, 1024, 4096, LLAVA15.t_max, 1), repeats=1):
        assert np.array_equal(plugin.indices(case.feeds), unrolled.indices(case.feeds)), case.name  # same ORT Gram, same rounds


TRT_INCLUDES = [p for p in os.environ.get("FLASHVLM_TRT_INCLUDE", "").split(os.pathsep) if p]
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
needs_trt_headers = pytest.mark.skipif(
    not TRT_INCLUDES,
    reason=unavailable_here(
        "TensorRT headers absent (fetched, never committed): set FLASHVLM_TRT_INCLUDE=<TensorRT include dir>[:<another>]"
    ),
)
HAS_NVCC = shutil.which("nvcc") is not None or (CUDA_HOME / "bin/nvcc").exists()


@needs_trt_headers
@pytest.mark.skipif(not HAS_NVCC, reason="nvcc not installed")
@pytest.mark.parametrize("include", TRT_INCLUDES or ["-"])
def test_plugin_sources_compile_against_tensorrt_headers(include):
    """-Werror compile of every source (kernel at sm_87 and sm_90) and the nm/readelf proof of exports.
    Compiled only: nothing here runs the kernel or loads the library into TensorRT."""
    run = subprocess.run(
        [str(ROOT / "scripts/compile_check_plugin.sh"), include, "sm_87", "sm_90"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "nvcc residualPruneKernel.cu -arch=sm_87 ok" in run.stdout and "-arch=sm_90 ok" in run.stdout
    assert "libflashvlm_plugins.so exports getCreators only" in run.stdout


@pytest.fixture(scope="module", params=TRT_INCLUDES or ["-"])
def built_plugin(request, tmp_path_factory):
    """Both libraries, the harness and the stand-in registry, built by scripts/compile_check_plugin.sh."""
    if shutil.which("g++") is None or not (CUDA_HOME / "include/cuda_runtime_api.h").exists():
        pytest.skip(f"g++ and the CUDA headers ({CUDA_HOME}/include) are needed to build the plugin library")
    out = tmp_path_factory.mktemp("plugin_build")
    run = subprocess.run(
        [str(ROOT / "scripts/compile_check_plugin.sh"), request.param, "sm_90"],
        capture_output=True,
        text=True,
        env={**os.environ, "FLASHVLM_PLUGIN_OUT": str(out)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


CREATORS = 2  # getCreators returns ResidualPrune v1 and ResidualPruneRange v1
# what each tool's load order must give: (loadLibrary result, registering library's status, creators registered)
LOAD_ORDERS = {
    "loadlibrary": ("ok", -100, CREATORS),  # Python registry.load_library, trtexec --dynamicPlugins
    "register-first": ("-", 0, CREATORS),  # polygraphy run --plugins libflashvlm_plugins_register.so
    "nvinfer-then-register": ("-", 0, CREATORS),  # trtexec --staticPlugins libflashvlm_plugins_register.so
    "loadlibrary-then-register": ("ok", 1, CREATORS),  # the registering library finds them there: no second copy
    "register-then-loadlibrary": ("null", 0, CREATORS),  # loadLibrary "fails if any plugin is already registered"
    "plain-dlopen": ("-", -100, 0),  # a plain dlopen of the plugin itself registers nothing: no load-time trick
}


@needs_trt_headers
@pytest.mark.parametrize("order", list(LOAD_ORDERS))
def test_plugin_registers_once_in_every_load_order(built_plugin, order):
    """The real libflashvlm_plugins.so and libflashvlm_plugins_register.so, loaded in each tool's order
    into a process whose libnvinfer.so.<major> is a TEST STAND-IN (tests/csrc/testNvinferStandIn.cpp): a
    registry that does only what NvInferRuntimeCommon.h documents (registerCreator refuses a duplicate;
    loadLibrary calls getCreators and fails when a plugin is already registered). The creator found in
    that registry then goes through create / serialise / re-create / clone.

    What it does NOT prove: that the real libnvinfer's loadLibrary or registry behave like the stand-in
    (that needs TensorRT: run the same harness order on a TensorRT machine, where the counts print -1),
    that Polygraphy or trtexec resolve the same libnvinfer file as the registering library, or anything
    about the kernel."""
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join([str(built_plugin / "standin"), str(CUDA_HOME / "lib64")])}
    env.pop("FLASHVLM_NVINFER_LIB", None)
    run = subprocess.run(
        [
            str(built_plugin / "flashvlm_plugin_harness"),
            "--load-order",
            order,
            str(built_plugin / "libflashvlm_plugins.so"),
            str(built_plugin / "libflashvlm_plugins_register.so"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    load_library, register_status, registered = LOAD_ORDERS[order]
    assert (result["load_library"], result["register_status"], result["registered"]) == (
        load_library,
        register_status,
        registered,
    ), result
    assert result["refused"] == 0, result  # nothing ever tried to register the creator a second time
    assert result["creator_found"] is (registered == CREATORS)
    assert result["lifecycle"] == ("ok" if registered else "no creator in the registry")


@needs_trt_headers
def test_plugin_lifecycle_through_get_creators(built_plugin):
    """dlopen + getCreators + create / serialise / re-create / clone of both creators (ResidualPrune, and
    ResidualPruneRange with a refused field set), as loadLibrary's caller would.
    No registry and no kernel run: proves the creator and the IPluginV3 field round trip only."""
    run = subprocess.run(
        [str(built_plugin / "flashvlm_plugin_harness"), str(built_plugin / "libflashvlm_plugins.so")],
        capture_output=True,
        text=True,
        env={**os.environ, "LD_LIBRARY_PATH": str(CUDA_HOME / "lib64")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {
        "ok": True,
        "lifecycle": "getCreators, createPlugin, serialise, re-create, clone",
        "fields": 2,
        "range_fields": 5,  # ResidualPruneRange: k_min, k_max, k_div_max, step, max_rounds survive serialise and clone
    }


@needs_trt_headers
def test_registering_library_says_why_when_libnvinfer_is_missing(built_plugin):
    """Planted failure: no libnvinfer on the search path. The registering library must say so on one
    line and register nothing (the process still runs). Proves our message only, not TensorRT's."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(CUDA_HOME / "lib64"), "FLASHVLM_NVINFER_LIB": "/nonexistent/libnvinfer.so"}
    code = "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); print(lib.flashvlm_registration_status())"
    run = subprocess.run(
        [sys.executable, "-c", code, str(built_plugin / "libflashvlm_plugins_register.so")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "-1"  # kNoLibnvinfer
    assert "cannot open /nonexistent/libnvinfer.so" in run.stderr and "nothing registered" in run.stderr


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=unavailable_here("no CUDA GPU: the plugin kernel runs in scripts/plugin_harness.py on a GPU"),
)
def test_plugin_kernel_on_gpu_matches_reference(tmp_path):
    run = subprocess.run(
        ["python", str(ROOT / "scripts/plugin_harness.py"), "--build-dir", str(tmp_path), "--repeats", "1"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASSED" in run.stdout


class StandInRegistry:
    """Stands in for tensorrt's IPluginRegistry binding to test OUR calling logic only; it proves
    nothing about TensorRT's own registry (the C++ load-order tests above model that from its header)."""

    def __init__(self, registered=False, load_works=True):
        self.registered, self.load_works, self.loaded = registered, load_works, []

    def get_creator(self, name, version, namespace):
        return object() if self.registered and (name, version, namespace) == ("ResidualPrune", "1", "flashvlm") else None

    def load_library(self, path):
        self.loaded.append(path)
        self.registered = self.registered or self.load_works
        return object() if self.load_works else None


class StandInTrt:
    def __init__(self, registry):
        self.registry = registry

    def get_plugin_registry(self):
        return self.registry


def test_load_plugin_library_uses_registry_load_library_once():
    from flashvlm_export.trt.env import load_plugin_library

    fresh = StandInRegistry()
    assert load_plugin_library(StandInTrt(fresh), "/x/libflashvlm_plugins.so") == "registry.load_library"
    assert fresh.loaded == ["/x/libflashvlm_plugins.so"]
    # registered before (e.g. polygraphy --plugins libflashvlm_plugins_register.so): loadLibrary would fail, skip it
    present = StandInRegistry(registered=True)
    assert load_plugin_library(StandInTrt(present), "/x/libflashvlm_plugins.so") == "already registered"
    assert present.loaded == []


def test_load_plugin_library_reports_a_library_that_registers_nothing():
    from flashvlm_export.errors import MissingDependencyError
    from flashvlm_export.trt.env import load_plugin_library

    with pytest.raises(MissingDependencyError, match="registered no flashvlm::ResidualPrune v1 creator"):
        load_plugin_library(StandInTrt(StandInRegistry(load_works=False)), "/x/libflashvlm_plugins.so")
    with pytest.raises(UsageError, match="give TensorRT's loader libflashvlm_plugins.so"):
        load_plugin_library(StandInTrt(StandInRegistry()), "/x/libflashvlm_plugins_register.so")


def test_polygraphy_replay_passes_the_registering_library(tmp_path, monkeypatch):
    """Polygraphy's --plugins only dlopens, so the replay must name the library that registers at load.
    Checks the command and environment we build; polygraphy and TensorRT themselves are not run."""
    from flashvlm_export.errors import MissingDependencyError
    from flashvlm_export.parity import polygraphy_replay as polygraphy_check

    plugin = tmp_path / "libflashvlm_plugins.so"
    plugin.write_bytes(b"")
    with pytest.raises(MissingDependencyError, match="libflashvlm_plugins_register.so not found"):
        polygraphy_check.registering_library(plugin)
    (tmp_path / "libflashvlm_plugins_register.so").write_bytes(b"")
    register = polygraphy_check.registering_library(plugin)
    command = polygraphy_check.polygraphy_command(Path("e.plan"), Path("i.json"), Path("o.json"), register)
    assert command[-2:] == ["--plugins", str(tmp_path / "libflashvlm_plugins_register.so")]
    assert command[command.index("--compare-func-script") + 1].endswith("flashvlm_export/parity/polygraphy_compare.py")
    monkeypatch.setattr(polygraphy_check, "tensorrt_libs_dir", lambda: "/site/tensorrt_libs")
    env = polygraphy_check.polygraphy_env({"LD_LIBRARY_PATH": "/opt/lib"})
    assert env["LD_LIBRARY_PATH"] == os.pathsep.join(["/site/tensorrt_libs", "/opt/lib"])
