"""The hand-off on a non-square shape (issue 33, item 5): a 1176x672 photo (width x height, 7:4) through the 336x588
graph that `run --manifest` picks for it gives, at K = N, Qwen2_5_VLForConditionalGeneration's own logits on the photo
as Qwen2VLImageProcessorPil processes it with min and max pixels pinned to 336 x 588 (its smart_resize then lands on
exactly 336 x 588: the photo is twice that size, beta = 2.0 exactly); a clip of that shape likewise on
pixel_values_videos. The graphs run in ONNX Runtime (what a runtime receives). Positions are integers, compared
exactly; logits within TOL, as in tests/test_qwen_handoff.py (the encoders differ in the last bits). The planted
fault: the chosen shape's token grid read transposed (12 x 21 taken as 21 x 12) fails both.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.models.positions import token_positions
from flashvlm_export.models.registry import get_spec
from flashvlm_export.models.shapes import choose_shape, default_shapes
from flashvlm_export.selector.config import SelectorConfig

BASE = get_spec("qwen2.5-vl-tiny")
PHOTO_HW = (672, 1176)  # height, width: 7:4
SHAPES = default_shapes(BASE)
WIDE = SHAPES[choose_shape(PHOTO_HW, SHAPES).index]  # the shape run --manifest picks for the photo: 336 x 588
N = WIDE.n_tokens  # 252
FRAMES = 2
TOL = dict(rtol=1e-5, atol=1e-5)  # as tests/test_qwen_handoff.py: honest ~1e-6; a misplaced position >= 1e-4


def transposed_positions(spec):
    """The planted fault: the (t, h, w) table of the shape's grid read transposed (rows and columns exchanged)."""
    return token_positions(replace(spec, image_size=spec.image_shape[1], image_width=spec.image_shape[0]))


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    from flashvlm_export.models.qwen2_5_vl import random_parts
    from flashvlm_export.runtime.answer import build_llm
    from flashvlm_export.runtime.image import demo_picture
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    folder = tmp_path_factory.mktemp("aspects_handoff")
    parts = random_parts(BASE, 0, with_embeddings=True)
    photo = folder / "wide.png"
    demo_picture(PHOTO_HW[1]).resize(PHOTO_HW[::-1]).save(photo)
    graphs = {}
    for frames in (None, FRAMES):
        request = ExportRequest(
            spec=WIDE, budget=N * (frames or 2) // 2, t_max=BASE.t_max, batch=1, config=SelectorConfig(gate=BASE.gate),
            selector_only=False, frames=frames,
        )  # fmt: skip
        graphs[frames] = export_graph(request, folder / f"wide_f{frames}.onnx", parts, "random:0", exporter="torchscript")
    llm = build_llm(BASE, parts, None, 0, torch.device("cpu"))
    return SimpleNamespace(parts=parts, photo=photo, graphs=graphs, llm=llm, tokenizer=stand_in_tokenizer(BASE))


def _logits(llm, inputs):
    with torch.no_grad():
        return llm(inputs_embeds=inputs.inputs_embeds, position_ids=inputs.position_ids).logits


def test_run_picks_the_shape_of_the_photos_aspect():
    chosen = choose_shape(PHOTO_HW, SHAPES)
    assert WIDE.image_shape == (336, 588) and chosen.aspect_error == 0.0


