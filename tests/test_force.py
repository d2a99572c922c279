"""--force replaces only what this tool wrote (artifacts/ownership.py; docs/ARTIFACTS.md, "What --force replaces").

For every writer that honours --force (graphs, splits, engines and their sidecars, GGUF, Triton repositories, the
heatmap, the demo picture and clip) and every one that replaces its own earlier records without it (bench, parity),
a user's file planted at or inside the target is refused in one line and survives, nothing else is written, and the
tool's own earlier output is still replaced. The "user's files" are real files of the same format made by their own
libraries (onnx.helper, Pillow, gguf, PyAV), so only the tool's stamp tells them apart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from flashvlm_export.artifacts import ownership
from flashvlm_export.cli import main
from flashvlm_export.errors import UsageError

from conftest import copy_split, expect_one_line

FAST = ["--model", "llava15-tiny", "--selector-only", "--budget", "560", "--exporter", "torchscript"]
TINY_SPLIT = ["--model", "llava15-tiny", "--budget", "568,560", "--random-weights"]  # one and two rounds: a quick export
REFUSED = "not written by flashvlm-export"


def snapshot(folder: Path) -> dict:
    """Every entry under folder: a link as its target, a file as its bytes."""
    return {
        p.relative_to(folder).as_posix(): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def users_graph(path: Path) -> Path:
    """A real ONNX graph made with onnx.helper (an Identity), not by this tool."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "mine", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]
    )
    onnx.save(helper.make_model(graph, producer_name="someone"), str(path))
    return path


def users_png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def users_json(path: Path) -> Path:
    path.write_text('{"mine": true}\n')
    return path


# ---------------------------------------------------------------- graphs


@pytest.mark.parametrize("planted", ["g.onnx", "g.json", "link"])
def test_graph_force_refuses_a_users_file_at_the_graph_or_its_sidecar(planted, tmp_path, capsys):
    if planted == "link":
        users_graph(tmp_path / "theirs.onnx")
        (tmp_path / "g.onnx").symlink_to("theirs.onnx")
        shown = "is a symbolic link"
    else:
        (users_graph if planted.endswith(".onnx") else users_json)(tmp_path / planted)
        shown = REFUSED
    before = snapshot(tmp_path)
    expect_one_line(capsys, [*FAST, "--force", "--out", str(tmp_path / "g.onnx")], shown, "--out")
    assert snapshot(tmp_path) == before  # the user's file as it was, and nothing written beside it


def test_graph_force_replaces_its_own_earlier_graph_and_sidecar(tmp_path):
    import onnx

    target = tmp_path / "g.onnx"
    assert main([*FAST, "--out", str(target)]) == 0
    first = os.stat(target).st_ino
    assert main([*FAST, "--force", "--out", str(target)]) == 0
    assert os.stat(target).st_ino != first  # a new file took the name
    props = {p.key: p.value for p in onnx.load(str(target), load_external_data=False).metadata_props}
    assert props["producer"] == ownership.PRODUCER  # read back by onnx itself, not by the recogniser
    assert json.loads((tmp_path / "g.json").read_text())["producer"] == ownership.PRODUCER


