"""Clip graphs in the forms the video helper had only checked by hand, on the tiny model (4 frames, N = 512): a split
clip export at two budgets under the joint rule with its chain's parity (and a planted fault the chain check catches),
and a --plugin clip graph's parity in ONNX Runtime (the plugin node as onnxruntime-extensions' Python op).

Each graph is exported once per module through the CLI, as a user would; parity runs one repeat.
"""

from pathlib import Path

import numpy as np
import pytest

from flashvlm_export.cli import main
from flashvlm_export.export.interface import POSITIONS
from flashvlm_export.export.manifest import read_manifest
from flashvlm_export.models.qwen2_5_vl import random_parts
from flashvlm_export.models.registry import get_spec
from flashvlm_export.parity.run import run_parity
from flashvlm_export.parity.split import run_split_parity
from flashvlm_export.runtime.chain import OrtChain

QWEN = get_spec("qwen2.5-vl-tiny")
FRAMES = 4
BUDGETS = (64, 32)
QUIET = dict(log=lambda _: None)
CLIP = ["--model", QWEN.name, "--video", "--frames", str(FRAMES), "--random-weights"]


@pytest.fixture(scope="module")
def parts():
    return random_parts(QWEN, seed=0)


@pytest.fixture(scope="module")
def joint_split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip_split")
    budgets = ",".join(map(str, BUDGETS))
    assert main([*CLIP, "--budget", budgets, "--video-budget", "joint", "--exporter", "torchscript", "--out-dir", str(out)]) == 0
    return out / f"{QWEN.name}_f{FRAMES}_joint_split" / "manifest.json"


def test_a_joint_clip_split_holds_an_encoder_over_the_frames_and_a_selector_per_budget(joint_split):
    manifest = read_manifest(joint_split)
    assert sorted(manifest.budgets) == sorted(BUDGETS)
    for budget in BUDGETS:
        request = manifest.request(budget)
        assert (request.frames, request.video_budget, request.tokens) == (FRAMES, "joint", FRAMES // 2 * QWEN.n_tokens)


def test_the_joint_clip_splits_chain_passes_parity_at_each_budget(joint_split, parts):
    reports = run_split_parity(read_manifest(joint_split), parts, repeats=1, **QUIET)
    assert sorted(reports) == sorted(BUDGETS) and all(reports.values()), [r.lines() for r in reports.values()]


class FramesSwappedChain:
    """The real chain whose selector outputs give temporal groups 0 and 1 each other's t."""

    def __init__(self, manifest):
        self.chain, self.name = OrtChain(manifest, "CPUExecutionProvider"), "frames-swapped"

    def encode(self, feeds):
        self.chain.encode(feeds)

    def features_on_host(self):
        return self.chain.features_on_host()

    def select(self, feeds, budget):
        out = dict(self.chain.select(feeds, budget))
        positions = np.array(out[POSITIONS])
        t = positions[..., 0]
        first, second = t == 0, t == 2  # 2 fps: group 1 sits at t = 2
        t[first], t[second] = 2, 0
        out[POSITIONS] = positions
        return out


def test_a_chain_with_two_frame_groups_swapped_in_the_positions_fails_parity(joint_split, parts):
    manifest = read_manifest(joint_split)
    reports = run_split_parity(manifest, parts, repeats=1, chain=FramesSwappedChain(manifest), **QUIET)
    assert reports and all(not r and not r.decisions_passed for r in reports.values())


@pytest.fixture(scope="module")
def plugin_clip(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime_extensions", reason="the plugin node runs in ONNX Runtime through onnxruntime-extensions")
    graph = tmp_path_factory.mktemp("clip_plugin") / "clip_plugin.onnx"
    assert main([*CLIP, "--budget", str(BUDGETS[0]), "--plugin", "--out", str(graph)]) == 0  # the plugin needs dynamo
    return graph


def test_a_plugin_clip_graph_holds_one_plugin_node_and_passes_parity(plugin_clip, parts):
    import onnx

    model = onnx.load(str(plugin_clip), load_external_data=False)
    assert [n.op_type for n in model.graph.node if n.domain == "flashvlm"] == ["ResidualPrune"]
    reports = run_parity(plugin_clip, parts, repeats=1, **QUIET)
    assert reports and all(reports), [r.lines() for r in reports]
