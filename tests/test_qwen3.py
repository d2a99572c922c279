"""The Qwen3 generation on its tiny models (issue 32): qwen3-vl-tiny (DeepStack) and qwen3.5-tiny, through the commands
a user runs: the static tower against transformers' own, fused, split, range, plugin, fp16 and video exports through
parity, `run --answer --compare-full`, planted faults caught, bad input refused in one line.

Kept fast for CI: 512 px (N = 256), 4 blocks of width 32, TorchScript exports (dynamo only for the plugin graph),
one parity repeat; every graph exported once per module. The hand-off to the LLMs is tests/test_qwen3_handoff.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flashvlm_export.cli import main
from flashvlm_export.export.interface import DEEPSTACK_EMBEDS, DEEPSTACK_FEATURES, INDICES, POSITIONS, VISUAL_EMBEDS
from flashvlm_export.export.metadata import graph_metadata, request_fields
from flashvlm_export.models.registry import adapter, get_spec
from flashvlm_export.parity.compare import max_relative_error

from conftest import Planted, expect_one_line, openvino_parity_passes

VL = get_spec("qwen3-vl-tiny")
Q35 = get_spec("qwen3.5-tiny")
MODELS = [VL, Q35]
BUDGET = 64
CLIP_BUDGET = 480  # a 4-frame clip's 512 tokens: near N, few rounds to export (test_export_path_passes_parity writes it)
QUIET = dict(log=lambda _: None)
# The static tower against transformers' own, max|b - r| / max|r|: the same fp32 operations batched over images
# instead of one call per image (cu_seqlens chunks); measured 0 on this CPU at 512 and 384 px. A bound, not equality:
# another CPU's GEMM blocking may differ between the batched and the per-image shapes.
ENCODER_BOUND = 1e-5


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qwen3")


def export(out_dir: Path, spec, name: str, *flags: str) -> Path:
    graph = out_dir / f"{name}.onnx"
    argv = ["--model", spec.name, "--budget", str(BUDGET), "--random-weights", "--out", str(graph), *flags]
    assert main(argv) == 0
    return graph


def passes_parity(capsys, *argv) -> str:
    code = main(["parity", *argv, "--repeats", "1", "--no-save"])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASSED"), out
    return out


def outputs_of(graph: Path) -> dict[str, list[int]]:
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}


@pytest.fixture(scope="module")
def fused(out_dir) -> dict[str, Path]:
    return {spec.name: export(out_dir, spec, f"{spec.name}_ts", "--exporter", "torchscript") for spec in MODELS}


# ---------------------------------------------------------------- the tower against transformers' own


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
@pytest.mark.parametrize("size", [512, 384, (384, 672)], ids=["512", "384", "384x672"])
def test_static_tower_equals_transformers_own_within_bound(spec, size):
    """At square sides and a non-square shape (the 16:9 of --aspects: the learned position grid resampled to 12 x 21
    merged tokens, rotary rows and columns apart)."""
    parts = adapter(spec).random_parts(spec, 0)
    resized = spec.at_image_size(size)
    parts.spec = resized
    height, width = resized.image_shape
    pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height + width))
    with torch.no_grad():
        ours = parts.encoder()(pixels)
    theirs = parts.reference_features(pixels)
    n = (height // 32) * (width // 32)
    assert len(ours) == len(theirs) == (4 if spec.deepstack_layers else 3)
    assert ours[0].shape == (2, n, spec.text_hidden) and ours[1].shape == (2, n)
    if spec.deepstack_layers:
        assert ours[3].shape == (2, spec.deepstack_layers, n, spec.text_hidden)
    for name, got, want in zip(("X", "a", "P(X)", "DeepStack"), ours, theirs, strict=False):
        error = max_relative_error(got.numpy(), want.numpy())
        assert error <= ENCODER_BOUND, f"{name} at {size} px: {error:.2e}"


def test_deepstack_rows_come_from_the_configured_layers_in_order():
    """Row l of deepstack_features is merger l on block deepstack_visual_indexes[l]'s output: a tower whose taps are
    reordered gives the layers exchanged (so the graph cannot silently mix them up)."""
    import copy

    parts = adapter(VL).random_parts(VL, 0)
    pixels = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        honest = parts.encoder()(pixels)[3]
    visual = copy.deepcopy(parts.visual)
    visual.config.deepstack_visual_indexes = [1, 0, 2]  # blocks 1 and 0 tapped in the other order
    parts.visual = visual
    with torch.no_grad():
        reordered = parts.encoder()(pixels)[3]
    assert not torch.equal(honest[:, 0], reordered[:, 0]) and torch.equal(honest[:, 2], reordered[:, 2])


# ---------------------------------------------------------------- every export path through parity


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_fused_graph_returns_positions_and_deepstack_rows_and_passes_parity(fused, capsys, spec):
    graph = fused[spec.name]
    want = {INDICES: [1, BUDGET], VISUAL_EMBEDS: [1, BUDGET, spec.text_hidden], POSITIONS: [1, BUDGET, 3]}
    if spec.deepstack_layers:
        want[DEEPSTACK_EMBEDS] = [1, spec.deepstack_layers, BUDGET, spec.text_hidden]
    assert outputs_of(graph) == want
    out = passes_parity(capsys, "--graph", str(graph))
    assert (DEEPSTACK_FEATURES in out) == bool(spec.deepstack_layers)  # layer 2 reports the DeepStack rows' error


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_split_export_passes_parity_per_budget(out_dir, capsys, spec):
    argv = ["--model", spec.name, "--budget", "64,32", "--random-weights", "--exporter", "torchscript"]
    assert main([*argv, "--out-dir", str(out_dir / f"split-{spec.name}")]) == 0
    manifest = out_dir / f"split-{spec.name}" / f"{spec.name}_split" / "manifest.json"
    record = json.loads(manifest.read_text())
    assert record["model"] == spec.name and record["budgets"] == [64, 32]
    encoder = outputs_of(manifest.parent / record["encoder"]["onnx"]["path"])
    assert (DEEPSTACK_FEATURES in encoder) == bool(spec.deepstack_layers)
    out = passes_parity(capsys, "--manifest", str(manifest))
    assert "K=64:" in out and "K=32:" in out


@pytest.mark.parametrize(
    "spec, name, flags",
    [
        (VL, "range", ["--budget-range", "16..64", "--exporter", "torchscript"]),
        (Q35, "range", ["--budget-range", "16..64", "--exporter", "torchscript"]),
        (VL, "plugin", ["--plugin", "--exporter", "dynamo"]),
        (Q35, "fp16", ["--precision", "fp16", "--exporter", "torchscript"]),
        (VL, "video", ["--video", "--frames", "4", "--exporter", "torchscript"]),
        (Q35, "video", ["--video", "--frames", "4", "--exporter", "torchscript"]),
        (Q35, "video-joint", ["--video", "--frames", "4", "--video-budget", "joint", "--exporter", "torchscript"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_export_path_passes_parity(out_dir, capsys, spec, name, flags):
    """Each export path end to end; a fixed budget near N (240 of 256, a 4-frame clip's 480 of 512) keeps the unrolled
    rounds few, so the exports stay fast (what each path must keep does not depend on K)."""
    graph = out_dir / f"{spec.name}-{name}.onnx"
    argv = ["--model", spec.name, "--random-weights", "--out", str(graph), *flags]
    budget = CLIP_BUDGET if "--video" in flags else 240
    assert main(argv if "--budget-range" in flags else [*argv, "--budget", str(budget)]) == 0
    out = passes_parity(capsys, "--graph", str(graph))
    if name == "plugin":
        assert "onnxruntime[CPU, plugin op]" in out


def test_a_range_graphs_padded_deepstack_rows_are_zero(out_dir):
    """A budget-range graph pads indices with -1 after each image's kept tokens; its DeepStack rows there are zero, as
    its visual_embeds rows are (and the kept ones the encoder's own rows at the indices: parity's layer 1)."""
    from flashvlm_export.export.graphs import example_inputs, request_from_metadata
    from flashvlm_export.runtime.session import OrtGraph

    graph = out_dir / f"{VL.name}-range.onnx"
    if not graph.is_file():
        assert (
            main(
                [
                    "--model",
                    VL.name,
                    "--random-weights",
                    "--out",
                    str(graph),
                    "--budget-range",
                    "16..64",
                    "--exporter",
                    "torchscript",
                ]
            )
            == 0
        )
    request = request_from_metadata(graph_metadata(graph), str(graph))
    feeds = {
        spec.name: t.numpy() for spec, t in zip(request.interface().inputs, example_inputs(request.interface()), strict=True)
    }
    feeds["budget"] = np.asarray([20], dtype=np.int64)
    out = OrtGraph(graph).infer(feeds)
    assert int(out["kept"][0]) == 20 and np.all(out[INDICES][0, 20:] == -1)
    assert np.all(out[DEEPSTACK_EMBEDS][0, :, 20:] == 0) and np.any(out[DEEPSTACK_EMBEDS][0, :, :20] != 0)


# ---------------------------------------------------------------- run: the answer, the heatmap, a clip


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_run_answers_from_the_kept_tokens_and_from_all(fused, tmp_path, capsys, spec):
    heatmap = tmp_path / "kept.png"
    code = main([
        "run", "--graph", str(fused[spec.name]), "--demo-image", str(tmp_path / "demo.png"), "--question", "What is on the table?",
        "--heatmap", str(heatmap), "--answer", "--compare-full", "--max-new-tokens", "3",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"Run: selected {BUDGET}/{spec.n_tokens} tokens" in out
    assert f"Answer [pruned K={BUDGET}]: prefill" in out and f"Answer [full N={spec.n_tokens}]: prefill" in out
    assert heatmap.is_file()


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_run_on_a_clip_places_each_frame_group_after_its_timestamp(out_dir, tmp_path, capsys, spec):
    graph = out_dir / f"{spec.name}-video.onnx"
    if not graph.is_file():
        argv = ["--model", spec.name, "--random-weights", "--out", str(graph), "--budget", str(CLIP_BUDGET), "--video"]
        assert main([*argv, "--frames", "4", "--exporter", "torchscript"]) == 0
    code = main([
        "run", "--graph", str(graph), "--demo-video", str(tmp_path / "clip.mp4"), "--question", "Where is the ball?",
        "--answer", "--compare-full", "--max-new-tokens", "2", "--heatmap", str(tmp_path / "strip.png"),
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    half = CLIP_BUDGET // 2
    assert "kept per frame group" in out and f"g0 {half}, g1 {half} (per-group: {half} each)" in out
    assert "from its frame group's start (after the group's timestamp)" in out
    assert f"Answer [pruned K={CLIP_BUDGET}]" in out and "Answer [full N=512]" in out


# ---------------------------------------------------------------- planted faults fail parity


def deepstack_at_the_next_indices(out):
    """Each kept token's DeepStack rows taken from the token after it: rows gathered at the wrong indices."""
    indices = out[INDICES]
    for b in range(indices.shape[0]):
        out[DEEPSTACK_EMBEDS][b] = out[DEEPSTACK_FEATURES][b][:, (indices[b] + 1) % out[DEEPSTACK_FEATURES].shape[2]]
    return out


def two_deepstack_layers_exchanged(out):
    out[DEEPSTACK_EMBEDS][:, [0, 1]] = out[DEEPSTACK_EMBEDS][:, [1, 0]]
    return out


def deepstack_dropped(out):
    return {name: value for name, value in out.items() if name != DEEPSTACK_EMBEDS}


@pytest.fixture(scope="module")
def planted(fused):
    """Parity of the honest torch pipeline and of each planted fault, in one run (one reference for all)."""
    from flashvlm_export.export.graphs import ExportRequest
    from flashvlm_export.parity.backends import TorchModule
    from flashvlm_export.parity.run import run_parity

    graph = fused[VL.name]
    request = ExportRequest(**request_fields(graph_metadata(graph), str(graph)))
    parts = adapter(VL).random_parts(VL, 0)
    honest = TorchModule(request.module(parts, verification=True), request.interface())
    faults = {
        "wrong-indices": deepstack_at_the_next_indices,
        "layers-exchanged": two_deepstack_layers_exchanged,
        "dropped": deepstack_dropped,
    }
    backends = [honest, *(Planted(honest, corrupt, name) for name, corrupt in faults.items())]
    reports = run_parity(graph, parts, repeats=1, backends=backends, **QUIET)
    return {report.backend: report for report in reports}


def test_the_honest_pipeline_passes(planted):
    report = planted["static-torch"]
    assert report and report.decisions_checked == 3, report.lines()


@pytest.mark.parametrize("fault", ["wrong-indices", "layers-exchanged"])
def test_deepstack_rows_that_are_not_the_kept_tokens_own_fail_layer_1(planted, fault):
    report = planted[fault]
    assert not report and report.arithmetic_passed  # the encoder honest: the gathered rows are wrong
    assert len(report.decision_failures) == 3, report.decision_failures  # every image, and nothing else
    assert all("deepstack_embeds are not the DeepStack rows" in f for f in report.decision_failures)


def test_a_graph_that_drops_the_deepstack_rows_fails(planted):
    report = planted["dropped"]
    assert not report and DEEPSTACK_EMBEDS in report.missing


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


@pytest.mark.parametrize(
    "size, fragments",
    [
        ("500", ["--image-size 500 is not a multiple of 32", "use --image-size 480 or 512"]),
        ("2016", ["N=3969", "TopK limit 3840"]),
    ],
    ids=["not-a-multiple-of-32", "N-over-3840"],
)
@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_a_side_the_model_cannot_take_is_refused(tmp_path, capsys, spec, size, fragments):
    argv = ["--model", spec.name, "--random-weights", "--image-size", size, "--out-dir", str(tmp_path / "g")]
    expect_one_line(capsys, argv, *fragments)
    assert not (tmp_path / "g").exists()


def _checkpoint_of(model: str, folder: Path) -> Path:
    spec = get_spec(model)
    adapter(spec).full_config(spec).to_json_file(str(folder / "config.json"))
    (folder / "model.safetensors").write_bytes(b"")  # never read: the family is refused first
    return folder


@pytest.mark.parametrize(
    "model, other, found",
    [
        (VL.name, Q35.name, "'qwen3_5' model, not 'qwen3_vl'"),
        (Q35.name, VL.name, "'qwen3_vl' model, not 'qwen3_5'"),
        (VL.name, "qwen2.5-vl-tiny", "'qwen2_5_vl' model, not 'qwen3_vl'"),
    ],
)
def test_a_checkpoint_of_another_family_is_refused(tmp_path, capsys, model, other, found):
    path = _checkpoint_of(other, tmp_path)
    expect_one_line(capsys, ["--model", model, "--model-path", str(path), "--out-dir", str(tmp_path / "g")], found)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("total, frames", [(4, 4), (8, 4), (16, 8), (17, 8), (97, 8), (30, 2)])
def test_qwen3_clips_sample_frames_as_qwen3s_video_processor_does(total, frames):
    """spread_indices against Qwen3VLVideoProcessor.sample_frames itself (transformers' code on a stand-in `self`:
    its module's class needs no torchvision for this method), and not Qwen2.5-VL's rule, which differs here."""
    from types import SimpleNamespace

    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    from flashvlm_export.runtime.video import even_indices, spread_indices

    owner = SimpleNamespace(fps=2, min_frames=4, max_frames=768)
    theirs = Qwen3VLVideoProcessor.sample_frames(owner, VideoMetadata(total_num_frames=total, fps=8.0), num_frames=frames)
    assert spread_indices(total, frames) == theirs.tolist()
    if total > frames:
        assert even_indices(total, frames) != theirs.tolist()


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_fused_graph_passes_parity_on_openvino(capsys, fused, spec):
    """OpenVINO as a third arithmetic (issue 35): Qwen3-VL (DeepStack rows) and Qwen3.5 hold there too."""
    openvino_parity_passes(capsys, "--graph", fused[spec.name], "--random-weights")