def test_graph_force_refuses_a_users_file_at_the_external_data_name(tmp_path, capsys):
    """g.onnx.data is the tool's only while the tool's g.onnx keeps its tensors there (graphs past 2 GB do)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    target = tmp_path / "g.onnx"
    assert main([*FAST, "--out", str(target)]) == 0  # the tool's graph, its weights inline
    (tmp_path / "g.onnx.data").write_bytes(b"my data")
    before = snapshot(tmp_path)
    expect_one_line(capsys, [*FAST, "--force", "--out", str(target)], str(tmp_path / "g.onnx.data"), REFUSED)
    assert snapshot(tmp_path) == before
    # a large graph's layout, built small: the stamp export_onnx writes, the tensor's data in g.onnx.data (onnx's writer)
    weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], [y], [weight]))
    model.metadata_props.add(key="producer", value=ownership.PRODUCER)
    big = tmp_path / "big" / "g.onnx"
    big.parent.mkdir()
    onnx.save(model, str(big), save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    assert ownership.is_own(big.parent / "g.onnx.data")


# ---------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split")
    assert main([*TINY_SPLIT, "--out-dir", str(out)]) == 0
    return out / "llava15-tiny_split" / "manifest.json"


@pytest.mark.parametrize("planted", ["manifest.json", "encoder.onnx", "selector_b560.json"])
def test_split_force_refuses_a_users_file_at_any_of_its_names(planted, tmp_path, capsys):
    folder = tmp_path / "llava15-tiny_split"
    folder.mkdir()
    (users_graph if planted.endswith(".onnx") else users_json)(folder / planted)
    before = snapshot(tmp_path)
    expect_one_line(capsys, [*TINY_SPLIT, "--force", "--out-dir", str(tmp_path)], str(folder / planted), REFUSED)
    assert snapshot(tmp_path) == before


def test_split_force_refuses_a_split_folder_holding_a_users_file_and_replaces_its_own(split, tmp_path, capsys):
    from flashvlm_export.export.manifest import read_manifest

    manifest = copy_split(split, tmp_path)
    for inside in ("notes.txt", "engines/notes.txt"):  # beside the split's files, or in its engines folder
        planted = manifest.parent / inside
        planted.parent.mkdir(exist_ok=True)
        planted.write_text("mine\n")
        before = snapshot(tmp_path)
        expect_one_line(capsys, [*TINY_SPLIT, "--force", "--out-dir", str(tmp_path)], str(planted), "did not write")
        assert snapshot(tmp_path) == before
        planted.unlink()
    assert main([*TINY_SPLIT, "--force", "--out-dir", str(tmp_path)]) == 0  # only its own files there: replaced
    assert read_manifest(manifest).budgets == (568, 560)  # every hash of the new split checks


# ---------------------------------------------------------------- engines (the rule; TensorRT builds need a GPU)


def _engine_sidecar(engine: Path, built_by: str) -> None:
    from flashvlm_export.trt.sidecar import engine_record

    users_graph(engine.with_suffix(".onnx"))  # the graph it was built from (its sha256 is recorded)
    record = engine_record(
        engine_path=engine, onnx_path=engine.with_suffix(".onnx"), graph_meta={"budget": "64"}, tensorrt_version="10",
        gpu_name="gpu", compute_capability="9.0", precision_path="", plugin_library=None, built_by=built_by, build_seconds=1.0,
    )  # fmt: skip
    engine.with_suffix(".json").write_text(json.dumps(record))


@pytest.mark.parametrize("sidecar", [None, "trtexec", "flashvlm-export"])
def test_engine_force_replaces_only_an_engine_this_tool_built(sidecar, tmp_path):
    from flashvlm_export.artifacts.staging import check_writable

    engine = tmp_path / "x.plan"
    engine.write_bytes(b"engine bytes")
    if sidecar is not None:
        _engine_sidecar(engine, sidecar)
    if sidecar == "flashvlm-export":
        check_writable([engine], force=True, flag="--engine-dir")  # this tool's engine and sidecar: --force may replace them
    else:  # no sidecar, or trtexec's engine (its sidecar is ours, the engine is not)
        with pytest.raises(UsageError, match=REFUSED):
            check_writable([engine], force=True, flag="--engine-dir")
    assert engine.read_bytes() == b"engine bytes"


def test_sidecar_force_refuses_a_users_json_beside_the_engine(tmp_path, capsys):
    engine = tmp_path / "x.plan"
    engine.write_bytes(b"trtexec's engine")
    users_json(tmp_path / "x.json")
    before = snapshot(tmp_path)
    expect_one_line(
        capsys, ["sidecar", "--engine", str(engine), "--onnx", str(users_graph(tmp_path / "g.onnx")), "--force"], REFUSED
    )
    assert snapshot(tmp_path) == {**before, "g.onnx": (tmp_path / "g.onnx").read_bytes()}


# ---------------------------------------------------------------- GGUF


def test_gguf_force_refuses_a_users_gguf_and_replaces_its_own(tmp_path, capsys):
    gguf = pytest.importorskip("gguf", reason="the gguf package writes GGUF files (pip install -e '.[llama]')")
    theirs = tmp_path / "theirs.gguf"
    writer = gguf.GGUFWriter(str(theirs), "llama")  # a real GGUF, from gguf itself
    writer.add_name("mine")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    before = snapshot(tmp_path)
    expect_one_line(capsys, ["gguf", "--model", "llava15-tiny", "--out", str(theirs), "--force"], REFUSED)
    assert snapshot(tmp_path) == before
    own = tmp_path / "own.gguf"
    assert main(["gguf", "--model", "llava15-tiny", "--out", str(own)]) == 0
    assert main(["gguf", "--model", "llava15-tiny", "--out", str(own), "--force"]) == 0
    field = gguf.GGUFReader(str(own)).fields[ownership.GGUF_KEY]
    assert bytes(field.parts[field.data[0]]).decode() == ownership.PRODUCER


# ---------------------------------------------------------------- Triton repositories


def test_triton_force_refuses_a_folder_holding_a_users_file(split, tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("hi\n")
    expect_one_line(
        capsys, ["triton", "--manifest", str(split), "--out", str(out), "--force"], str(out / "keep.txt"), "did not write"
    )
    assert snapshot(out) == {"keep.txt": b"hi\n"}


def test_triton_force_replaces_its_own_repository_but_not_one_a_user_added_to_or_edited(split, tmp_path, capsys):
    out = tmp_path / "repo"
    argv = ["triton", "--manifest", str(split), "--out", str(out), "--force"]
    assert main(argv[:-1]) == 0
    assert main(argv) == 0  # its own, unchanged: replaced
    (out / "flashvlm" / "1" / "notes.txt").write_text("mine\n")
    before = snapshot(out)
    expect_one_line(capsys, argv, str(out / "flashvlm" / "1" / "notes.txt"), "did not write")
    assert snapshot(out) == before
    (out / "flashvlm" / "1" / "notes.txt").unlink()
    config = out / "flashvlm" / "config.pbtxt"
    config.write_text(config.read_text() + "# tuned by hand\n")
    before = snapshot(out)
    expect_one_line(capsys, argv, str(config), "changed since")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging left behind


# ---------------------------------------------------------------- run: the heatmap, the demo picture and clip


@pytest.fixture(scope="module")
def full_graph(tmp_path_factory, tiny_parts) -> Path:
    from flashvlm_export.export.graphs import ExportRequest, export_graph
    from flashvlm_export.models.registry import get_spec
    from flashvlm_export.selector.config import SelectorConfig

    spec = get_spec("llava15-tiny")
    request = ExportRequest(
        spec=spec, budget=568, t_max=spec.t_max, batch=1, config=SelectorConfig(), selector_only=False
    )  # one round
    return export_graph(request, tmp_path_factory.mktemp("force_graph") / "g.onnx", tiny_parts, "random:0")


@pytest.mark.parametrize("flag", ["--heatmap", "--demo-image"])
def test_run_force_refuses_a_users_picture_and_replaces_its_own(flag, full_graph, tmp_path, capsys):
    theirs = users_png(tmp_path / "theirs.png")
    base = ["run", "--graph", str(full_graph), "--random-weights", "--question", "What is it?"]
    picture = ["--demo-image", str(tmp_path / "demo.png")] if flag == "--heatmap" else []
    before = snapshot(tmp_path)
    expect_one_line(capsys, [*base, *picture, flag, str(theirs), "--force"], str(theirs), REFUSED)
    assert snapshot(tmp_path) == before
    own = tmp_path / "own.png"
    argv = [*base, *picture, flag, str(own)]
    assert main(argv) == 0
    assert main([*argv, "--force"]) == 0
    from PIL import Image

    with Image.open(own) as png:  # the stamp, read back by Pillow
        assert png.text[ownership.PNG_KEY] == ownership.PRODUCER


def test_demo_clip_force_refuses_a_users_clip_and_replaces_its_own(tmp_path):
    import av

    from flashvlm_export.runtime.video import write_demo_clip

    theirs = tmp_path / "theirs.avi"
    with av.open(str(theirs), mode="w", format="avi") as container:  # a real clip, by PyAV alone: no stamp
        stream = container.add_stream("mpeg4", rate=8)
        stream.height = stream.width = 16
        stream.pix_fmt = "yuv420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match=REFUSED):
        write_demo_clip(theirs, frames=2, size=16, force=True)
    assert snapshot(tmp_path) == before
    own = write_demo_clip(tmp_path / "own.avi", frames=2, size=16)
    write_demo_clip(own, frames=4, size=16, force=True)
    with av.open(str(own)) as container:
        assert container.metadata[ownership.VIDEO_KEY] == ownership.PRODUCER and container.streams.video[0].frames == 4


def test_run_video_checks_refuse_a_users_strip_or_clip_before_any_work(tmp_path):
    """run --video's own checks (the strip --heatmap, --demo-video), before the clip graph is loaded."""
    from flashvlm_export.runtime.clip_run import _check_demo_clip, _check_strip

    strip, clip = users_png(tmp_path / "strip.png"), tmp_path / "clip.avi"
    clip.write_bytes(b"my holiday")
    before = snapshot(tmp_path)
    for check, path in ((_check_strip, strip), (_check_demo_clip, clip)):
        with pytest.raises(UsageError, match=REFUSED):
            check(path, True)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- records replaced without --force: bench, parity


