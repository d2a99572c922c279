"""Artifacts from elsewhere are untrusted input: what one names must live inside its own folder (artifact_paths).

Each test plants one breach in a copy of a real split (exported once for the module, through the CLI)
or in a hand-built graph, runs the tool as a user would, and sees one line, exit 2, quickly, with the
user's file outside the folder unchanged. Where the target outside is a FIFO, a tool that opened it
would block: the test's timeout proves it was never opened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from flashvlm_export.artifact_paths import BOUNDS, load_graph, named_file
from flashvlm_export.artifacts.sidecar import read_sidecar
from flashvlm_export.cli import main
from flashvlm_export.errors import UsageError
from flashvlm_export.export.manifest import read_manifest

from conftest import copy_split, list_engines
from faults import run_cli, staging_folders, start_cli

QUICK_S = 5.0  # a refusal reads a few stat results and one small JSON: well under this


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """The tiny model's split at K = 64 (one budget: the rule is per file, not per budget)."""
    out = tmp_path_factory.mktemp("untrusted")
    argv = ["--model", "llava15-tiny", "--budget", "64", "--split", "--random-weights", "--out-dir", str(out)]
    assert main([*argv, "--exporter", "torchscript"]) == 0  # several times faster; dynamo: tests/test_exporters.py
    return out / "llava15-tiny_split" / "manifest.json"


def outside_file(tmp_path: Path, source: Path) -> Path:
    """The user's own file outside the split folder: a real graph, with its true sha256 and size."""
    target = tmp_path / "home" / "private.onnx"
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(source, target)
    return target


def fingerprint(path: Path) -> tuple:
    st = os.stat(path, follow_symlinks=False)
    return st.st_mtime_ns, st.st_size, path.read_bytes() if path.is_file() else None


def name_encoder(manifest: Path, name: str, bytes_: int | None = None) -> None:
    """Edit the manifest as an attacker would: the encoder entry names `name` (sha256 and size kept true when known)."""
    record = json.loads(manifest.read_text())
    entry = record["encoder"]["onnx"]
    entry["path"] = name
    if bytes_ is not None:
        entry["bytes"] = bytes_
    manifest.write_text(json.dumps(record))


def refused(capsys, argv, *fragments) -> str:
    start = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert elapsed < QUICK_S, f"refused after {elapsed:.1f}s"
    return err


def parity(manifest: Path) -> list[str]:
    return ["parity", "--manifest", str(manifest), "--no-save", "--random-weights"]


def run_manifest(manifest: Path, tmp_path: Path) -> list[str]:
    return ["run", "--manifest", str(manifest), "--budget", "64", "--demo-image", str(tmp_path / "d.png"), "--question", "Q"]


# ---------------------------------------------------------------- a manifest naming a file outside its folder


@pytest.mark.parametrize("tool", ["parity", "run"])
def test_a_manifest_naming_a_file_by_dotdot_is_refused_and_the_file_is_untouched(split, tmp_path, capsys, tool):
    manifest = copy_split(split, tmp_path / "shared")
    private = outside_file(tmp_path, manifest.parent / "encoder.onnx")  # same bytes: its sha256 matches the manifest
    before = fingerprint(private)
    name_encoder(manifest, "../../home/private.onnx")
    argv = parity(manifest) if tool == "parity" else run_manifest(manifest, tmp_path)
    refused(capsys, argv, "../../home/private.onnx", "climbs out of", "'..'")
    assert fingerprint(private) == before


def test_a_manifest_naming_an_absolute_path_is_refused(split, tmp_path, capsys):
    manifest = copy_split(split, tmp_path / "shared")
    private = outside_file(tmp_path, manifest.parent / "encoder.onnx")
    before = fingerprint(private)
    name_encoder(manifest, str(private))
    refused(capsys, parity(manifest), str(private), "is an absolute path")
    assert fingerprint(private) == before


def test_a_symbolic_link_leading_out_is_refused_without_opening_its_target(split, tmp_path, capsys):
    """The link leads to a FIFO outside: a tool that opened it would block; the refusal is quick."""
    manifest = copy_split(split, tmp_path / "shared")
    fifo = tmp_path / "home" / "pipe"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    (manifest.parent / "encoder.onnx").unlink()
    (manifest.parent / "encoder.onnx").symlink_to(fifo)
    refused(capsys, parity(manifest), "encoder.onnx", "symbolic link leading out of")


def test_a_symbolic_link_inside_leading_inside_is_allowed(split, tmp_path):
    manifest = copy_split(split, tmp_path / "shared")
    (manifest.parent / "alias.onnx").symlink_to("encoder.onnx")
    name_encoder(manifest, "alias.onnx")
    assert read_manifest(manifest).encoder_graph == (manifest.parent / "encoder.onnx").resolve()


