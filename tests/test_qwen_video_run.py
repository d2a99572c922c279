"""`flashvlm-export run --video` on the tiny model (4 frames, N = 512, K = 64): the demo clip through the CLI to the
kept tokens per frame group, the strip and both answers; the Python API; positions at the clip's fps; every bad
input planted (one line, exit 2, nothing written).

The clip graphs (per-group and joint) are exported once per module with TorchScript; the answers are 4 tokens long.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from flashvlm_export.cli import main
from flashvlm_export.errors import FlashVLMError
from flashvlm_export.export.graphs import request_from_metadata
from flashvlm_export.export.metadata import graph_metadata
from flashvlm_export.models.positions import clip_token_positions, second_per_grid
from flashvlm_export.models.registry import get_spec
from flashvlm_export.runtime import run
from flashvlm_export.runtime.clip_run import clip_positions, group_counts
from flashvlm_export.runtime.session import Selection
from flashvlm_export.runtime.video import write_demo_clip

from conftest import expect_one_line

QWEN = get_spec("qwen2.5-vl-tiny")
FRAMES = 4
GROUPS = FRAMES // 2
N = GROUPS * QWEN.n_tokens  # 512
K = 64
QUESTION = "What moves?"
QUIET = dict(log=lambda _: None)


def export(out: Path, name: str, *flags: str) -> Path:
    graph = out / f"{name}.onnx"
    argv = ["--model", QWEN.name, "--budget", str(K), "--random-weights", "--exporter", "torchscript", "--out", str(graph)]
    assert main([*argv, *flags]) == 0
    return graph


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("video_run")
    clip = ["--video", "--frames", str(FRAMES)]
    return {
        "per-group": export(out, "per_group", *clip),
        "joint": export(out, "joint", *clip, "--video-budget", "joint"),
        "image": export(out, "image"),  # a Qwen image graph: no frames
    }


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory) -> Path:
    """The demo clip at the graphs' frames, size and fps (2): its positions are the graphs' own."""
    return write_demo_clip(tmp_path_factory.mktemp("clip") / "demo.mp4", frames=FRAMES, size=QWEN.image_size, fps=2)


def test_demo_video_run_prints_kept_tokens_per_group_writes_the_strip_and_both_answers(graphs, tmp_path, capsys):
    from PIL import Image

    clip, strip = tmp_path / "demo" / "clip.mp4", tmp_path / "strip.png"
    argv = ["run", "--graph", str(graphs["per-group"]), "--demo-video", str(clip), "--question", QUESTION]
    assert main([*argv, "--heatmap", str(strip), "--answer", "--compare-full", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert clip.is_file() and f"wrote the demo clip ({FRAMES} frames, {QWEN.image_size} px, 2 fps" in out
    assert f"Run: selected {K}/{N} tokens" in out
    assert "kept per frame group (group g = frames 2g, 2g+1; 256 tokens each): g0 32, g1 32 (per-group: 32 each)" in out
    assert "rebuilt" not in out  # the demo clip is written at the graph's fps
    width, height = Image.open(strip).size
    assert width == 2 * QWEN.image_size + 8 and height > QWEN.image_size  # two panels side by side, a legend below
    assert f"Answer [pruned K={K}]" in out and f"Answer [full N={N}]" in out
    assert f"kept {K}/{N} tokens: prefill" in out


@pytest.mark.parametrize("rule", ["per-group", "joint"])
def test_the_python_api_takes_a_clip_and_returns_each_groups_kept_count(graphs, demo_clip, rule):
    result = run(str(graphs[rule]), None, QUESTION, video=str(demo_clip), **QUIET)
    assert result.n_tokens == N and len(result.indices) == K and sum(result.kept_per_group) == K
    assert result.kept_per_group == np.bincount(result.indices // QWEN.n_tokens, minlength=GROUPS).tolist()
    if rule == "per-group":
        assert result.kept_per_group == [K // GROUPS] * GROUPS
    table = clip_token_positions(QWEN, FRAMES, second_per_grid(QWEN, 2.0))
    assert np.array_equal(result.positions, table[result.indices].numpy())
    assert result.effective_fps == 2.0 and result.timestamps == [0.0, 0.5, 1.0, 1.5]


def test_the_pruned_answer_is_spliced_at_the_clips_positions(graphs, demo_clip):
    """The pruned prompt is the text and the K kept rows; the full one all N rows: the same prompt either way."""
    result = run(str(graphs["per-group"]), None, QUESTION, video=str(demo_clip), compare_full=True, max_new_tokens=2, **QUIET)
    pruned, full = result.answers["pruned"], result.answers["full"]
    assert full.prompt_tokens - pruned.prompt_tokens == N - K
    assert pruned.kv_bytes * (full.prompt_tokens) == full.kv_bytes * pruned.prompt_tokens  # KV grows with the tokens


def test_a_clip_sampled_at_another_fps_gets_positions_rebuilt_for_it(graphs, tmp_path):
    """The demo clip at 8 fps, all 4 frames: Qwen's processor spaces the groups by 2 / 8 s, t = floor(g * 2 * 0.25) = 0."""
    clip = write_demo_clip(tmp_path / "fast.mp4", frames=FRAMES, size=QWEN.image_size, fps=8)
    lines = []
    result = run(str(graphs["per-group"]), None, QUESTION, video=str(clip), log=lines.append)
    assert result.effective_fps == 8.0 and set(result.positions[:, 0].tolist()) == {0}
    table = clip_token_positions(QWEN, FRAMES, second_per_grid(QWEN, 8.0))
    assert np.array_equal(result.positions, table[result.indices].numpy())
    assert any("sampled at 8 fps, the graph's positions assume 2 fps" in line for line in lines)


