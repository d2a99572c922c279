"""A clip graph's metadata is checked when parity or run reads it: frames, n_tokens and fps that do not agree, and
`frames` on a model without a video path, are each one line, exit 2 (export/metadata.py request_fields). Planted:
a small selector graph's metadata edited in a temporary copy."""

from pathlib import Path

import onnx
import pytest

from flashvlm_export.cli import main

from conftest import expect_one_line

REEXPORT = "re-export the graph with flashvlm-export"


def export(folder: Path, name: str, *flags: str) -> Path:
    graph = folder / f"{name}.onnx"
    assert main([*flags, "--selector-only", "--exporter", "torchscript", "--out", str(graph)]) == 0
    return graph


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clip_metadata")
    return {
        "qwen": export(folder, "qwen", "--model", "qwen2.5-vl-tiny", "--video", "--frames", "4", "--budget", "64"),
        "llava": export(folder, "llava", "--model", "llava15-tiny", "--n-tokens", "16", "--budget", "8"),
    }


def edited(graph: Path, folder: Path, **values) -> Path:
    """A copy of `graph` (no sidecar) with these metadata values set."""
    model = onnx.load(str(graph))
    props = {p.key: p.value for p in model.metadata_props} | {key: str(value) for key, value in values.items()}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    copy = folder / f"edited-{graph.name}"
    onnx.save(model, str(copy))
    return copy


CASES = {
    "frames": ("qwen", dict(frames=6), ["'n_tokens'", "512 is not 6 frames / 2 x 256 tokens"]),
    "odd-frames": ("qwen", dict(frames=5), ["'n_tokens'", "5 frames / 2"]),
    "n-tokens": ("qwen", dict(n_tokens=768), ["'n_tokens'", "768 is not 4 frames / 2 x 256 tokens"]),
    "fps": ("qwen", dict(fps=0), ["'fps'", "0.0 is not a positive frame rate"]),
    "frames-without-video": (
        "llava",
        dict(frames=8, video_budget="joint", fps=2.0),
        ["'frames'", "llava15-tiny has no video path"],
    ),
}


@pytest.mark.parametrize("command", ["parity", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_clip_metadata_that_does_not_agree_is_one_line_exit_2(graphs, tmp_path, capsys, case, command):
    model, values, fragments = CASES[case]
    graph = edited(graphs[model], tmp_path, **values)
    tail = (
        ["--no-save", "--repeats", "1"]
        if command == "parity"
        else ["--video", str(tmp_path / "clip.mp4"), "--question", "what moves?"]
    )
    expect_one_line(
        capsys, [command, "--graph", str(graph), *tail], f"{graph} has malformed flashvlm metadata", REEXPORT, *fragments
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [graph.name]  # nothing written
