"""--budget's default follows the model (ModelSpec.default_budget): every registered model, at each grid, image size
and clip it takes, plans an export without --budget, instead of failing on a default (128) the user never typed
(`--model llava-next-tiny`: 128 does not split over 5 crops).
"""

from __future__ import annotations

import pytest

from flashvlm_export.export.requests import export_requests
from flashvlm_export.models.registry import MODELS
from flashvlm_export.selector.config import VIDEO_BUDGETS
from flashvlm_export.selector.schedule import MIN_BUDGET
from flashvlm_export.selector.static import TOPK_LIMIT

from conftest import expect_one_line


def shapes(spec) -> list[dict]:
    """export_requests keywords for each shape the model takes: its declared one, every grid, the smallest, the
    declared and a large image side, clips of one and of four frame groups under each rule, and its own N."""
    found = [{}]
    found += [{"grid": f"{h // spec.image_size}x{w // spec.image_size}"} for h, w in spec.pinpoints]
    if spec.image_size_step:
        step = spec.image_size_step
        largest = int(TOPK_LIMIT**0.5) * step
        # selector-only: the budget rule is the same, and the full graph's memory bound is this machine's
        found += [{"image_size": size, "selector_only": True} for size in (2 * step, 3 * step, largest)]
    if spec.has_video:
        two = spec.temporal_patch
        found += [{"frames": f, "video_budget": rule} for f in (two, 4 * two) for rule in VIDEO_BUDGETS]
    if spec.crops == 1:
        found += [{"selector_only": True, "n_tokens": n} for n in (2, 3, 577)]
    return found


CASES = [(name, shape) for name, spec in MODELS.items() for shape in shapes(spec)]


IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in s.items()) or 'declared'}" for m, s in CASES]


@pytest.mark.parametrize(("model", "shape"), CASES, ids=IDS)
def test_every_model_plans_an_export_with_its_default_budget(model, shape):
    spec, requests = export_requests(model, None, config=MODELS[model].selector_config(), **shape)
    (request,) = requests
    tokens, k = request.tokens, request.budget
    assert MIN_BUDGET <= k <= tokens
    images = request.crops if "frames" not in shape else shape["frames"] // spec.temporal_patch
    assert k % images == 0 and k // images >= MIN_BUDGET  # each crop or frame group keeps a whole share


def test_the_default_is_the_papers_budget_at_the_declared_shape():
    """docs/ALGORITHM.md: K=128 of LLaVA-1.5's 576 tokens, and for LLaVA-NeXT's 2x2 grid 640 = 5 x 128."""
    for name, spec in MODELS.items():
        expected = {"llava": 128, "llava_next": 5 * 128}.get(spec.family)
        if expected is not None:
            (request,) = export_requests(name, None, config=spec.selector_config())[1]
            assert request.budget == expected, name


def test_llava_next_without_budget_plans_the_papers_640(tmp_path, capsys):
    """The CLI gets past every budget check without --budget: it stops only at the planted file in the way, whose
    name carries the planned budget (nothing is exported, so this takes no time)."""
    planted = tmp_path / "llava-next-tiny_b640.onnx"
    planted.write_bytes(b"mine")
    argv = ["--model", "llava-next-tiny", "--random-weights", "--out-dir", str(tmp_path)]
    expect_one_line(capsys, argv, str(planted), "--force")
    assert planted.read_bytes() == b"mine"


def test_the_help_says_the_default_budget_follows_the_model(capsys):
    from flashvlm_export.cli.export import parser

    text = " ".join(parser().format_help().split())
    assert "default: the model's:" in text and "640 for llava-next-vicuna-7b" in text and "128 for llava15" in text, text
