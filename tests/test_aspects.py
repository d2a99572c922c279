"""Photos as they come (issue 33): one split of several shapes (--aspects), the shape `run` picks per photo, parity at
every shape, and the one-line refusals of shapes a graph cannot take.

The split is exported once per test run (qwen2.5-vl-tiny, K = 32, TorchScript: seconds) and shared.
"""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from test_hardening import expect_error

from flashvlm_export.artifact_paths import SHARED_DATA
from flashvlm_export.cli import main
from flashvlm_export.errors import UsageError
from flashvlm_export.export.shapes import read_shape_set
from flashvlm_export.models.registry import get_spec
from flashvlm_export.models.shapes import DEFAULT_ASPECTS, choose_shape, default_shapes, parse_aspects, shape_key

from conftest import shared_folder

QWEN = get_spec("qwen2.5-vl-tiny")
FOLDER = "qwen2.5-vl-tiny_aspects_split"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    def build(folder):
        argv = ["--model", "qwen2.5-vl-tiny", "--budget", "32", "--random-weights", "--split", "--aspects"]
        assert main([*argv, "--out-dir", str(folder), "--exporter", "torchscript"]) == 0

    return shared_folder(tmp_path_factory, "aspects_split", build) / FOLDER


def photo(path, width: int, height: int):
    from flashvlm_export.runtime.image import demo_picture

    demo_picture(max(width, height)).resize((width, height)).save(path)
    return str(path)


def test_default_shapes_are_the_common_aspects_at_the_squares_token_count():
    """Each default shape is the token grid of its aspect at <= the square's N, computed here from the aspect alone."""
    shapes = default_shapes(QWEN)
    assert [s.image_shape for s in shapes][0] == (448, 448)
    for spec, (w, h) in zip(shapes, DEFAULT_ASPECTS, strict=True):
        rows, cols = spec.token_grid
        assert rows * cols <= QWEN.n_tokens and (rows + 1) * (cols + 1) > QWEN.n_tokens  # as large as fits
        assert abs((cols / rows) / (w / h) - 1) < 0.1


def test_an_aspects_split_holds_every_shape_and_the_encoders_weights_once(split):
    shape_set = read_shape_set(split)  # every hash and graph checked
    assert shape_set.keys == [shape_key(s) for s in default_shapes(QWEN)]
    where = {}  # (offset, length) of each external tensor, per graph
    for manifest in shape_set.manifests:
        record = json.loads(manifest.read_text())
        graph = onnx.load(str(split / record["encoder"]["onnx"]["path"]), load_external_data=False)
        spans = set()
        for tensor in graph.graph.initializer:
            info = {e.key: e.value for e in tensor.external_data}
            if info:
                assert info["location"] == SHARED_DATA
                spans.add((int(info["offset"]), int(info["length"])))
        where[manifest.name] = spans
    common = set.intersection(*where.values())
    assert common and len(common) >= len(where[next(iter(where))]) // 2  # the tower's weights: the same bytes for all
    copies = sum(length for spans in where.values() for _, length in spans)
    assert (split / SHARED_DATA).stat().st_size < copies / 3  # five shapes, not five copies of the weights
    assert not list(split.glob("*.onnx.data"))


@pytest.mark.parametrize(
    ("size", "expected"),
    [((640, 360), "336x588"), ((360, 640), "588x336"), ((500, 500), "448"), ((1024, 768), "364x504"), ((600, 800), "504x364")],
)
def test_each_photo_gets_the_shape_its_processor_comes_closest_to(size, expected):
    shapes = default_shapes(QWEN)
    assert choose_shape((size[1], size[0]), shapes).key == expected


def test_run_on_a_640x360_photo_picks_16_9_says_so_and_returns_it(split, tmp_path):
    from flashvlm_export.runtime import run

    lines = []
    result = run(None, photo(tmp_path / "wide.png", 640, 360), "What is on the table?", manifest=str(split), budget=32,
                 random_weights=True, heatmap=str(tmp_path / "kept.png"), log=lines.append)  # fmt: skip
    assert result.shape == "336x588" and result.n_tokens == 252
    (said,) = [line for line in lines if line.startswith("Shape:")]
    assert "640 wide x 360 high (16:9): shape 336x588 (588 wide x 336 high, about 16:9" in said, said
    assert "aspect error 1.6%" in said, said
    from PIL import Image

    from flashvlm_export.runtime.heatmap import FOOTER, GAP, TITLE

    with Image.open(tmp_path / "kept.png") as picture:  # five panels of the photo as the shape sees it: 588 x 336
        assert picture.size == (5 * 588 + 4 * GAP, TITLE + 336 + FOOTER)