def test_keep_all_on_a_non_square_photo_gives_transformers_own_logits_and_a_transposed_grid_does_not(setting):
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from flashvlm_export.models.prompt import prompt_token_ids, text_inputs
    from flashvlm_export.runtime.answer import expand_image_token, llm_input
    from flashvlm_export.runtime.image import prepare_image
    from flashvlm_export.runtime.session import OrtGraph, select

    s, pixels = setting, 336 * 588
    prepared = prepare_image(s.photo, WIDE)
    assert prepared.note == ""  # the photo's aspect is the shape's: nothing stretched
    ids = prompt_token_ids(s.tokenizer, "What is on the table?", BASE)
    text, mask = text_inputs(s.parts.embed_tokens, ids, BASE.t_max, BASE.image_token_index)
    selection = select(OrtGraph(s.graphs[None]), prepared.pixel_values, text, mask, batch=1)
    assert selection.indices.tolist() == list(range(N))
    processor = Qwen2VLImageProcessorPil(size={"shortest_edge": pixels, "longest_edge": pixels})
    with Image.open(s.photo) as image:
        processed = processor(images=image.convert("RGB"), return_tensors="pt")
    assert processed["image_grid_thw"].tolist() == [[1, 24, 42]]  # the processor's own size: 336 x 588
    expanded = torch.tensor([expand_image_token(ids, BASE.image_token_index, N)])
    embed = s.llm.get_input_embeddings()
    ours = llm_input(embed, ids, WIDE, selection.visual_embeds, selection.positions)
    with torch.no_grad():
        own_positions, _ = s.llm.model.get_rope_index(
            expanded, mm_token_type_ids=(expanded == BASE.image_token_index).int(), image_grid_thw=processed["image_grid_thw"]
        )
        s.llm.model.rope_deltas = None
        theirs = s.llm(
            input_ids=expanded, pixel_values=processed["pixel_values"], image_grid_thw=processed["image_grid_thw"],
            mm_token_type_ids=(expanded == BASE.image_token_index).int(),
        ).logits  # fmt: skip
    assert torch.equal(ours.position_ids, own_positions)  # exactly the model's own get_rope_index
    torch.testing.assert_close(_logits(s.llm, ours), theirs, **TOL)
    wrong = llm_input(embed, ids, WIDE, selection.visual_embeds, transposed_positions(WIDE))
    assert not torch.equal(wrong.position_ids, own_positions)
    assert not torch.allclose(_logits(s.llm, wrong), theirs, **TOL)


def test_keep_all_on_a_non_square_clip_gives_transformers_own_video_logits_and_a_transposed_grid_does_not(setting):
    from flashvlm_export.models.qwen2_5_vl import video_processor_patchify
    from flashvlm_export.parity.corpus import clip_of
    from flashvlm_export.runtime.clip import (
        clip_llm_input,
        clip_prompt_ids,
        clip_text_inputs,
        expand_video_token,
        video_token_index,
    )
    from flashvlm_export.runtime.session import OrtGraph, select

    s, n = setting, FRAMES // 2 * N
    image = torch.randn(3, *WIDE.image_shape, generator=torch.Generator().manual_seed(3)).numpy()
    clip = torch.from_numpy(clip_of(image, FRAMES, 1))[None].float()  # (1, F, 3, 336, 588)
    ids = clip_prompt_ids(s.tokenizer, "What moves?", BASE)
    text, mask = clip_text_inputs(s.parts.embed_tokens, ids, BASE, BASE.t_max)
    selection = select(OrtGraph(s.graphs[FRAMES]), clip, text, mask, batch=1)
    assert selection.indices.tolist() == list(range(n))
    flat, gt, gh, gw = video_processor_patchify(clip, BASE.patch_size, BASE.merge, 2)
    grid, seconds = torch.tensor([[gt, gh, gw]]), torch.tensor([1.0])  # 2 fps: the graph's default
    assert grid.tolist() == [[1, 24, 42]]
    expanded = torch.tensor([expand_video_token(ids, BASE, n)])
    types = (expanded == video_token_index(BASE)).int() * 2  # mm_token_type_ids: video = 2
    with torch.no_grad():
        own_positions, _ = s.llm.model.get_rope_index(
            expanded, mm_token_type_ids=types, video_grid_thw=grid, second_per_grid_ts=seconds
        )
        s.llm.model.rope_deltas = None
        theirs = s.llm(
            input_ids=expanded, pixel_values_videos=flat[0], video_grid_thw=grid, second_per_grid_ts=seconds,
            mm_token_type_ids=types,
        ).logits  # fmt: skip
    p = ids.index(video_token_index(BASE))
    last_t = int(own_positions[0].max()) - p
    embed = s.llm.get_input_embeddings()
    ours = clip_llm_input(embed, ids, WIDE, selection.visual_embeds, selection.positions, last_t=last_t)
    assert torch.equal(ours.position_ids, own_positions)
    torch.testing.assert_close(_logits(s.llm, ours), theirs, **TOL)
    wrong = clip_llm_input(embed, ids, WIDE, selection.visual_embeds, transposed_positions(WIDE), last_t=last_t)
    assert not torch.allclose(_logits(s.llm, wrong), theirs, **TOL)
