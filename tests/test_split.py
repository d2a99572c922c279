"""Split export: one encoder graph, a selector graph per budget, a manifest; the chain at run time; parity per budget.

The tiny model's split is exported once (through the CLI, as a user would) and copied where a test
edits it. Every checker here has a planted wrong input that it must catch.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from flashvlm_export.artifacts.files import sha256_of
from flashvlm_export.cli import main
from flashvlm_export.export.interface import INDICES, VISUAL_EMBEDS
from flashvlm_export.export.manifest import read_manifest
from flashvlm_export.models.llava import random_parts
from flashvlm_export.models.registry import get_spec
from flashvlm_export.parity.split import run_split_parity
from flashvlm_export.runtime.chain import OrtChain

from conftest import copy_split, expect_one_line, list_engines

BUDGETS = (64, 16)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """The tiny model's split at K = 64, 16: several budgets split by default (no --split flag)."""
    out = tmp_path_factory.mktemp("split")
    argv = ["--model", "llava15-tiny", "--budget", ",".join(map(str, BUDGETS)), "--random-weights", "--out-dir", str(out)]
    argv += ["--exporter", "torchscript"]  # several times faster at these rounds; dynamo: tests/test_exporters.py
    assert main(argv) == 0
    return out / "llava15-tiny_split" / "manifest.json"


@pytest.fixture(scope="module")
def parts():
    return random_parts(get_spec("llava15-tiny"), 0)


def test_split_writes_one_encoder_and_a_small_selector_per_budget_tied_by_a_manifest(split):
    folder = split.parent
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["encoder.json", "encoder.onnx", "manifest.json"] + sorted(
        f"selector_b{k}.{ext}" for k in BUDGETS for ext in ("json", "onnx")
    )
    record = json.loads(split.read_text())
    assert record["budgets"] == list(BUDGETS) and record["model"] == "llava15-tiny" and record["weights"] == "random:0"
    for entry in [record["encoder"]["onnx"]] + [s["onnx"] for s in record["selectors"]]:
        assert sha256_of(folder / entry["path"]) == entry["sha256"]  # the manifest names exactly these bytes
    encoder = onnx.load(str(folder / "encoder.onnx"), load_external_data=False)
    assert [i.name for i in encoder.graph.input] == ["pixel_values"]
    assert [o.name for o in encoder.graph.output] == ["vision_features", "cls_attention", "projected_features"]
    for k in BUDGETS:
        selector = onnx.load(str(folder / f"selector_b{k}.onnx"))
        outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in selector.graph.output}
        assert outputs == {"indices": [1, k], "visual_embeds": [1, k, get_spec("llava15-tiny").text_hidden]}
        # no encoder weights in a selector: its initializers are index constants of the unrolled rounds (and
        # running_count's triangles of ones, the stable order's group counts without CumSum)
        matrices = [i for i in selector.graph.initializer if i.data_type == 1 and len(i.dims) == 2 and min(i.dims) > 8]
        assert all(set(np.unique(onnx.numpy_helper.to_array(i)).tolist()) <= {0.0, 1.0} for i in matrices)


def test_parity_of_the_split_chain_holds_per_budget(split, parts):
    """Layers 1 and 2 per budget on the encoder's own outputs, the chain end to end for layer 3 (ALGORITHM.md)."""
    reports = run_split_parity(read_manifest(split), parts, repeats=1, log=lambda _: None)
    assert sorted(reports) == sorted(BUDGETS)
    for k, report in reports.items():
        assert report.decisions_passed and report.arithmetic_passed, report.lines()
        assert report.decisions_checked == report.shipped_checked == len(report.overlaps) > 0, k
        assert "projected_features" in report.tensors and "gram" in report.tensors  # the encoder's and the selector's


def test_parity_manifest_command(split, capsys):
    code = main(["parity", "--manifest", str(split), "--repeats", "1", "--no-save"])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASSED"), out
    assert all(f"K={k}:" in out for k in BUDGETS)


