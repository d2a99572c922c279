"""Qwen2.5-VL clips on the tiny model: the clip encoder against transformers' own tower on pixel_values_videos, both
budget rules through export and parity, planted faults caught, bad input refused in one line (ALGORITHM.md "Batches
and other models", Video).

Kept fast for CI: the tiny model, 4 frames (2 temporal groups of 256 tokens), batch 1, one parity repeat; each graph
is exported once per module with TorchScript, and the random weights are built once.
"""

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from flashvlm_export.cli import main
from flashvlm_export.export.graphs import ExportRequest, request_from_metadata
from flashvlm_export.export.interface import INDICES, PIXEL_VALUES, POSITIONS
from flashvlm_export.export.metadata import graph_metadata
from flashvlm_export.models.positions import clip_token_positions, token_positions
from flashvlm_export.models.qwen2_5_vl import patchify_clip, random_parts, video_processor_patchify
from flashvlm_export.models.registry import get_spec
from flashvlm_export.parity.backends import OnnxRuntime
from flashvlm_export.parity.compare import max_relative_error
from flashvlm_export.parity.run import reference_backends, run_parity
from flashvlm_export.selector.clip import ClipLayout, StaticClipSelector, clip_decide, reference_clip_select
from flashvlm_export.selector.config import SelectorConfig

from conftest import expect_one_line, openvino_parity_passes, selector_inputs

QWEN = get_spec("qwen2.5-vl-tiny")
FRAMES = 4  # 2 temporal groups: N = 512
BUDGET = 64  # per-group: 32 a group
QUIET = dict(log=lambda _: None)
ENCODER_BOUND = 1e-5  # as tests/test_qwen.py's for images (measured 0 on the tiny model at 448 px)


@pytest.fixture(scope="module")
def parts():
    return random_parts(QWEN, seed=0)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qwen_video")


def export(out_dir: Path, name: str, *flags: str) -> Path:
    graph = out_dir / f"{name}.onnx"
    argv = ["--model", QWEN.name, "--video", "--frames", str(FRAMES), "--budget", str(BUDGET), "--random-weights"]
    assert main([*argv, "--exporter", "torchscript", "--out", str(graph), *flags]) == 0
    return graph


@pytest.fixture(scope="module")
def per_group(out_dir) -> Path:
    return export(out_dir, "per_group")


@pytest.fixture(scope="module")
def joint(out_dir) -> Path:
    return export(out_dir, "joint", "--video-budget", "joint")


# ---------------------------------------------------------------- the clip encoder


def test_the_processor_patchify_copy_is_the_installed_transformers_source():
    """models/qwen2_5_vl.py copies Qwen2VLVideoProcessor.patchify (its module needs torchvision): same statements."""
    import transformers.models.qwen2_vl as package

    source = (Path(package.__file__).parent / "video_processing_qwen2_vl.py").read_text()
    theirs = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "patchify")
    ours = ast.parse(inspect.getsource(video_processor_patchify)).body[0]
    body = [ast.dump(s) for s in theirs.body if not isinstance(s, ast.Expr)]  # without the docstring
    assert [ast.dump(s) for s in ours.body[1:]] == body


