"""The hand-off of a clip's kept tokens to Qwen2.5-VL (tiny, random, CPU, fp32), as tests/test_qwen_handoff.py proves
it for images: at K = N the spliced input gives transformers' own logits on pixel_values_videos, video_grid_thw and
second_per_grid_ts; at K < N it equals the model's own full input gathered at the kept tokens. The graphs' outputs
come from exported graphs in ONNX Runtime. Logits within TOL (as for images: the encoders differ in the last bits);
positions exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.models.registry import get_spec
from flashvlm_export.selector.config import SelectorConfig

QWEN = get_spec("qwen2.5-vl-tiny")
FRAMES = 4
N = FRAMES // 2 * QWEN.n_tokens  # 512
K = 64
QUESTION = "What moves?"
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def parts():
    from flashvlm_export.models.qwen2_5_vl import random_parts

    return random_parts(QWEN, 0, with_embeddings=True)


@pytest.fixture(scope="module")
def handoff(tmp_path_factory, parts):
    from flashvlm_export.models.qwen2_5_vl import video_processor_patchify
    from flashvlm_export.parity.corpus import clip_of
    from flashvlm_export.runtime.answer import build_llm
    from flashvlm_export.runtime.clip import clip_prompt_ids, clip_text_inputs, expand_video_token, video_token_index
    from flashvlm_export.runtime.session import OrtGraph, select
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    folder = tmp_path_factory.mktemp("qwen_video_graphs")
    image = torch.randn(3, QWEN.image_size, QWEN.image_size, generator=torch.Generator().manual_seed(3)).numpy()
    clip = torch.from_numpy(clip_of(image, FRAMES, 1))[None].float()  # (1, F, 3, H, W), panning
    llm = build_llm(QWEN, parts, None, 0, torch.device("cpu"))
    ids = clip_prompt_ids(stand_in_tokenizer(QWEN), QUESTION, QWEN)
    text, mask = clip_text_inputs(parts.embed_tokens, ids, QWEN, QWEN.t_max)
    selections = {}
    for k in (K, N):
        request = ExportRequest(
            spec=QWEN,
            budget=k,
            t_max=QWEN.t_max,
            batch=1,
            config=SelectorConfig(gate=QWEN.gate),
            selector_only=False,
            frames=FRAMES,
        )
        graph = export_graph(request, folder / f"clip_b{k}.onnx", parts, "random:0", exporter="torchscript")
        selections[k] = select(OrtGraph(graph), clip, text, mask, batch=1)
    flat, gt, gh, gw = video_processor_patchify(clip, QWEN.patch_size, QWEN.merge, 2)
    grid = torch.tensor([[gt, gh, gw]])
    seconds = torch.tensor([1.0])  # 2 fps: the graphs' default
    expanded = torch.tensor([expand_video_token(ids, QWEN, N)])
    video_mask = expanded == video_token_index(QWEN)
    types = video_mask.int() * 2  # mm_token_type_ids: video = 2
    with torch.no_grad():
        positions, _ = llm.model.get_rope_index(
            expanded, mm_token_type_ids=types, video_grid_thw=grid, second_per_grid_ts=seconds
        )
        rows = torch.cat(llm.model.get_video_features(flat[0], grid).pooler_output)
        full_embeds = llm.get_input_embeddings()(expanded)
        full_embeds[video_mask] = rows
    p = ids.index(video_token_index(QWEN))
    return SimpleNamespace(
        llm=llm, ids=ids, selections=selections, flat=flat[0], grid=grid, seconds=seconds, expanded=expanded, types=types,
        positions=positions, rows=rows, full_embeds=full_embeds, p=p,
    )  # fmt: skip


def ours(h, rows, positions):
    from flashvlm_export.runtime.clip import clip_llm_input

    inputs = clip_llm_input(h.llm.get_input_embeddings(), h.ids, QWEN, rows, positions, last_t=int(h.positions[0].max()) - h.p)
    with torch.no_grad():
        return inputs, h.llm(inputs_embeds=inputs.inputs_embeds, position_ids=inputs.position_ids).logits


def kept_sequence(h, indices):
    return torch.cat([torch.arange(h.p), h.p + torch.as_tensor(indices), torch.arange(h.p + N, h.expanded.shape[1])])


def gathered(h, indices):
    keep = kept_sequence(h, indices)
    with torch.no_grad():
        return h.llm(inputs_embeds=h.full_embeds[:, keep], position_ids=h.positions[:, :, keep]).logits


def test_keep_all_splice_gives_transformers_own_video_logits(handoff):
    h = handoff
    selection = h.selections[N]
    assert selection.indices.tolist() == list(range(N))
    inputs, logits = ours(h, selection.visual_embeds, selection.positions)
    assert torch.equal(inputs.position_ids, h.positions)  # exactly the model's own get_rope_index
    with torch.no_grad():
        h.llm.model.rope_deltas = None
        theirs = h.llm(
            input_ids=h.expanded,
            pixel_values_videos=h.flat,
            video_grid_thw=h.grid,
            second_per_grid_ts=h.seconds,
            mm_token_type_ids=h.types,
        ).logits
    assert logits.shape == theirs.shape == (1, len(h.ids) - 1 + N, QWEN.text["vocab_size"])
    torch.testing.assert_close(logits, theirs, **TOL)


def test_pruned_splice_equals_the_full_video_input_gathered_at_the_kept_tokens(handoff):
    h = handoff
    selection = h.selections[K]
    inputs, logits = ours(h, selection.visual_embeds, selection.positions)
    assert torch.equal(inputs.position_ids, h.positions[:, :, kept_sequence(h, selection.indices)])
    torch.testing.assert_close(logits, gathered(h, selection.indices), **TOL)


@pytest.mark.parametrize("k", [K, N])
def test_two_frame_groups_swapped_in_the_positions_fail_the_hand_off(handoff, k):
    h = handoff
    selection = h.selections[k]
    reference = gathered(h, selection.indices)
    assert torch.allclose(ours(h, selection.visual_embeds, selection.positions)[1], reference, **TOL)
    swapped = selection.positions.clone()
    t = swapped[:, 0]
    first, second = t == t.min(), t == t.max()
    t[first], t[second] = t.max(), t.min()
    assert not torch.allclose(ours(h, selection.visual_embeds, swapped)[1], reference, **TOL)


@pytest.mark.parametrize("tail", [None, 2])
@pytest.mark.parametrize("frames", [FRAMES, 32])
def test_first_generated_position_is_transformers_rope_delta_for_short_and_long_clips(handoff, frames, tail):
    """The first generated token's position, and the prompt's, equal transformers' get_rope_index for a clip whose
    last temporal group's t (30 at 32 frames, 2 fps) outruns the text after it (a 2-token tail), and where the text
    outruns it (the whole prompt). No forward: the positions alone (integers, exact on every CPU)."""
    from flashvlm_export.models.positions import clip_token_positions, second_per_grid
    from flashvlm_export.runtime.clip import clip_llm_input, expand_video_token, video_token_index

    h = handoff
    ids = h.ids if tail is None else h.ids[: h.p + 1 + tail]
    n = frames // 2 * QWEN.n_tokens
    table = clip_token_positions(QWEN, frames, second_per_grid(QWEN, 2.0))
    expanded = torch.tensor([expand_video_token(ids, QWEN, n)])
    types = (expanded == video_token_index(QWEN)).int() * 2
    grid = torch.tensor([[frames // 2, *h.grid[0, 1:].tolist()]])
    with torch.no_grad():
        positions, deltas = h.llm.model.get_rope_index(
            expanded, mm_token_type_ids=types, video_grid_thw=grid, second_per_grid_ts=h.seconds
        )
    rows = torch.zeros(n, QWEN.text_hidden)
    inputs = clip_llm_input(h.llm.get_input_embeddings(), ids, QWEN, rows, table, last_t=int(table[:, 0].max()))
    assert torch.equal(inputs.position_ids, positions)
    assert inputs.next_position == expanded.shape[1] + int(deltas[0])  # generation: cache position + rope delta