class PlantedChain:
    """The real chain with one fault planted: `fault` edits its outputs (or what it says the encoder wrote)."""

    def __init__(self, manifest, fault):
        self.chain, self.fault = OrtChain(manifest, "CPUExecutionProvider"), fault
        self.name = "planted"

    def encode(self, feeds):
        self.chain.encode(feeds)

    def features_on_host(self):
        features = self.chain.features_on_host()
        return self.fault("features", features) or features

    def select(self, feeds, budget):
        out = self.chain.select(feeds, budget)
        return self.fault("select", out) or out


def _swap_two_indices(stage, out):
    if stage == "select":
        out[INDICES] = out[INDICES].copy()
        out[INDICES][:, [0, 1]] = out[INDICES][:, [1, 0]]


def _shift_rows(stage, out):
    if stage == "select":
        out[VISUAL_EMBEDS] = np.roll(out[VISUAL_EMBEDS], 1, axis=1)


def _encoder_one_percent_off(stage, out):
    if stage == "features":
        return {name: value * 1.01 for name, value in out.items()}


@pytest.mark.parametrize(
    "fault, layer",
    [(_swap_two_indices, "decisions"), (_shift_rows, "decisions"), (_encoder_one_percent_off, "arithmetic")],
    ids=["swapped-indices", "visual-embeds-off-by-one-row", "encoder-1%-off"],
)
def test_a_planted_wrong_chain_fails_parity(split, parts, fault, layer):
    manifest = read_manifest(split)
    reports = run_split_parity(manifest, parts, repeats=1, log=lambda _: None, chain=PlantedChain(manifest, fault))
    for report in reports.values():
        assert not report
        assert not getattr(report, f"{layer}_passed"), report.lines()


def test_chain_serves_each_budget_and_refuses_one_it_lacks(split, capsys, tmp_path):
    manifest = read_manifest(split)
    chain = OrtChain(manifest, "CPUExecutionProvider")
    spec = get_spec("llava15-tiny")
    rng = np.random.default_rng(0)
    feeds = {
        "pixel_values": rng.standard_normal((1, 3, spec.image_size, spec.image_size)).astype(np.float32),
        "text_embeds": rng.standard_normal((1, spec.t_max, spec.text_hidden)).astype(np.float32),
        "text_mask": np.arange(spec.t_max)[None] < 20,
    }
    for k in BUDGETS:
        out = chain.infer(feeds, k)
        assert out[INDICES].shape == (1, k) and np.all(np.diff(out[INDICES][0]) > 0)
        projected = chain.features_on_host()["projected_features"]
        assert np.array_equal(out[VISUAL_EMBEDS][0], projected[0][out[INDICES][0]])  # a gather copies: exact everywhere
    with pytest.raises(Exception, match=r"budget=48 is not in .*: it has K = 64, 16"):  # the Python API names its keyword
        chain.infer(feeds, 48)
    from flashvlm_export.runtime.chain import SplitChain

    by_path = SplitChain(str(split))  # the manifest's path is enough
    assert np.array_equal(by_path.infer(feeds, 16)[INDICES], chain.infer(feeds, 16)[INDICES])  # the same graphs, the same floats
    image = str(tmp_path / "demo.png")
    assert main(["run", "--manifest", str(split), "--budget", "16", "--demo-image", image, "--question", "What?"]) == 0
    assert "Run: selected 16/576 tokens" in capsys.readouterr().out
    expect_one_line(
        capsys, ["run", "--manifest", str(split), "--budget", "48", "--image", image, "--question", "Q"], "K = 64, 16"
    )
    expect_one_line(capsys, ["run", "--manifest", str(split), "--image", image, "--question", "Q"], "--budget")
    expect_one_line(
        capsys, ["run", "--manifest", str(split), "--budget", "16", "--tensorrt", "--image", image, "--question", "Q"],
        "lists no TensorRT engines",
    )  # fmt: skip