def test_clip_patchify_equals_the_video_processors_exactly():
    clips = torch.randn(2, FRAMES, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    theirs, *_ = video_processor_patchify(clips, QWEN.patch_size, QWEN.merge, 2)
    assert torch.equal(patchify_clip(clips, QWEN.patch_size, QWEN.merge, 2), theirs.reshape(-1, theirs.shape[-1]))


def test_clip_encoder_equals_transformers_tower_on_pixel_values_videos_within_bound(parts):
    clips = torch.randn(2, FRAMES, 3, QWEN.image_size, QWEN.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x, a, p = parts.clip_encoder(FRAMES)(clips)
    rx, ra, rp = parts.reference_clip_features(clips)
    n = FRAMES // 2 * QWEN.n_tokens
    assert x.shape == p.shape == (2, n, QWEN.text_hidden) and a.shape == (2, n)
    for name, got, want in [("X", x, rx), ("a", a, ra), ("P(X)", p, rp)]:
        assert max_relative_error(got.numpy(), want.numpy()) <= ENCODER_BOUND, name


def test_a_clip_of_one_repeated_frame_per_group_encodes_as_those_images(parts):
    """Each temporal group is one Qwen image: a group whose two frames are one image gives that image's X and a."""
    images = torch.randn(2, 3, QWEN.image_size, QWEN.image_size, generator=torch.Generator().manual_seed(2))
    clip = images.repeat_interleave(2, dim=0)[None]  # (1, 4, 3, H, W): frames a, a, b, b
    with torch.no_grad():
        x, a, _ = parts.clip_encoder(FRAMES)(clip)
        xi, ai, _ = parts.encoder()(images)
    assert max_relative_error(x.numpy(), xi.reshape(1, -1, xi.shape[-1]).numpy()) <= ENCODER_BOUND
    assert max_relative_error(a.numpy(), ai.reshape(1, -1).numpy()) <= ENCODER_BOUND


def test_clip_positions_put_each_group_at_its_temporal_position():
    table = clip_token_positions(QWEN, 8, second_per_grid_t=1.0)  # 2 fps: tokens_per_second 2 x 1 s a group
    n = QWEN.n_tokens
    assert table.shape == (4 * n, 3)
    assert table[::n, 0].tolist() == [0, 2, 4, 6]
    assert all(torch.equal(table[g * n : (g + 1) * n, 1:], token_positions(QWEN)[:, 1:]) for g in range(4))
    assert clip_token_positions(QWEN, 8, second_per_grid_t=2 / 3)[::n, 0].tolist() == [0, 1, 2, 4]  # 3 fps: floor


# ---------------------------------------------------------------- the selector under both rules


@pytest.mark.parametrize("rule", ["per-group", "joint"])
def test_static_clip_selector_decides_as_the_reference_on_its_own_scores(rule):
    layout = ClipLayout(2, 128, rule)
    x, a, p, text, mask = selector_inputs(batch=2, n=256, dv=32, dl=32, t_max=8)
    selector = StaticClipSelector(layout, 32, SelectorConfig(gate="norm"), verification=True)
    with torch.no_grad():
        indices, _, _, fused, gram = selector(x, a, p, text, mask)
    for b in range(2):
        assert torch.equal(clip_decide(fused[b], gram[b], layout, selector.schedule), indices[b])
        assert torch.equal(indices[b], torch.sort(indices[b]).values)
    if rule == "per-group":
        assert torch.bincount(indices[0] // 128).tolist() == [16, 16]


def test_per_group_selects_each_group_as_an_image():
    layout = ClipLayout(2, 128, "per-group")
    x, a, p, text, mask = selector_inputs(batch=1, n=256, dv=32, dl=32, t_max=8)
    t = text[0][mask[0]]
    got = reference_clip_select(x[0], a[0], p[0], t, 32, SelectorConfig(), layout)
    from flashvlm_export.selector.reference import reference_select

    halves = [reference_select(x[0][s], a[0][s], p[0][s], t, 16, SelectorConfig()) + s.start for s in layout.group_slices()]
    assert torch.equal(got, torch.cat(halves))


# ---------------------------------------------------------------- export and parity


@pytest.mark.parametrize("name", ["per_group", "joint"])
def test_a_clip_graph_takes_frames_and_returns_positions(request, name):
    import onnx

    graph = request.getfixturevalue(name)
    model = onnx.load(str(graph), load_external_data=False)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*model.graph.input, *model.graph.output]}
    assert shapes[PIXEL_VALUES] == [1, FRAMES, 3, QWEN.image_size, QWEN.image_size]
    assert shapes[INDICES] == [1, BUDGET] and shapes[POSITIONS] == [1, BUDGET, 3]


def test_the_joint_graph_passes_the_parity_command(joint, capsys):
    assert main(["parity", "--graph", str(joint), "--repeats", "1", "--no-save"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASSED")


def test_the_metadata_records_frames_rule_and_temporal_spacing(per_group, joint):
    meta = graph_metadata(per_group)
    assert (meta["frames"], meta["video_budget"], meta["temporal_groups"], meta["fps"], meta["second_per_grid_t"]) == (
        str(FRAMES), "per-group", "2", "2.0", "1.0",
    )  # fmt: skip
    assert graph_metadata(joint)["video_budget"] == "joint"
    request = request_from_metadata(meta, str(per_group))
    assert request.frames == FRAMES and request.tokens == 2 * QWEN.n_tokens and request.n_tokens is None


class Planted:
    def __init__(self, honest, corrupt, name):
        self.honest, self.corrupt, self.name = honest, corrupt, name

    def infer(self, feeds):
        return self.corrupt({k: v.copy() for k, v in self.honest.infer(feeds).items()})


def swap_two_frames_in_positions(out):
    """The kept tokens of temporal groups 0 and 1 given each other's t: frames swapped in the positions."""
    t = out[POSITIONS][..., 0]
    first, second = t == 0, t == 2
    t[first], t[second] = 2, 0
    return out


def one_group_budget_off_by_one(out):
    """Group 0 keeps one token fewer and group 1 one more: the per-group budget broken, the total kept."""
    n = QWEN.n_tokens
    for row in out[INDICES]:
        dropped = np.setdiff1d(np.arange(n, 2 * n), row)[0]
        row[0] = dropped
        row.sort()
    return out


@pytest.fixture(scope="module")
def planted(per_group, parts):
    meta = graph_metadata(per_group)
    request = ExportRequest(**{**request_from_metadata(meta, str(per_group)).__dict__})
    _, honest = reference_backends(request, parts)
    backends = [
        honest,
        OnnxRuntime(per_group, request.interface(), scratch=per_group.parent),
        Planted(honest, swap_two_frames_in_positions, "frames-swapped"),
        Planted(honest, one_group_budget_off_by_one, "group-budget-off-by-one"),
    ]
    return {r.backend: r for r in run_parity(per_group, parts, repeats=1, backends=backends, **QUIET)}


def test_the_per_group_graph_and_its_torch_module_pass_parity(planted):
    honest = [r for name, r in planted.items() if name == "static-torch" or name.startswith("onnxruntime")]
    assert len(honest) == 2 and all(honest), [r.lines() for r in honest]


def test_two_frames_swapped_in_the_positions_fail(planted):
    report = planted["frames-swapped"]
    assert not report and report.arithmetic_passed
    assert all("positions are not the kept tokens' own" in f for f in report.decision_failures)


def test_a_groups_budget_off_by_one_fails(planted):
    report = planted["group-budget-off-by-one"]
    assert not report
    assert any("the per-group rule gives each 32" in f and "[31, 33]" in f for f in report.decision_failures)


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--model", "llava15-tiny", "--video"], ["--video: llava15-tiny has no video path", "qwen2.5-vl"]),
        (["--model", QWEN.name, "--video", "--frames", "5"], ["--frames 5 must be an even number", "--frames 6"]),
        (["--model", QWEN.name, "--video", "--frames", "0"], ["--frames 0", "--frames 2"]),
        (
            ["--model", QWEN.name, "--video", "--frames", "8", "--budget", "66"],
            ["--budget 66", "4 frame groups", "64 or 68", "joint"],
        ),
        (["--model", QWEN.name, "--frames", "8"], ["--frames 8 applies to clips; add --video"]),
        (["--model", QWEN.name, "--video", "--frames", "32", "--video-budget", "joint"], ["N=4096", "TopK", "per-group"]),
        (["--model", QWEN.name, "--video", "--fps", "0"], ["--fps 0.0 must be a positive frame rate"]),
    ],
    ids=[
        "no-video-path",
        "odd-frames",
        "too-few-frames",
        "budget-not-divisible",
        "frames-without-video",
        "joint-over-topk",
        "fps",
    ],
)
def test_bad_video_export_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, flags, fragments):
    expect_one_line(capsys, [*flags, "--random-weights", "--out-dir", str(tmp_path / "out")], *fragments)
    assert not (tmp_path / "out").exists()