def test_positions_off_from_the_graphs_own_table_are_refused(graphs):
    """The check run applies to a clip graph's positions: frames 0-1 and 2-3 swapped in them is caught."""
    request = request_from_metadata(graph_metadata(graphs["per-group"]), "g.onnx")
    indices = np.array([0, 1, QWEN.n_tokens, QWEN.n_tokens + 1])
    honest = clip_token_positions(QWEN, FRAMES, request.second_per_grid_t)[torch.from_numpy(indices)]
    selection = Selection(indices, torch.zeros(4, QWEN.text_hidden), 0.0, "test", honest.clone())
    assert torch.equal(clip_positions(selection, request, request.fps, "g.onnx", QUIET["log"]), honest)
    swapped = honest.clone()
    swapped[:, 0] = honest[:, 0].flip(0)
    selection.positions = swapped
    with pytest.raises(FlashVLMError, match="returned position .* at 2 fps"):
        clip_positions(selection, request, request.fps, "g.onnx", QUIET["log"])


def test_group_counts_count_each_temporal_group():
    assert group_counts(np.array([0, 5, 255, 256, 300, 767]), 3, 256) == [3, 2, 1]
    assert group_counts(np.array([256, 257]), 3, 256) == [0, 2, 0]


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def _bad_files(folder: Path, demo_clip: Path) -> dict[str, Path]:
    from PIL import Image

    short = write_demo_clip(folder / "short.mp4", frames=2, size=QWEN.image_size, fps=2)
    text = folder / "notes.mp4"
    text.write_text("not a video\n")
    still = folder / "still.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(still)
    existing = folder / "taken.mp4"
    existing.write_bytes(demo_clip.read_bytes())
    return dict(short=short, text=text, still=still, missing=folder / "missing.mp4", existing=existing, clip=demo_clip)


BAD = [
    ("per-group", ["--video", "{short}"], ["has 2 frames but the graph takes 4", "longer clip"]),
    ("per-group", ["--video", "{text}"], ["is not a video FFmpeg can read", "pass a video file"]),
    ("per-group", ["--video", "{still}"], ["is a still image", "pass a video file"]),
    ("per-group", ["--video", "{missing}"], ["does not exist"]),
    ("image", ["--video", "{clip}"], ["is an image graph", "--video --frames 8"]),
    ("llava", ["--video", "{clip}"], ["--video: llava15-tiny has no video path", "qwen2.5-vl"]),
    ("per-group", ["--video", "{clip}", "--image", "{still}"], ["--image and --video exclude each other"]),
    (
        "per-group",
        ["--demo-video", "{out}/demo.mp4", "--demo-image", "{out}/demo.png"],
        ["--demo-image and --demo-video exclude"],
    ),
    ("per-group", ["--image", "{still}"], ["is a clip graph (4 frames)", "--video FILE"]),
    ("image", ["--image", "{still}", "--fps", "2"], ["--fps 2.0 samples a clip"]),
    ("per-group", ["--video", "{clip}", "--fps", "0"], ["--fps 0.0 is not a positive rate"]),
    ("per-group", ["--video", "{clip}", "--fps", "1"], ["--fps 1.0 samples 2 frames", "at least 2"]),
    ("per-group", ["--demo-video", "{existing}"], ["already exists", "--force"]),
    ("per-group", ["--demo-video", "{out}/demo.gif"], ["unknown container", ".mp4"]),
]


@pytest.fixture
def llava_graph(tmp_path, monkeypatch) -> Path:
    """A LLaVA-1.5 (tiny) full graph as run reads it: its metadata stands in (exporting one takes a minute with dynamo)."""
    from flashvlm_export.export.graphs import ExportRequest
    from flashvlm_export.models.weights import recorded_weights
    from flashvlm_export.runtime import graph_info, run_steps
    from flashvlm_export.selector.config import SelectorConfig

    llava = get_spec("llava15-tiny")
    graph = tmp_path / "llava.onnx"
    graph.write_bytes(b"")
    request = ExportRequest(spec=llava, budget=16, t_max=llava.t_max, batch=1, config=SelectorConfig(), selector_only=False)
    monkeypatch.setattr(run_steps, "graph_metadata_of", lambda g, e: ({"weights": "random:0"}, str(graph)))
    monkeypatch.setattr(
        graph_info, "graph_info", lambda meta, source: graph_info.GraphInfo(request, recorded_weights("random:0", source), source)
    )
    return graph


@pytest.mark.parametrize(
    "graph, flags, fragments",
    BAD,
    ids=[
        "too-few-frames", "unreadable", "still-image", "missing", "image-graph", "model-without-video", "video-and-image",
        "demo-video-and-demo-image", "image-on-a-clip-graph", "fps-without-video", "fps-zero", "fps-too-low",
        "demo-video-exists", "demo-video-container",
    ],
)  # fmt: skip
def test_bad_video_input_is_one_line_exit_2_and_writes_nothing(
    request, graphs, demo_clip, tmp_path, capsys, graph, flags, fragments
):
    (tmp_path / "in").mkdir()
    files = _bad_files(tmp_path / "in", demo_clip)
    out = tmp_path / "out"
    path = request.getfixturevalue("llava_graph") if graph == "llava" else graphs[graph]
    named = {key: str(value) for key, value in files.items()} | {"out": str(out)}
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    argv = ["run", "--graph", str(path), "--question", QUESTION, "--heatmap", str(out / "strip.png"), "--answer"]
    expect_one_line(capsys, [*argv, *[f.format(**named) for f in flags]], *fragments)
    assert not out.exists() and sorted(p.name for p in (tmp_path / "in").iterdir()) == before