def test_an_edited_split_is_refused_before_any_work(split, capsys, tmp_path):
    edited = copy_split(split, tmp_path / "a")
    with open(edited.parent / "selector_b16.onnx", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))  # one bit flipped, same size: the sha256 differs
    expect_one_line(capsys, ["parity", "--manifest", str(edited), "--no-save"], "selector_b16.onnx", "sha256 differs")

    relabeled = copy_split(split, tmp_path / "b")  # budget 16 relabeled 48, with honest hashes: the graph says 16
    record = json.loads(relabeled.read_text())
    record["budgets"] = [64, 48]
    record["selectors"][1]["budget"] = 48
    relabeled.write_text(json.dumps(record))
    expect_one_line(capsys, ["parity", "--manifest", str(relabeled), "--no-save"], "selector_b16.onnx", "budget '16'")

    missing = copy_split(split, tmp_path / "c")
    (missing.parent / "encoder.onnx").unlink()
    expect_one_line(capsys, ["parity", "--manifest", str(missing), "--no-save"], "encoder.onnx", "does not exist")

    broken = copy_split(split, tmp_path / "d")
    broken.write_text("{not json")
    expect_one_line(capsys, ["parity", "--manifest", str(broken), "--no-save"], "not readable JSON")

    for key, value, fragment in [
        ("selector_config", {**json.loads(split.read_text())["selector_config"], "eta": 0.6}, "selector_config"),
        ("weights", "random:1", "weights"),
        ("precision", "fp16", "precision"),
        ("t_max", 128, "t_max"),
        ("plugin", "no", "malformed"),
        ("batch", None, "malformed"),
        ("format", "something else", "not a flashvlm-export split manifest"),
        ("format_version", 2, "format_version 2"),
    ]:  # each says something the graphs do not: refused in one line, whatever the hashes say
        edited = copy_split(split, tmp_path / f"e-{key}")
        record = json.loads(edited.read_text())
        if value is None:
            del record[key]
        else:
            record[key] = value
        edited.write_text(json.dumps(record))
        expect_one_line(capsys, ["parity", "--manifest", str(edited), "--no-save"], fragment)


def test_the_encoder_graph_alone_is_pointed_to_its_manifest(split, capsys, tmp_path):
    encoder = str(split.parent / "encoder.onnx")
    expect_one_line(capsys, ["parity", "--graph", encoder, "--no-save"], "encoder graph of a split export", "--manifest")
    expect_one_line(capsys, ["run", "--graph", encoder, "--demo-image", str(tmp_path / "d.png"), "--question", "Q"], "--manifest")


def test_split_flags_are_checked_and_nothing_is_overwritten(split, capsys, tmp_path):
    tiny = ["--model", "llava15-tiny", "--random-weights"]
    expect_one_line(capsys, [*tiny, "--budget", "64,16", "--split", "--fused"], "exclude each other")
    expect_one_line(capsys, [*tiny, "--budget", "16", "--split", "--selector-only"], "--selector-only")
    expect_one_line(capsys, [*tiny, "--budget", "64,16", "--out", str(tmp_path / "x.onnx")], "--out-dir")
    same = str(tmp_path / "g")  # a split's engines live in its own engines/ folder: refused before TensorRT is needed
    expect_one_line(capsys, [*tiny, "--budget", "64,16", "--engine", "--out-dir", same, "--engine-dir", same], "--engine-dir")
    before = {p.name: sha256_of(p) for p in split.parent.iterdir()}
    expect_one_line(capsys, [*tiny, "--budget", "64,16", "--out-dir", str(split.parent.parent)], "--force")
    assert {p.name: sha256_of(p) for p in split.parent.iterdir()} == before


def test_a_split_that_fails_part_way_leaves_nothing(monkeypatch, tmp_path, parts):
    """The encoder exports, the first selector fails: no file of the split is placed, no staging folder stays."""
    from flashvlm_export.export import split as split_module
    from flashvlm_export.export.graphs import ExportRequest
    from flashvlm_export.selector.config import SelectorConfig

    real = split_module.export_logged

    def fail_on_selectors(request, *args, **kwargs):
        if request.kind == "selector":
            raise RuntimeError("planted failure")
        return real(request, *args, **kwargs)

    monkeypatch.setattr(split_module, "export_logged", fail_on_selectors)
    spec = get_spec("llava15-tiny")
    requests = [
        ExportRequest(spec=spec, budget=k, t_max=spec.t_max, batch=1, config=SelectorConfig(), selector_only=False)
        for k in BUDGETS
    ]
    plan = split_module.split_plan(requests, tmp_path)
    with pytest.raises(RuntimeError, match="planted"):
        split_module.export_split(plan, parts, parts.source.tag, 18, "dynamo", overwrite=False, log=lambda _: None)
    assert list(plan.folder.iterdir()) == []