def test_a_clip_too_long_to_trace_names_frames_and_the_most_that_fit(capsys, monkeypatch):
    """The encoder's working set grows with the clip's temporal groups: the fix names --frames, the largest count
    whose working set fits. The machine's memory is pinned (8 GiB), so the bound is the same on every CI machine."""
    from flashvlm_export import limits

    monkeypatch.setattr(limits, "memory_bytes", lambda: 8 * 2**30)
    assert main(["--model", "qwen2.5-vl-7b", "--video", "--frames", "32", "--budget", "256", "--random-weights"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: --frames 32 needs" in err, err
    frames = int(err.split("use --frames ")[1].split()[0])
    spec = get_spec("qwen2.5-vl-7b")
    fits = limits.bytes_per_image(spec, frames // 2 * spec.n_tokens, spec.t_max, False)
    more = limits.bytes_per_image(spec, (frames // 2 + 1) * spec.n_tokens, spec.t_max, False)
    assert frames % 2 == 0 and fits <= 8 * 2**30 < more  # the largest that fits


def test_clip_graph_passes_parity_on_openvino(capsys, per_group):
    """OpenVINO as a third arithmetic (issue 35): a clip's temporal groups, each at its own budget."""
    openvino_parity_passes(capsys, "--graph", per_group, "--random-weights")
