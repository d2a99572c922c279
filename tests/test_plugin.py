"""ResidualPrune: the kernel's logic (its C++ CPU twin), the plugin graph in ONNX Runtime, the C++ build.

What needs TensorRT headers or a GPU skips with the reason; nothing here fakes TensorRT.
"""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from flashvlm_export.export.graph_check import static_graph_problems
from flashvlm_export.export.graphs import ExportRequest
from flashvlm_export.export.onnx_export import export_onnx
from flashvlm_export.parity.corpus import SELECTOR_INPUTS
from flashvlm_export.parity.run import run_parity
from flashvlm_export.plugin.cpu import count_rounds_cpu, residual_prune_cpu
from flashvlm_export.selector import SelectorConfig, round_schedule
from flashvlm_export.selector.reference import pruning_inputs, residual_prune

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


@pytest.fixture(scope="module")
def plugin_selector_graph(tmp_path_factory):
    request = ExportRequest(
        spec=LLAVA15, budget=128, t_max=LLAVA15.t_max, batch=1, config=SelectorConfig(), selector_only=True, plugin=True
    )
    path = tmp_path_factory.mktemp("plugin") / "llava15_selector_b128_plugin.onnx"
    return export_onnx(request.module(), request.graph_io(), path, request.metadata(None))


def test_plugin_graph_has_one_residual_prune_node_with_parser_attributes(plugin_selector_graph):
    model = onnx.load(str(plugin_selector_graph))
    nodes = [n for n in model.graph.node if n.domain == "flashvlm"]
    assert [n.op_type for n in nodes] == ["ResidualPrune"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    schedule = round_schedule(576, 128)
    assert attrs == {"k_div": schedule.k_div, "step": schedule.step, "plugin_version": b"1", "plugin_namespace": b"flashvlm"}
    assert static_graph_problems(model) == []
    assert sum(n.op_type == "TopK" for n in model.graph.node) <= 3  # the unrolled rounds' TopKs are gone
    assert {o.domain for o in model.opset_import} >= {"", "flashvlm"}


def test_plugin_graph_in_onnxruntime_matches_reference(plugin_selector_graph):
    reports = run_parity(plugin_selector_graph, repeats=1, log=lambda _: None)
    assert reports[1].backend == "onnxruntime[CPU, plugin op]"
    for report in reports:
        assert report, "\n".join(report.lines())


def test_plugin_and_unrolled_graphs_choose_the_same_tokens(plugin_selector_graph, selector_graphs):
    from flashvlm_export.parity.backends import OnnxRuntime
    from flashvlm_export.parity.corpus import Geometry, selector_corpus

    plugin, unrolled = OnnxRuntime(plugin_selector_graph, plugin=True), OnnxRuntime(selector_graphs[128])
    for case in selector_corpus(Geometry(576, 1024, 4096, LLAVA15.t_max, 1), repeats=1):
        assert np.array_equal(plugin.run(case.feeds), unrolled.run(case.feeds)), case.name  # same ORT Gram, same rounds


TRT_INCLUDES = [p for p in os.environ.get("FLASHVLM_TRT_INCLUDE", "").split(os.pathsep) if p]


@pytest.mark.skipif(
    not TRT_INCLUDES, reason="TensorRT headers absent: set FLASHVLM_TRT_INCLUDE=<TensorRT include dir>[:<another>]"
)
@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(), reason="nvcc not installed")
@pytest.mark.parametrize("include", TRT_INCLUDES or ["-"])
def test_plugin_sources_compile_against_tensorrt_headers(include):
    run = subprocess.run(
        [str(ROOT / "scripts/compile_check_plugin.sh"), include, "sm_87", "sm_90"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "exports getCreators" in run.stdout


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU: the plugin kernel runs in scripts/plugin_harness.py on a GPU"
)
def test_plugin_kernel_on_gpu_matches_reference(tmp_path):
    run = subprocess.run(
        ["python", str(ROOT / "scripts/plugin_harness.py"), "--build-dir", str(tmp_path), "--repeats", "1"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASSED" in run.stdout