@pytest.mark.parametrize("kind", ["folder", "fifo", "missing"])
def test_a_named_file_that_is_not_a_regular_file_is_refused(split, tmp_path, capsys, kind):
    manifest = copy_split(split, tmp_path / "shared")
    planted = manifest.parent / "planted.onnx"
    if kind == "folder":
        planted.mkdir()
    elif kind == "fifo":
        os.mkfifo(planted)
    name_encoder(manifest, "planted.onnx")
    rule = {"folder": "is a folder, not a regular file", "fifo": "is a FIFO", "missing": "does not exist"}[kind]
    refused(capsys, parity(manifest), "planted.onnx", rule)


def test_a_fifo_is_refused_through_the_cli_process_without_hanging(split, tmp_path):
    """The same FIFO through a real CLI process with a hard timeout: no open(2) of the FIFO ever happens."""
    manifest = copy_split(split, tmp_path / "shared")
    os.mkfifo(manifest.parent / "planted.onnx")
    name_encoder(manifest, "planted.onnx")
    result = run_cli(*parity(manifest), cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "is a FIFO" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_file_of_another_size_than_the_manifest_records_is_refused_before_hashing(split, tmp_path, capsys):
    manifest = copy_split(split, tmp_path / "shared")
    graph = manifest.parent / "encoder.onnx"
    size = graph.stat().st_size
    with open(graph, "ab") as f:
        f.write(b"\0")
    refused(capsys, parity(manifest), "encoder.onnx", f"is {size + 1} bytes where the record says {size}")


def test_a_graph_larger_than_any_graph_can_be_is_refused(split, tmp_path, capsys):
    manifest = copy_split(split, tmp_path / "shared")
    huge = manifest.parent / "huge.onnx"
    with open(huge, "wb") as f:  # sparse: no disk used
        f.truncate(BOUNDS["graph"] + 1)
    record = json.loads(manifest.read_text())
    record["encoder"]["onnx"].pop("bytes")  # no recorded size to compare: the bound alone refuses it
    manifest.write_text(json.dumps(record))
    name_encoder(manifest, "huge.onnx")
    refused(capsys, parity(manifest), "huge.onnx", "more than a graph file can plausibly be (2.0 GiB)")


def test_a_huge_manifest_is_refused_before_parsing(tmp_path, capsys):
    manifest = tmp_path / "manifest.json"
    with open(manifest, "wb") as f:
        f.truncate(BOUNDS["json"] + 1)
    refused(capsys, parity(manifest), str(manifest), "more than a json file can plausibly be")


def test_a_manifest_that_is_a_fifo_is_refused(tmp_path, capsys):
    manifest = tmp_path / "manifest.json"
    os.mkfifo(manifest)
    refused(capsys, parity(manifest), "is a FIFO")


def test_engines_named_outside_the_folder_are_refused_when_the_chain_would_run_them(split, tmp_path):
    manifest = copy_split(split, tmp_path / "shared")
    list_engines(manifest, "../engines")
    assert read_manifest(manifest).budgets == (64,)  # ONNX Runtime never reads the engines
    with pytest.raises(UsageError, match="encoder engine, which climbs out of"):
        read_manifest(manifest, engines=True)


# ---------------------------------------------------------------- sidecars


def test_a_sidecar_that_is_a_symbolic_link_out_is_refused(tmp_path, capsys):
    """run --engine reads the engine's sidecar before TensorRT: a sidecar linking to the user's file is refused."""
    engines = tmp_path / "engines"
    engines.mkdir()
    engine = engines / "x.plan"
    engine.write_bytes(b"not an engine")
    private = tmp_path / "home" / "settings.json"
    private.parent.mkdir()
    private.write_text(json.dumps({"onnx_metadata": {"graph": "selector"}}))
    before = fingerprint(private)
    (engines / "x.json").symlink_to(private)
    argv = ["run", "--engine", str(engine), "--demo-image", str(tmp_path / "d.png"), "--question", "Q"]
    refused(capsys, argv, "x.json", "symbolic link leading out of")
    assert fingerprint(private) == before


def test_a_huge_sidecar_is_refused(split, tmp_path):
    manifest = copy_split(split, tmp_path / "shared")
    with open(manifest.parent / "encoder.json", "wb") as f:
        f.truncate(BOUNDS["json"] + 1)
    with pytest.raises(UsageError, match="more than a json file can plausibly be"):
        read_sidecar(manifest.parent / "encoder.onnx")


def test_an_engine_sidecar_naming_its_graph_outside_asks_for_graph(tmp_path):
    from flashvlm_export.parity.engine import engine_graph

    engine = tmp_path / "engines" / "x.plan"
    engine.parent.mkdir()
    engine.write_bytes(b"plan")
    with pytest.raises(UsageError, match="climbs out of .* pass the graph it was built from with --graph"):
        engine_graph(engine, {"onnx": "../graphs/x.onnx"}, None)
    with pytest.raises(UsageError, match="is an absolute path"):
        engine_graph(engine, {"onnx": str(tmp_path / "graphs" / "x.onnx")}, None)


def test_a_split_engine_finds_its_graph_in_the_split_folder_and_nowhere_else(tmp_path):
    """A split's engines (DIR/engines/) name their graphs in DIR (`../selector_b64.onnx`): that folder, the one
    holding manifest.json, is the artifact. Without the manifest, the same name leads out and is refused."""
    from flashvlm_export.parity.engine import engine_graph

    split = tmp_path / "llava15_split"
    engine = split / "engines" / "selector_b64.plan"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"plan")
    (split / "selector_b64.onnx").write_bytes(b"graph")
    with pytest.raises(UsageError, match=r"climbs out of .*--graph .*selector_b64.onnx"):  # no manifest: not a split
        engine_graph(engine, {"onnx": "../selector_b64.onnx"}, None)
    (split / "manifest.json").write_text("{}")
    assert engine_graph(engine, {"onnx": "../selector_b64.onnx"}, None) == (split / "selector_b64.onnx").resolve()
    with pytest.raises(UsageError, match="climbs out of"):  # still nothing above the split folder
        engine_graph(engine, {"onnx": "../../elsewhere.onnx"}, None)