def test_bench_replaces_its_own_report_but_not_a_users_file_of_the_same_name(tmp_path):
    from flashvlm_export.bench import report
    from flashvlm_export.bench.suite import machine

    results = {"machine": machine(), "command": "flashvlm-export bench", "rows": []}
    json_path, md_path = report.save(results, tmp_path)
    report.save(results, tmp_path)  # its own: replaced
    md_path.write_text("# my notes\n")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match=REFUSED):
        report.save(results, tmp_path)
    assert snapshot(tmp_path) == before


def test_bench_range_replaces_its_own_rows_but_not_a_users_file_of_the_same_name(tmp_path):
    from flashvlm_export.bench.ranged import write_rows

    path = write_rows([{"section": "floor"}], tmp_path)
    write_rows([{"section": "floor", "again": True}], tmp_path)  # its own, in the folder's ledger: replaced
    assert json.loads(path.read_text()) == [{"section": "floor", "again": True}]
    path.write_text("[]\n")  # the user's now
    with pytest.raises(UsageError, match=REFUSED):
        write_rows([{"section": "floor"}], tmp_path)
    assert path.read_text() == "[]\n"


def test_parity_refuses_a_users_file_at_a_record_name_before_any_work_and_replaces_its_own(tmp_path, capsys):
    graph = tmp_path / "g.onnx"
    assert main([*FAST, "--out", str(graph)]) == 0
    records = tmp_path / "records"
    argv = ["parity", "--graph", str(graph), "--repeats", "1", "--save-dir", str(records)]
    assert main(argv) == 0
    assert main(argv) == 0  # its own records (the report stamped, the Polygraphy records in the ledger): replaced
    for name in ("g_inputs.json", "g_reference_outputs.json", "g_parity.json"):
        users_json(records / name)
        before = snapshot(records)
        expect_one_line(capsys, argv, str(records / name), REFUSED, "--save-dir")
        assert snapshot(records) == before
        (records / name).unlink()


def test_a_record_without_a_stamp_is_replaced_only_while_its_folders_ledger_lists_it_unchanged(tmp_path):
    """Parity's Polygraphy records and bench's Markdown carry no stamp: the ledger is what recognises them."""
    from flashvlm_export.artifacts.placement import atomic_outputs

    record = tmp_path / "g_inputs.json"

    def write(text):
        with atomic_outputs([record]) as (temp,):
            temp.write_text(text)
        ownership.note_written([record])

    write("[1]\n")
    write("[2]\n")  # listed, unchanged: replaced
    record.write_text("[3, 'edited']\n")
    with pytest.raises(UsageError, match=REFUSED):
        write("[4]\n")
    assert record.read_text() == "[3, 'edited']\n"
    users = tmp_path / "other.json"
    users.write_text("[5]\n")
    with pytest.raises(UsageError, match=REFUSED):
        with atomic_outputs([users]) as (temp,):
            temp.write_text("[6]\n")
    assert users.read_text() == "[5]\n"
