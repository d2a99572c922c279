"""The exported selector core: ONNX Runtime gives the reference's indices; the graph is static."""

import json

import numpy as np
import onnx
import pytest

from flashvlm_export.export.graph_check import op_counts, static_graph_problems
from flashvlm_export.parity.run import run_parity

from conftest import LLAVA15, export_selector


def assert_layers_1_and_2(reports, images):
    for report in reports:
        assert report, "\n".join(report.lines())  # layers 1 and 2 held
        assert report.decisions_checked == images  # every image's decisions replayed exactly
    assert reports[1].shipped_checked == images  # the shipped graph returned what its verification build did


@pytest.mark.parametrize("budget", [32, 64, 128, 192])
def test_onnxruntime_passes_layers_1_and_2_at_576_tokens(selector_graphs, budget):
    reports = run_parity(selector_graphs[budget], repeats=1, log=lambda _: None)
    assert [r.backend for r in reports] == ["static-torch", "onnxruntime[CPU]"]
    assert_layers_1_and_2(reports, 7)
    # the ties case holds one-hot features and one fused score: every cosine and score is exact in float32,
    # so no backend's rounding can differ and the index sets must be equal on every CPU
    ties = [
        i
        for i, case in enumerate(["scene", "random", "ties", "constant_saliency", "duplicated_features", "empty_text", "padding"])
        if case == "ties"
    ]
    assert all(reports[1].overlaps[i] == 1.0 for i in ties)


def test_onnxruntime_passes_layers_1_and_2_at_2880_tokens(tmp_path):
    """LLaVA-NeXT's N in one selector: Gram, TopK and the pruning rounds at N = 2880. K = 2560 unrolls 40 rounds of the
    same body (K = 640 would unroll 280 and take several times as long; LLaVA-NeXT's graphs themselves select crop by
    crop: test_llava_next.py); two of the corpus's cases (a scene, exact ties); the whole corpus (padded text
    included) runs at N = 576 above."""
    from flashvlm_export.parity.corpus import Geometry, selector_corpus

    graph = export_selector(tmp_path / "sel2880.onnx", 2560, n_tokens=2880, t_max=32, exporter="torchscript")
    cases = selector_corpus(Geometry(2880, LLAVA15.vision_hidden, LLAVA15.text_hidden, 32, 1), repeats=1, names=("scene", "ties"))
    assert_layers_1_and_2(run_parity(graph, cases=cases, log=lambda _: None), 2)


def test_batch_of_two_with_different_texts_passes_per_image(tmp_path):
    graph = export_selector(tmp_path / "sel_bs2.onnx", 64, batch=2, t_max=32, exporter="torchscript")
    assert_layers_1_and_2(run_parity(graph, repeats=1, log=lambda _: None), 14)


@pytest.mark.parametrize("budget", [32, 192])
def test_selector_graph_has_no_control_flow_and_small_topk(selector_graphs, budget):
    model = onnx.load(str(selector_graphs[budget]))
    assert static_graph_problems(model) == []
    counts = op_counts(model)
    assert not {"Loop", "If", "NonZero", "Scan"} & set(counts)
    assert counts["TopK"] >= 1


def test_graph_inputs_outputs_and_metadata_are_declared(selector_graphs):
    path = selector_graphs[128]
    model = onnx.load(str(path))
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in list(model.graph.input) + list(model.graph.output)
    }
    assert shapes == {
        "vision_features": [1, 576, 1024],
        "cls_attention": [1, 576],
        "projected_features": [1, 576, 4096],
        "text_embeds": [1, LLAVA15.t_max, 4096],
        "text_mask": [1, LLAVA15.t_max],
        "indices": [1, 128],
        "visual_embeds": [1, 128, 4096],  # step 12's rows: gathered in the graph, never on the host
    }
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["budget"] == "128" and meta["model"] == "llava15" and meta["opset"] == "18"
    assert json.loads(meta["selector_config"])["step"] == 8 and meta["n_rounds"] == "56"
    assert "flashvlm_export_version" in meta
    sidecar = json.loads(path.with_suffix(".json").read_text())
    # the sidecar holds the same facts, typed (ONNX metadata_props are strings)
    typed = {k: str(int(v)) if isinstance(v, bool) else v if isinstance(v, str) else str(v) for k, v in sidecar.items()}
    assert {k: typed[k] for k in meta if k != "selector_config"} == {k: v for k, v in meta.items() if k != "selector_config"}
    assert sidecar["selector_config"] == json.loads(meta["selector_config"]) and sidecar["budget"] == 128


def test_polygraphy_replays_saved_records_against_the_graph(selector_graphs, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    polygraphy = shutil.which("polygraphy") or str(Path(sys.executable).with_name("polygraphy"))

    graph = selector_graphs[64]
    reports = run_parity(graph, repeats=1, save_dir=tmp_path, log=lambda _: None)
    assert all(reports)
    exact_cases = all(r.exact == len(r.overlaps) for r in reports)  # Polygraphy compares index sets exactly (layer 3)
    inputs, outputs = tmp_path / f"{graph.stem}_inputs.json", tmp_path / f"{graph.stem}_reference_outputs.json"
    from polygraphy.json import load_json

    loaded = load_json(str(inputs))
    assert len(loaded) == 7 and set(loaded[0]) == {
        "vision_features",
        "cls_attention",
        "projected_features",
        "text_embeds",
        "text_mask",
    }
    run = subprocess.run(
        [polygraphy, "run", str(graph), "--onnxrt", "--load-inputs", str(inputs), "--load-outputs", str(outputs)],
        capture_output=True,
        text=True,
    )
    if exact_cases:
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "onnxrt-runner" in run.stdout + run.stderr


def test_selector_graph_in_onnxruntime_is_deterministic(selector_graphs):
    from flashvlm_export.parity.backends import OnnxRuntime
    from flashvlm_export.parity.corpus import Geometry, selector_corpus

    case = selector_corpus(Geometry(576, 1024, 4096, LLAVA15.t_max, 1), repeats=1)[0]
    runtime = OnnxRuntime(selector_graphs[128])
    first = runtime.indices(case.feeds)
    assert all(np.array_equal(first, runtime.indices(case.feeds)) for _ in range(3))
