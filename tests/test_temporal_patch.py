"""The temporal patch size has one home, ModelSpec.temporal_patch (the vision config's temporal_patch_size): every
rule on a clip's frames reads it. Planted: a Qwen2.5-VL spec whose groups are of 4 frames, which code with the
pairing hard-coded (`frames // 2`, `frames % 2`) gets wrong."""

from dataclasses import replace

import pytest

from flashvlm_export.errors import UsageError
from flashvlm_export.export import metadata, requests
from flashvlm_export.export.graphs import clip_layout
from flashvlm_export.models.positions import clip_token_positions, second_per_grid
from flashvlm_export.models.registry import MODELS, get_spec
from flashvlm_export.selector.config import SelectorConfig

QWEN = get_spec("qwen2.5-vl-tiny")
FOURS = replace(QWEN, vision={**QWEN.vision, "temporal_patch_size": 4})  # groups of 4 frames


def test_temporal_patch_is_the_vision_configs_and_zero_without_a_video_path():
    from flashvlm_export.models.registry import adapter

    def configured(spec) -> int:  # transformers' own config of the model: CLIP's has no temporal patch
        return int(getattr(adapter(spec).full_config(spec).vision_config, "temporal_patch_size", 0) or 0)

    assert {name: spec.temporal_patch for name, spec in MODELS.items()} == {
        name: configured(spec) for name, spec in MODELS.items()
    }
    assert {spec.temporal_patch for spec in MODELS.values() if spec.has_video} == {2}
    assert FOURS.temporal_patch == 4


@pytest.fixture
def fours(monkeypatch):
    """The tiny Qwen's name resolves to the 4-frame spec where requests and metadata look models up."""
    for module in (requests, metadata):
        monkeypatch.setattr(module, "get_spec", lambda name: FOURS if name == QWEN.name else get_spec(name))
    return FOURS


def test_export_requests_group_frames_by_the_specs_temporal_patch(fours):
    _, (request,) = requests.export_requests(QWEN.name, "64", config=SelectorConfig(), frames=8)
    assert request.clip.groups == 2 and request.tokens == 2 * QWEN.n_tokens
    with pytest.raises(UsageError, match="--budget 600"):  # within 4 groups' N, beyond 2 groups'
        requests.export_requests(QWEN.name, "600", config=SelectorConfig(), frames=8, video_budget="joint")
    with pytest.raises(UsageError, match=r"--frames 6 .*temporal groups of 4.*--frames 8"):
        requests.export_requests(QWEN.name, "64", config=SelectorConfig(), frames=6)


def test_positions_layout_and_metadata_read_the_specs_temporal_patch(fours):
    assert clip_layout(fours, 8, "joint").groups == 2
    assert second_per_grid(fours, 2.0) == 2.0
    assert clip_token_positions(fours, 8, 1.0).shape == (2 * QWEN.n_tokens, 3)
    meta = {key: str(value) for key, value in dict(graph="full", model=QWEN.name, budget=64, t_max=256, batch=1).items()}
    meta.update(n_tokens=str(2 * QWEN.n_tokens), selector_config="{}", frames="8", video_budget="joint", fps="2.0")
    fields = metadata.request_fields(meta, "g.onnx")
    assert fields["frames"] == 8 and fields["n_tokens"] is None
    with pytest.raises(UsageError, match="'n_tokens'"):  # 10 frames: 2 groups of 4 and 2 frames over
        metadata.request_fields({**meta, "frames": "10"}, "g.onnx")
