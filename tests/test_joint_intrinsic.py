"""Under the joint rule S_int (step 1) is min-max normalised per temporal group, not over the clip (ALGORITHM.md
"Batches and other models", Video). The reference and the static module share that code, so parity alone cannot
see a global normalisation in both: here the rule is checked by hand, and a joint selector normalising over the
whole clip is planted and must fail parity's layer 2 (F beyond its bound)."""

from pathlib import Path

import pytest
import torch

from flashvlm_export.cli import main
from flashvlm_export.export.graphs import request_from_metadata
from flashvlm_export.export.interface import FUSED_SCORES
from flashvlm_export.export.metadata import graph_metadata
from flashvlm_export.parity.backends import TorchModule
from flashvlm_export.parity.run import reference_backends, run_parity
from flashvlm_export.selector.reference import MINMAX_EPS, intrinsic_scores
from flashvlm_export.selector.static import StaticScores


def test_intrinsic_scores_min_max_each_group_on_its_own():
    a = torch.tensor([1.0, 3.0, 5.0, 10.0, 40.0, 20.0, -2.0, -1.0, 0.0])  # three groups of 3, far apart in scale
    want = torch.tensor(
        [0 / (4 + MINMAX_EPS), 2 / (4 + MINMAX_EPS), 4 / (4 + MINMAX_EPS)]
        + [0 / (30 + MINMAX_EPS), 30 / (30 + MINMAX_EPS), 10 / (30 + MINMAX_EPS)]
        + [0 / (2 + MINMAX_EPS), 1 / (2 + MINMAX_EPS), 2 / (2 + MINMAX_EPS)]
    )
    torch.testing.assert_close(intrinsic_scores(a, groups=3), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(intrinsic_scores(a), (a + 2) / (42 + MINMAX_EPS), rtol=1e-6, atol=0)  # one group: the clip's


@pytest.fixture(scope="module")
def joint(tmp_path_factory) -> Path:
    graph = tmp_path_factory.mktemp("joint_intrinsic") / "joint.onnx"
    flags = ["--model", "qwen2.5-vl-tiny", "--video", "--frames", "4", "--budget", "64", "--video-budget", "joint"]
    assert main([*flags, "--selector-only", "--exporter", "torchscript", "--out", str(graph)]) == 0
    return graph


def test_a_joint_selector_normalising_s_int_over_the_clip_fails_parity_layer_2(joint):
    request = request_from_metadata(graph_metadata(joint), str(joint))
    _, honest = reference_backends(request, None)
    module = request.module(None, verification=True)
    module.selector.inner.scores = StaticScores(request.clip.tokens, request.config, groups=1)  # the planted fault
    planted = TorchModule(module, request.interface())
    planted.name = "global-s-int"
    reports = {r.backend: r for r in run_parity(joint, None, repeats=1, backends=[honest, planted], log=lambda _: None)}
    assert reports["static-torch"], reports["static-torch"].lines()
    report = reports["global-s-int"]
    assert not report and not report.arithmetic_passed
    assert not report.tensors[FUSED_SCORES].passed, report.lines()