def test_bench_split_report_states_the_overhead_against_its_target():
    from flashvlm_export.bench.report import split_tables

    timing = {"median_ms": 100.0, "p10_ms": 99.0, "p90_ms": 101.0, "repeats": 10}
    rows = [
        {"section": "split_time", "budget": 128, "fused": timing, "chain": {**timing, "median_ms": 104.0}, "overhead": 0.04},
        {
            "section": "split_footprint", "budgets": [128, 64, 32], "fused_disk_bytes": 3.76e9, "split_disk_bytes": 1.26e9,
            "fused_resident_gib": 4.15, "split_resident_gib": 1.44, "fused_peak_rss_gib": 6.27, "split_peak_rss_gib": 6.27,
        },
    ]  # fmt: skip
    text = "\n".join(split_tables(rows))
    assert "overhead +4.00% (target: under 3%, NOT MET)" in text
    assert "| 3 (128, 64, 32) | 3.76 GB | 1.26 GB | 4.15 GiB | 1.44 GiB | 6.27 GiB | 6.27 GiB |" in text


def test_engines_are_checked_only_when_the_chain_runs_them(split, tmp_path):
    """A copied split folder without its engines folder still runs in ONNX Runtime; --tensorrt needs the engines."""
    from flashvlm_export.errors import UsageError

    copied = copy_split(split, tmp_path)
    list_engines(copied, "engines")
    assert read_manifest(copied).budgets == BUDGETS
    with pytest.raises(
        UsageError, match=r"encoder engine, which does not exist; copy the whole split folder \(its engines/ too\)"
    ):
        read_manifest(copied, engines=True)


def test_bench_manifest_times_the_encoder_and_each_selector_with_its_share(split, capsys):
    from flashvlm_export.bench.share import selector_share

    rows = selector_share(split, warmup=0, repeats=2, log=print)
    out = capsys.readouterr().out
    assert [row["budget"] for row in rows] == list(BUDGETS) and "encoder" in out
    for row in rows:  # the share is the selector's part of encoder + selector, computed from the two medians
        encoder, selector = row["encoder"]["median_ms"], row["selector"]["median_ms"]
        assert row["share"] == selector / (encoder + selector) and 0 < row["share"] < 1
        assert f"selector K={row['budget']}" in out


def test_bench_manifest_refuses_a_missing_manifest_in_one_line(capsys, tmp_path):
    expect_one_line(capsys, ["bench", "--manifest", str(tmp_path / "none.json")], "does not exist")


def test_bench_times_the_chain_in_both_runtimes_with_openvinos_start_times(capsys, split):
    """bench --backend onnxruntime,openvino (issue 35): each runtime's chain timed, every budget's selector on the
    encoder's tensors, and OpenVINO's first (compiling) and cached start; the split's own cache left as it was."""
    pytest.importorskip("openvino", reason="OpenVINO Runtime is not installed (pip install openvino)")
    from flashvlm_export.bench.share import selector_share

    rows = selector_share(split, warmup=1, repeats=1, log=lambda _: None, backends=("onnxruntime", "openvino"))
    assert [(r["backend"], r["budget"]) for r in rows] == [(b, k) for b in ("onnxruntime", "openvino") for k in BUDGETS]
    ov = [r for r in rows if r["backend"] == "openvino"]
    assert all(r["first_start_s"] > 0 and r["cached_start_s"] > 0 for r in ov)
    assert all("start_s" in r for r in rows if r["backend"] == "onnxruntime")
    assert not (split.parent / "openvino_cache").exists()  # timed in a temporary cache