def test_parity_passes_at_every_shape(split, tmp_path):
    from flashvlm_export.parity.job import NamedWeights, ParitySettings, check_manifest

    lines = []
    settings = ParitySettings(repeats=1, save_dir=None)
    assert check_manifest(split / "manifest.json", settings, NamedWeights(random_weights=True), log=lines.append)
    assert sum(line.startswith("Shape ") for line in lines) == 5


def _copy(split, tmp_path):
    target = tmp_path / FOLDER
    shutil.copytree(split, target)
    return target


PLANTS = ["shape manifest edited", "shared weights changed", "shape key not its own", "one shape", "manifests exchanged"]


@pytest.mark.parametrize("plant", PLANTS)
def test_a_tampered_aspects_split_is_refused_in_one_line(split, tmp_path, plant):
    folder = _copy(split, tmp_path)
    top = folder / "manifest.json"
    record = json.loads(top.read_text())
    if plant == "shape manifest edited":
        path = folder / record["shapes"][1]["manifest"]["path"]
        path.write_text(path.read_text().replace('"t_max": 256', '"t_max": 255'))
    elif plant == "shared weights changed":
        with open(folder / SHARED_DATA, "r+b") as f:
            f.seek(100)
            f.write(b"\x01\x02\x03\x04")
    elif plant == "shape key not its own":
        record["shapes"][1]["shape"] = "448x504"
        top.write_text(json.dumps(record))
    elif plant == "manifests exchanged":  # hashes intact: the encoders' own metadata say which shape they are
        first, second = record["shapes"][1]["manifest"], record["shapes"][2]["manifest"]
        record["shapes"][1]["manifest"], record["shapes"][2]["manifest"] = second, first
        top.write_text(json.dumps(record))
    else:
        record["shapes"] = record["shapes"][:1]
        top.write_text(json.dumps(record))
    with pytest.raises(UsageError) as info:
        read_shape_set(folder)
    assert "\n" not in str(info.value)


def test_one_shapes_manifest_alone_checks_the_shared_weights_it_reads(split, tmp_path):
    from flashvlm_export.export.manifest import read_manifest

    folder = _copy(split, tmp_path)
    read_manifest(folder / "manifest_448.json")  # as copied: every hash holds
    with open(folder / SHARED_DATA, "r+b") as f:
        f.seek(64)
        f.write(b"\xff\xfe")
    with pytest.raises(UsageError, match="shared weights") as info:
        read_manifest(folder / "manifest_448.json")
    assert "\n" not in str(info.value)


def test_the_shared_weights_are_this_tools_only_where_its_manifest_lists_them(split, tmp_path):
    from flashvlm_export.artifacts.ownership import is_own

    assert is_own(split / SHARED_DATA)
    stranger = tmp_path / SHARED_DATA  # the same name in a folder whose manifest does not list it: the user's
    stranger.write_bytes(b"weights")
    (tmp_path / "manifest.json").write_text(json.dumps({"producer": "flashvlm-export", "shared_weights": None}))
    assert not is_own(stranger)


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (
            ["--image-size", "450x448"],
            ["--image-size 450x448 (height 450)", "multiple of 28", "use --image-size 448x448 or 476x448"],
        ),
        (["--image-size", "448x"], ["--image-size '448x'", "HEIGHTxWIDTH"]),
        (["--image-size", "1820x1792"], ["N=4160", "TopK limit 3840", "or less"]),
        (["--aspects", "448x448,448"], ["lists the shape 448 twice"]),
        (["--aspects", "448x448,392x5x88"], ["'392x5x88'", "HEIGHTxWIDTH"]),
        (["--aspects", "448,392x590"], ["392x590", "multiple of 28"]),
        (["--aspects", "4:0,16:9"], ["'4:0'", "W:H"]),
        (["--aspects", "3360x3360,448"], ["TopK limit"]),
        (["--aspects", "448"], ["one shape", "--image-size 448"]),
        (["--aspects", "--fused"], ["drop --fused"]),
        (["--aspects", "--image-size", "364x504"], ["a square --image-size"]),
    ],
)
def test_a_shape_the_graphs_cannot_take_is_one_line_exit_2_and_nothing_written(capsys, tmp_path, extra, fragments):
    argv = ["--model", "qwen2.5-vl-tiny", "--budget", "32", "--random-weights", "--split", "--out-dir", str(tmp_path / "o")]
    expect_error(capsys, [*argv, *extra], *fragments)
    assert not (tmp_path / "o").exists()


