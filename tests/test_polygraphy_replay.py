"""`polygraphy run ... --compare-func-script parity/polygraphy_compare.py` on parity's records gives the project's verdict
in Polygraphy's own PASSED/FAILED line: an honest graph passes, a planted wrong record fails, and a verification build
is held to layer 1 exactly."""

from __future__ import annotations

import subprocess
from collections import OrderedDict

import numpy as np
import onnx
import pytest

from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.export.interface import FUSED_SCORES, INDICES
from flashvlm_export.export.verification import add_verification_outputs
from flashvlm_export.parity import polygraphy_compare
from flashvlm_export.parity.polygraphy_replay import polygraphy_command
from flashvlm_export.parity.run import run_parity
from flashvlm_export.selector import SelectorConfig

from conftest import TINY


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """A tiny selector graph (batch 2), its verification build on disk, and parity's records of it."""
    folder = tmp_path_factory.mktemp("replay")
    request = ExportRequest(spec=TINY, budget=64, t_max=TINY.t_max, batch=2, config=SelectorConfig(), selector_only=True)
    graph = export_graph(request, folder / "tiny_b64.onnx", exporter="torchscript")
    verification = folder / "tiny_b64_verification.onnx"
    onnx.save(add_verification_outputs(onnx.load(str(graph)), request.interface(), str(graph)), str(verification))
    reports = run_parity(graph, repeats=1, save_dir=folder / "parity", log=lambda _: None)
    assert all(reports)
    records = folder / "parity"
    return graph, verification, records / "tiny_b64_inputs.json", records / "tiny_b64_reference_outputs.json"


def replay(model, inputs, outputs):
    run = subprocess.run(polygraphy_command(model, inputs, outputs, runner="--onnxrt"), capture_output=True, text=True)
    text = run.stdout + run.stderr
    return run.returncode, text


def test_an_honest_graph_passes_judged_by_its_outcome_beside_the_references_sensitivity(replayed):
    graph, _, inputs, outputs = replayed
    code, text = replay(graph, inputs, outputs)
    assert code == 0 and "[I] PASSED" in text, text[-3000:]
    assert "overlap with the reference" in text and "floor" in text and "layer 1" not in text


def test_a_planted_wrong_reference_record_fails(replayed, tmp_path):
    from polygraphy.comparator import RunResults

    graph, _, inputs, outputs = replayed
    results = RunResults.load(str(outputs))
    first = results[0][1][0]
    kept = first[INDICES]
    dropped = np.stack([np.setdiff1d(np.arange(576), row)[: kept.shape[1]] for row in kept])
    first[INDICES] = dropped.astype(kept.dtype)  # the tokens the reference did not keep
    planted = tmp_path / "planted_reference_outputs.json"
    results.save(str(planted))
    code, text = replay(graph, inputs, planted)
    assert code != 0 and "[E] FAILED" in text and "< floor" in text, text[-3000:]


def test_a_verification_build_is_held_to_layer_1_exactly(replayed):
    _, verification, inputs, outputs = replayed
    code, text = replay(verification, inputs, outputs)
    assert code == 0 and "[I] PASSED" in text and "layer 1, its own F and G decide exactly its indices" in text, text[-3000:]


def test_layer_1_fails_a_run_whose_indices_are_not_what_its_own_f_and_g_decide(replayed):
    """The exact path, planted: two kept indices swapped out of order, and an F that decides other tokens."""
    import onnxruntime as ort
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    _, verification, inputs, outputs = replayed
    feeds = load_json(str(inputs))[0]
    session = ort.InferenceSession(str(verification), providers=["CPUExecutionProvider"])
    run = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    records = dict(RunResults.load(str(outputs))[0][1][0].items())
    assert polygraphy_compare.judge(run, records)[0]
    swapped = dict(run, **{INDICES: run[INDICES].copy()})
    swapped[INDICES][0, [0, 1]] = swapped[INDICES][0, [1, 0]]
    assert not polygraphy_compare.judge(swapped, records)[0]
    flipped = dict(run, **{FUSED_SCORES: -run[FUSED_SCORES]})
    passed, lines = polygraphy_compare.judge(flipped, records)
    assert not passed and "own F and G decide other indices" in lines[0]


def test_outcome_judgement_refuses_unsorted_indices_and_records_without_the_floor(replayed):
    from polygraphy.comparator import IterationResult, RunResults

    _, _, _, outputs = replayed
    records = RunResults.load(str(outputs))[0][1][0]
    same = {INDICES: records[INDICES]}
    assert polygraphy_compare.judge(same, dict(records.items()))[0]  # the reference itself: overlap 1
    assert not polygraphy_compare.judge({INDICES: records[INDICES][:, ::-1]}, dict(records.items()))[0]
    bare = IterationResult(outputs={INDICES: records[INDICES]}, runner_name="old")
    live = IterationResult(outputs=same, runner_name="live")
    assert polygraphy_compare.compare_outputs(live, bare) == OrderedDict([(INDICES, False)])
    assert polygraphy_compare.compare_outputs(live, records) == OrderedDict([(INDICES, True)])


def test_the_schedule_record_round_trips_and_the_floor_is_the_references_worst():
    from flashvlm_export.selector.schedule import round_schedule

    schedule = round_schedule(576, 64, SelectorConfig())
    assert polygraphy_compare.schedule_from_record(polygraphy_compare.schedule_record(schedule)) == schedule
    assert polygraphy_compare.replay_floor([0.9, 0.6, 0.8], chance=0.2) == pytest.approx(0.4)  # halfway from 0.2 to 0.6
    assert polygraphy_compare.replay_floor([0.9, 0.6], chance=0.2, min_overlap=0.75) == 0.75
    assert polygraphy_compare.replay_floor([1.0, 1.0], chance=1.0) == 1.0  # K >= N: every token, exactly