# ---------------------------------------------------------------- ONNX external data


def graph_with_external_data(folder: Path, location: str, n: int = 16) -> Path:
    """A one-Add graph whose weight lives in external data at `location` (data file: n float32)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [n], np.zeros(n, np.float32).tobytes(), raw=True)
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * n))):
        weight.external_data.add(key=key, value=value)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    model.metadata_props.add(key="graph", value="selector")
    path = folder / "g.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def layout(tmp_path):
    graphs, home = tmp_path / "graphs", tmp_path / "home"
    graphs.mkdir()
    home.mkdir()
    private = home / "w.bin"
    private.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    return graphs, private


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_graphs_folder_is_refused(layout, capsys, how):
    graphs, private = layout
    before = fingerprint(private)
    if how == "symlink":
        (graphs / "w.bin").symlink_to(private)
    location = {"dotdot": "../home/w.bin", "absolute": str(private), "symlink": "w.bin"}[how]
    graph = graph_with_external_data(graphs, location)
    rule = {"dotdot": "climbs out of", "absolute": "is an absolute path", "symlink": "symbolic link leading out of"}[how]
    refused(capsys, ["parity", "--graph", str(graph), "--no-save"], "external data of tensor 'w'", rule)
    assert fingerprint(private) == before


def test_external_data_inside_the_folder_loads(layout):
    graphs, private = layout
    shutil.copyfile(private, graphs / "w.bin")
    model = load_graph(graph_with_external_data(graphs, "w.bin"), external_data=True)
    assert np.array_equal(onnx.numpy_helper.to_array(model.graph.initializer[0]), np.arange(16, dtype=np.float32))


@pytest.mark.parametrize("size, rule", [(8, "shorter than the 64 its tensors need"), (1 << 20, "more than its tensors")])
def test_external_data_of_an_implausible_size_is_refused(layout, size, rule):
    graphs, _ = layout
    with open(graphs / "w.bin", "wb") as f:
        f.truncate(size)
    with pytest.raises(UsageError, match=rule):
        load_graph(graph_with_external_data(graphs, "w.bin"))


def test_external_data_that_is_a_fifo_is_refused(layout):
    graphs, _ = layout
    os.mkfifo(graphs / "w.bin")
    with pytest.raises(UsageError, match="is a FIFO"):
        load_graph(graph_with_external_data(graphs, "w.bin"))


def test_check_graph_reuses_a_passed_check_and_redoes_it_when_a_file_changed(layout, monkeypatch):
    """Before ONNX Runtime opens a graph, check_graph does not parse it again when load_graph already passed that
    very file; an external-data file changed since (here: cut short) is caught all the same."""
    import onnx

    from flashvlm_export import artifact_paths

    graphs, private = layout
    shutil.copyfile(private, graphs / "w.bin")
    graph = graph_with_external_data(graphs, "w.bin")
    load_graph(graph)
    parses = []
    real_parse = onnx.load_from_string
    monkeypatch.setattr(onnx, "load_from_string", lambda data: parses.append(1) or real_parse(data))
    assert artifact_paths.check_graph(graph) == graph and parses == []  # the same files: no second parse
    (graphs / "w.bin").write_bytes(b"\0" * 8)  # shorter than its tensor needs
    with pytest.raises(UsageError, match="shorter than the 64 its tensors need"):
        artifact_paths.check_graph(graph)
    assert parses == [1]


def test_the_rule_checks_names_not_only_what_the_cli_reads(tmp_path):
    """named_file itself: every rule, one line each, opening nothing."""
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    for name, rule in [("/etc/hostname", "absolute"), ("a/../../f", "'..'"), ("d", "a folder"), ("", "not a file name")]:
        with pytest.raises(UsageError, match=rule) as caught:
            named_file(tmp_path / "m.json", tmp_path, name, "graph", "graph")
        assert "\n" not in str(caught.value)
    assert named_file(tmp_path / "m.json", tmp_path, "f", "graph", "graph", expect_bytes=1) == (tmp_path / "f").resolve()


# ---------------------------------------------------------------- interrupted writes leave nothing


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_split_leaves_no_folder_and_announces_nothing_unsaved(tmp_path, sig):
    out = tmp_path / "out"  # does not exist: the split creates it, and must remove it when stopped
    argv = ["--model", "llava15-tiny", "--budget", "64", "--split", "--random-weights", "--out-dir", str(out)]
    process = start_cli(*argv, cwd=tmp_path)
    split = out / "llava15-tiny_split"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:  # stop it once the encoder graph is staged
        if any((s / "encoder.onnx").exists() for s in staging_folders(split)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the export ended before the encoder graph was staged"
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode in (130, 143), stderr
    assert not out.exists(), sorted(out.rglob("*"))
    saved = [line for line in (stdout + stderr).splitlines() if "saved as" in line]
    assert saved == [], saved


# ---------------------------------------------------------------- a manifest of the wrong shape


def _edit(key_path, value):
    def apply(record):
        target = record
        for key in key_path[:-1]:
            target = target[key]
        target[key_path[-1]] = value

    return apply


MALFORMED = {
    "bytes not a number": (_edit(("encoder", "onnx", "bytes"), "1e9"), "bytes must be a whole number"),
    "path not a string": (_edit(("encoder", "onnx", "path"), ["encoder.onnx"]), "needs a path and a sha256"),
    "sha256 not a string": (_edit(("encoder", "onnx", "sha256"), 0), "needs a path and a sha256"),
    "engine not a record": (_edit(("encoder", "engine"), "encoder.plan"), "engine entry must be a record"),
    "budgets empty": (_edit(("budgets",), []), "budgets must be a non-empty list"),
    "budgets not whole numbers": (_edit(("budgets",), [True]), "budgets must be a non-empty list"),
    "selectors not the budgets": (_edit(("budgets",), [64, 16]), "budgets say [64, 16]"),
    "a huge value is cut short": (_edit(("batch",), 10**400), "..."),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=lambda c: c.replace(" ", "-"))
def test_a_manifest_of_the_wrong_shape_is_one_line(split, tmp_path, capsys, case):
    """Each shape check of read_manifest, planted: one line, exit 2, no traceback, and (for a huge value) a short line."""
    manifest = copy_split(split, tmp_path / "shared")
    edit, fragment = MALFORMED[case]
    record = json.loads(manifest.read_text())
    edit(record)
    manifest.write_text(json.dumps(record))
    err = refused(capsys, parity(manifest), fragment)
    assert len(err) < 600, err


@pytest.mark.parametrize(
    "entries, rule",
    [
        ((("offset", "zero"), ("length", "64")), "non-numeric offset or length"),
        ((("offset", "-8"), ("length", "64")), "no valid offset and length"),
    ],
    ids=["non-numeric", "negative"],
)
def test_external_data_with_a_bad_offset_or_length_is_refused(layout, entries, rule):
    graphs, private = layout
    shutil.copyfile(private, graphs / "w.bin")
    graph = graph_with_external_data(graphs, "w.bin")
    model = onnx.load(str(graph), load_external_data=False)
    weight = model.graph.initializer[0]
    del weight.external_data[:]
    for key, value in (("location", "w.bin"), *entries):
        weight.external_data.add(key=key, value=value)
    graph.write_bytes(model.SerializeToString())
    with pytest.raises(UsageError, match=rule):
        load_graph(graph)


def test_a_file_that_outgrows_its_bound_while_read_is_refused(tmp_path):
    """read_bounded reads at most the bound (plus one byte to tell): a file past it, however it got there, is refused."""
    from flashvlm_export.artifact_paths import read_bounded

    grown = tmp_path / "m.json"
    grown.write_bytes(b"{}" * 8)
    assert read_bounded(grown, 16) == b"{}" * 8
    with pytest.raises(UsageError, match="grew past 15 bytes while it was read"):
        read_bounded(grown, 15)