def test_aspects_on_a_one_shape_model_is_refused():
    with pytest.raises(UsageError, match="takes one 336 px shape"):
        parse_aspects("", get_spec("llava15-tiny"))


def test_llava_next_aspects_are_its_checkpoints_grids_chosen_as_its_processor_chooses():
    from transformers.image_processing_utils import select_best_resolution

    spec = get_spec("llava-next-tiny")
    shapes = default_shapes(spec)
    assert sorted(s.grid for s in shapes) == sorted({spec.pinpoint_grid(i) for i in range(len(spec.pinpoints))})
    for height, width in [(360, 640), (1000, 300), (500, 500), (300, 1000)]:
        best = select_best_resolution((height, width), [list(p) for p in spec.pinpoints])  # the processor's own pick
        chosen = shapes[choose_shape((height, width), shapes).index]
        assert (chosen.grid[0] * spec.image_size, chosen.grid[1] * spec.image_size) == tuple(best)


# ---- LLaVA-NeXT: a split of the checkpoint's grids, chosen per photo as its processor chooses -----------------------


@pytest.fixture(scope="module")
def next_split(tmp_path_factory):
    def build(folder):
        argv = ["--model", "llava-next-tiny", "--random-weights", "--split", "--aspects", "1x2,2x1,1x3"]
        assert main([*argv, "--out-dir", str(folder), "--exporter", "torchscript"]) == 0

    return shared_folder(tmp_path_factory, "next_aspects_split", build) / "llava-next-tiny_aspects_split"


def test_a_llava_next_split_of_grids_runs_the_processors_grid_and_passes_parity_at_each(next_split, tmp_path):
    from transformers.image_processing_utils import select_best_resolution

    from flashvlm_export.parity.job import NamedWeights, ParitySettings, check_manifest
    from flashvlm_export.runtime import run

    spec = get_spec("llava-next-tiny")
    pins = [[r * spec.image_size, c * spec.image_size] for r, c in [(1, 2), (2, 1), (1, 3)]]
    for width, height in [(700, 300), (300, 800)]:
        best = select_best_resolution((height, width), pins)  # the processor's own pick among the split's grids
        lines = []
        result = run(None, photo(tmp_path / f"p{width}.png", width, height), "What is it?", manifest=str(next_split),
                     random_weights=True, log=lines.append)  # fmt: skip
        assert result.shape == f"{best[0] // spec.image_size}x{best[1] // spec.image_size}", lines
        assert result.n_tokens == (1 + best[0] * best[1] // spec.image_size**2) * spec.crop_tokens
    assert check_manifest(next_split, ParitySettings(repeats=1), NamedWeights(random_weights=True), log=lambda _: None)


def test_triton_refuses_grids_it_cannot_tell_apart_by_their_pixels(next_split, tmp_path, capsys):
    """1x2 and 2x1 both take a base image and two crops, (3, 3, 336, 336): a Triton entry routing by pixel shape
    cannot tell them apart, so the repository is refused in one line naming both."""
    expect_error(capsys, ["triton", "--manifest", str(next_split), "--out", str(tmp_path / "repo")], "1x2 and 2x1")
    assert not (tmp_path / "repo").exists()


# ---- --image-size HxW through the other export paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [["--budget-range", "16..64"], ["--budget", "32", "--plugin"], ["--budget", "32", "--precision", "fp16"]],
    ids=["budget-range", "plugin", "fp16-encoder"],
)
def test_a_non_square_graph_passes_parity_through_every_export_path(tmp_path, flags):
    out = tmp_path / "g"
    argv = ["--model", "qwen2.5-vl-tiny", "--image-size", "364x504", "--random-weights", "--out-dir", str(out), *flags]
    exporter = "dynamo" if "--plugin" in flags else "torchscript"  # TorchScript cannot write the plugin node
    assert main([*argv, "--exporter", exporter]) == 0
    (graph,) = out.glob("qwen2.5-vl-tiny-364x504px_*.onnx")
    assert main(["parity", "--graph", str(graph), "--random-weights", "--repeats", "1", "--no-save"]) == 0
