"""The hand-off of the kept tokens to the Qwen3 generation's LLMs (issue 32, item 4): qwen3-vl-tiny (DeepStack) and
qwen3.5-tiny (hybrid linear/full-attention decoder), random weights, CPU, fp32.

The graphs' indices, visual_embeds, positions and deepstack_embeds come from exported graphs run in ONNX Runtime (what
a runtime receives). The references are transformers' own: at K = N its forward on input_ids, pixel_values (or
pixel_values_videos), the grid and mm_token_type_ids, as its processor feeds it (image processor settings of the
checkpoints' preprocessor_config.json: patch 16, merge 2, mean and std 0.5); at K < N its own full inputs (its vision
tower's rows and DeepStack rows, its get_rope_index positions) gathered at the kept tokens and run through its text model.
Logits within TOL: the graph's rows come from ONNX Runtime's encoder, the reference's from transformers' tower (~1e-6
apart, different GEMMs), so the last bits differ; each planted fault moves the logits by orders of magnitude more.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.models.registry import adapter, get_spec
from flashvlm_export.selector.config import SelectorConfig

VL = get_spec("qwen3-vl-tiny")
Q35 = get_spec("qwen3.5-tiny")
N = VL.n_tokens  # 256 at 512 px
K = 64
QUESTION = "What is on the table?"
TOL = dict(rtol=1e-5, atol=1e-5)  # measured: honest max abs <= 9e-7; each planted fault >= 0.17


def _close(a, b) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, **TOL)


def _processor(spec):
    """The checkpoints' image processor (Qwen2VLImageProcessorPil with preprocessor_config.json's patch, merge, mean
    and std), its pixel budget pinned to the graph's square side."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    side = spec.image_size
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": side * side, "longest_edge": side * side}, patch_size=16, merge_size=2,
        temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip


def _graphs(spec, parts, folder, frames=None):
    graphs = {}
    for k in (K, N if frames is None else frames // 2 * N):
        request = ExportRequest(
            spec=spec, budget=k, t_max=spec.t_max, batch=1, config=SelectorConfig(gate=spec.gate), selector_only=False,
            frames=frames,
        )  # fmt: skip
        graphs[k] = export_graph(request, folder / f"{spec.name}_b{k}.onnx", parts, "random:0", exporter="torchscript")
    return graphs


@pytest.fixture(scope="module", params=[VL, Q35], ids=lambda s: s.name)
def image(request, tmp_path_factory):
    """Both sides of the image hand-off for one photo and prompt: the graphs' selections and transformers' own inputs."""
    from PIL import Image

    from flashvlm_export.models.prompt import prompt_token_ids, text_inputs
    from flashvlm_export.runtime.answer import build_llm, expand_image_token, image_position
    from flashvlm_export.runtime.image import demo_picture, prepare_image
    from flashvlm_export.runtime.session import OrtGraph, select
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    spec = request.param
    folder = tmp_path_factory.mktemp(spec.name)
    parts = adapter(spec).random_parts(spec, 0, with_embeddings=True)
    photo = folder / "square.png"
    demo_picture(600).resize((600, 600)).save(photo)
    llm = build_llm(spec, parts, None, 0, torch.device("cpu"))
    ids = prompt_token_ids(stand_in_tokenizer(spec), QUESTION, spec)
    text, mask = text_inputs(parts.embed_tokens, ids, spec.t_max, spec.image_token_index)
    pixels = prepare_image(photo, spec).pixel_values
    selections = {k: select(OrtGraph(g), pixels, text, mask, batch=1) for k, g in _graphs(spec, parts, folder).items()}
    with Image.open(photo) as picture:
        processed = _processor(spec)(images=picture.convert("RGB"), return_tensors="pt")
    expanded = torch.tensor([expand_image_token(ids, spec.image_token_index, N)])
    image_mask = expanded == spec.image_token_index
    with torch.no_grad():
        positions, _ = llm.model.get_rope_index(
            expanded, mm_token_type_ids=image_mask.int(), image_grid_thw=processed["image_grid_thw"]
        )
        features = llm.model.get_image_features(processed["pixel_values"], processed["image_grid_thw"])
        rows = torch.cat(features.pooler_output)
        deepstack = [torch.cat(d) for d in getattr(features, "deepstack_features", None) or []]  # L x (N, Dl)
        embeds = llm.get_input_embeddings()(expanded)
        embeds[image_mask] = rows
    return SimpleNamespace(
        spec=spec, llm=llm, ids=ids, selections=selections, processed=processed, expanded=expanded, mask=image_mask,
        positions=positions, rows=rows, deepstack=deepstack, embeds=embeds, p=image_position(ids, spec.image_token_index),
    )  # fmt: skip


def _ours(h, rows, positions, deepstack, ids=None):
    """Our input (runtime/answer.py llm_input) and its logits."""
    from flashvlm_export.runtime.answer import llm_input

    inputs = llm_input(h.llm.get_input_embeddings(), ids or h.ids, h.spec, rows, positions, deepstack)
    with torch.no_grad():
        return inputs, h.llm(
            inputs_embeds=inputs.inputs_embeds, position_ids=inputs.position_ids, **(inputs.prefill or {})
        ).logits


def _kept_sequence(p: int, indices, total: int, n: int) -> torch.Tensor:
    """Sequence positions of the text (whole) and of the kept visual tokens, in order."""
    return torch.cat([torch.arange(p), p + torch.as_tensor(indices), torch.arange(p + n, total)])


def _gathered(h, indices, p, n):
    """transformers' text model on its own full inputs gathered at the kept tokens, DeepStack rows included."""
    keep = _kept_sequence(p, indices, h.expanded.shape[1], n)
    with torch.no_grad():
        if not h.deepstack:
            return h.llm(inputs_embeds=h.embeds[:, keep], position_ids=h.positions[:, :, keep]).logits
        hidden = h.llm.model.language_model(
            inputs_embeds=h.embeds[:, keep], position_ids=h.positions[:, :, keep], visual_pos_masks=h.mask[:, keep],
            deepstack_visual_embeds=[d[torch.as_tensor(indices)] for d in h.deepstack],
        ).last_hidden_state  # fmt: skip
        return h.llm.lm_head(hidden)


def _selection(h, k):
    s = h.selections[k]
    return s.visual_embeds, s.positions, s.deepstack


# ---------------------------------------------------------------- images


def test_keep_all_gives_transformers_own_logits_on_the_processors_input(image):
    """K = N: the graph's rows, positions and DeepStack rows, spliced, give the model's own forward on input_ids,
    pixel_values, image_grid_thw and mm_token_type_ids; the positions are exactly its get_rope_index."""
    h = image
    selection = h.selections[N]
    assert selection.indices.tolist() == list(range(N))
    assert (selection.deepstack is None) == (h.spec.deepstack_layers == 0)
    inputs, ours = _ours(h, *_selection(h, N))
    assert torch.equal(inputs.position_ids, h.positions)
    with torch.no_grad():
        h.llm.model.rope_deltas = None
        theirs = h.llm(
            input_ids=h.expanded, pixel_values=h.processed["pixel_values"], image_grid_thw=h.processed["image_grid_thw"],
            mm_token_type_ids=h.mask.int(),
        ).logits  # fmt: skip
    assert ours.shape == theirs.shape == (1, len(h.ids) - 1 + N, h.spec.text["vocab_size"])
    torch.testing.assert_close(ours, theirs, **TOL)


def test_pruned_input_equals_the_models_own_input_gathered_at_the_kept_tokens(image):
    h = image
    selection = h.selections[K]
    inputs, ours = _ours(h, *_selection(h, K))
    keep = _kept_sequence(h.p, selection.indices, h.expanded.shape[1], N)
    assert torch.equal(inputs.position_ids, h.positions[:, :, keep])
    torch.testing.assert_close(ours, _gathered(h, selection.indices, h.p, N), **TOL)


@pytest.mark.parametrize("k", [K, N])
def test_deepstack_rows_of_two_layers_exchanged_fail_the_hand_off(image, k):
    h = image
    if not h.spec.deepstack_layers:
        assert h.selections[k].deepstack is None  # Qwen3.5: no DeepStack rows to exchange
        return
    rows, positions, deepstack = _selection(h, k)
    reference = _gathered(h, h.selections[k].indices, h.p, N)
    assert _close(_ours(h, rows, positions, deepstack)[1], reference)  # the check passes honest input
    assert not _close(_ours(h, rows, positions, deepstack[[1, 0, *range(2, len(deepstack))]])[1], reference)


@pytest.mark.parametrize("k", [K, N])
def test_deepstack_rows_gathered_at_the_wrong_indices_fail_the_hand_off(image, k):
    h = image
    if not h.spec.deepstack_layers:
        return
    rows, positions, deepstack = _selection(h, k)
    indices = torch.as_tensor(h.selections[k].indices)
    shifted = torch.stack([d[(indices + 1) % N] for d in h.deepstack])  # each kept row's neighbour's DeepStack rows
    assert not _close(_ours(h, rows, positions, shifted)[1], _gathered(h, indices, h.p, N))


@pytest.mark.parametrize("k", [K, N])
def test_linear_attention_layers_fed_the_kept_rows_at_the_wrong_positions_fail_the_hand_off(image, k):
    """Qwen3.5's linear-attention layers (Gated DeltaNet) take no rotary positions: a row's position for them is its
    place in the sequence. The kept rows put at other places (reverse order), each still carrying its own (t, h, w) for
    the full-attention layers, must fail; the honest order passes."""
    h = image
    if not h.spec.text.get("layer_types"):
        return  # Qwen3-VL: no linear-attention layers (its own faults are above)
    assert "linear_attention" in h.spec.text["layer_types"]
    rows, positions, deepstack = _selection(h, k)
    reference = _gathered(h, h.selections[k].indices, h.p, N)
    assert _close(_ours(h, rows, positions, deepstack)[1], reference)
    assert not _close(_ours(h, rows.flip(0), positions.flip(0), deepstack)[1], reference)


def test_greedy_decoding_of_a_deepstack_model_equals_transformers_generation(image):
    """K = N, a few tokens: greedy_answer (prefill with the DeepStack rows, then decode steps at the unpruned positions)
    gives the tokens of transformers' own forward over the prompt and the tokens generated before each."""
    from flashvlm_export.runtime.answer import greedy_answer, llm_input
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    h = image
    inputs = llm_input(h.llm.get_input_embeddings(), h.ids, h.spec, *_selection(h, N))
    tokens = greedy_answer(h.llm, inputs, stand_in_tokenizer(h.spec), 4, "full").token_ids
    with torch.no_grad():
        h.llm.model.rope_deltas = None
        sequence = torch.cat([h.expanded, torch.tensor([tokens[:-1]])], dim=1)
        theirs = h.llm(
            input_ids=sequence, pixel_values=h.processed["pixel_values"], image_grid_thw=h.processed["image_grid_thw"],
            mm_token_type_ids=(sequence == h.spec.image_token_index).int(),
        ).logits[0, -len(tokens) :]  # fmt: skip
    assert theirs.argmax(-1).tolist() == tokens


# ---------------------------------------------------------------- a clip (Qwen3-VL: timestamps between frame groups)

FRAMES = 4
SOURCE_FPS = 2.0
FRAME_INDICES = [0, 1, 2, 3]


def _their_placeholder(grid, frame_indices, fps):
    """Qwen3VLProcessor.replace_video_token's own text for the clip (transformers' code, run on a stand-in `self`)."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    owner = SimpleNamespace(
        video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2), video_token="<|video_pad|>",
        vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
        _calculate_timestamps=lambda *args: Qwen3VLProcessor._calculate_timestamps(None, *args),
    )  # fmt: skip
    metadata = VideoMetadata(total_num_frames=len(frame_indices), fps=fps, frames_indices=list(frame_indices))
    return Qwen3VLProcessor.replace_video_token(owner, {"video_grid_thw": grid, "video_metadata": [metadata]}, 0)


@pytest.fixture(scope="module", params=[VL, Q35], ids=lambda s: s.name)
def clip(request, tmp_path_factory):
    from flashvlm_export.models.qwen3_vl import video_processor_patchify
    from flashvlm_export.parity.corpus import clip_of
    from flashvlm_export.runtime.answer import build_llm
    from flashvlm_export.runtime.clip import clip_prompt_ids, clip_text_inputs, group_timestamps, video_token_index
    from flashvlm_export.runtime.session import OrtGraph, select
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    spec = request.param
    folder = tmp_path_factory.mktemp("qwen3_clip")
    parts = adapter(spec).random_parts(spec, 0, with_embeddings=True)
    image = torch.randn(3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(3)).numpy()
    frames = torch.from_numpy(clip_of(image, FRAMES, 1))[None].float()  # (1, F, 3, H, W), panning
    llm = build_llm(spec, parts, None, 0, torch.device("cpu"))
    tokenizer = stand_in_tokenizer(spec)
    stamps = group_timestamps(FRAME_INDICES, SOURCE_FPS)
    ids = clip_prompt_ids(tokenizer, QUESTION, spec, stamps)
    text, mask = clip_text_inputs(parts.embed_tokens, ids, spec, spec.t_max)
    total = FRAMES // 2 * N
    selections = {k: select(OrtGraph(g), frames, text, mask, batch=1) for k, g in _graphs(spec, parts, folder, FRAMES).items()}
    flat, gt, gh, gw = video_processor_patchify(frames, spec.patch_size, spec.merge, 2)
    grid = torch.tensor([[gt, gh, gw]])
    prompt = adapter(spec).video_prompt(QUESTION).replace("<|video_pad|>", _their_placeholder(grid, FRAME_INDICES, SOURCE_FPS), 1)
    expanded = torch.tensor([tokenizer(prompt).input_ids])  # transformers' processor's input_ids
    video = video_token_index(spec)
    video_mask = expanded == video
    with torch.no_grad():
        positions, _ = llm.model.get_rope_index(expanded, mm_token_type_ids=video_mask.int() * 2, video_grid_thw=grid)
        features = llm.model.get_video_features(flat[0], grid)
        rows = torch.cat(features.pooler_output)
        embeds = llm.get_input_embeddings()(expanded)
        embeds[video_mask] = rows
    return SimpleNamespace(
        spec=spec, llm=llm, tokenizer=tokenizer, ids=ids, stamps=stamps, selections=selections, flat=flat[0], grid=grid,
        expanded=expanded, mask=video_mask, positions=positions, rows=rows, embeds=embeds, total=total, video=video,
        deepstack=[torch.cat(d) for d in getattr(features, "deepstack_features", None) or []],
    )  # fmt: skip


def _clip_ours(h, k, stamps=None, deepstack=None):
    from flashvlm_export.runtime.clip import clip_llm_input, clip_prompt_ids

    s = h.selections[k]
    ids = h.ids if stamps is None else clip_prompt_ids(h.tokenizer, QUESTION, h.spec, stamps)
    inputs = clip_llm_input(
        h.llm.get_input_embeddings(), ids, h.spec, s.visual_embeds, s.positions, last_t=0, indices=s.indices,
        deepstack=s.deepstack if deepstack is None else deepstack,
    )  # fmt: skip
    with torch.no_grad():
        return inputs, h.llm(
            inputs_embeds=inputs.inputs_embeds, position_ids=inputs.position_ids, **(inputs.prefill or {})
        ).logits


def _expanded_ids(h, ids, indices):
    """Our prompt with each group's placeholder repeated by its kept count."""
    groups = np.bincount(np.asarray(indices) // N, minlength=FRAMES // 2)
    out, g = [], 0
    for token in ids:
        out += [token] * int(groups[g]) if token == h.video else [token]
        g += token == h.video
    return out


def test_the_clip_prompt_is_qwen3_processors_own_timestamps_and_all(clip):
    """Our prompt, each group's placeholder expanded to its N tokens, is token for token the input_ids of
    Qwen3VLProcessor's own expansion (its replace_video_token and _calculate_timestamps); a timestamp off by one
    second is not."""
    h = clip
    assert _expanded_ids(h, h.ids, np.arange(h.total)) == h.expanded[0].tolist()
    from flashvlm_export.runtime.clip import clip_prompt_ids

    wrong = list(h.stamps)
    wrong[1] += 1.0
    assert _expanded_ids(h, clip_prompt_ids(h.tokenizer, QUESTION, h.spec, wrong), np.arange(h.total)) != h.expanded[0].tolist()


def test_keep_all_clip_gives_transformers_own_video_logits(clip):
    h = clip
    inputs, ours = _clip_ours(h, h.total)
    assert torch.equal(inputs.position_ids, h.positions)
    with torch.no_grad():
        h.llm.model.rope_deltas = None
        theirs = h.llm(
            input_ids=h.expanded, pixel_values_videos=h.flat, video_grid_thw=h.grid, mm_token_type_ids=h.mask.int() * 2
        ).logits
    torch.testing.assert_close(ours, theirs, **TOL)
    stamped = list(h.stamps)
    stamped[1] += 1.0  # the planted fault: one frame group's timestamp off by one second
    assert not _close(_clip_ours(h, h.total, stamps=stamped)[1], theirs)


def test_pruned_clip_equals_the_models_own_input_gathered_at_the_kept_tokens(clip):
    h = clip
    s = h.selections[K]
    inputs, ours = _clip_ours(h, K)
    visual = torch.nonzero(h.mask[0])[:, 0]  # the sequence positions of the clip's tokens, group by group
    keep = torch.cat([torch.nonzero(~h.mask[0])[:, 0], visual[torch.as_tensor(s.indices)]]).sort().values
    assert torch.equal(inputs.position_ids, h.positions[:, :, keep])
    with torch.no_grad():
        if h.deepstack:
            hidden = h.llm.model.language_model(
                inputs_embeds=h.embeds[:, keep], position_ids=h.positions[:, :, keep], visual_pos_masks=h.mask[:, keep],
                deepstack_visual_embeds=[d[torch.as_tensor(s.indices)] for d in h.deepstack],
            ).last_hidden_state  # fmt: skip
            reference = h.llm.lm_head(hidden)
        else:
            reference = h.llm(inputs_embeds=h.embeds[:, keep], position_ids=h.positions[:, :, keep]).logits
    torch.testing.assert_close(ours, reference, **TOL)
    if h.deepstack:
        assert not _close(_clip_ours(h, K, deepstack=s.deepstack[[2, 1, 0]])[1], reference)


# ---------------------------------------------------------------- the hand-off's own checks, on planted wrong inputs


def test_deepstack_rows_of_the_wrong_shape_or_none_are_refused_by_both_llm_runtimes():
    """Qwen3-VL's rows without their DeepStack rows, or with another K or L, never reach an LLM (transformers' input
    and llama.cpp's batches check the same shape, answer.check_deepstack); a model without DeepStack takes none."""
    from flashvlm_export.models.positions import token_positions
    from flashvlm_export.models.prompt import prompt_token_ids
    from flashvlm_export.runtime.answer import llm_input
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    ids = prompt_token_ids(stand_in_tokenizer(VL), QUESTION, VL)
    embed = torch.nn.Embedding(VL.text["vocab_size"], VL.text_hidden)
    rows, positions = torch.zeros(K, VL.text_hidden), token_positions(VL)[:K]
    honest = torch.zeros(VL.deepstack_layers, K, VL.text_hidden)
    assert llm_input(embed, ids, VL, rows, positions, honest).prefill is not None
    assert llama_cpp_prompt(ids, VL, rows, positions, deepstack=honest).length == len(ids) - 1 + K
    for wrong in (None, honest[:2], honest[:, : K - 1]):
        with pytest.raises(ValueError, match="DeepStack rows"):
            llm_input(embed, ids, VL, rows, positions, wrong)
        with pytest.raises(ValueError, match="DeepStack rows"):
            llama_cpp_prompt(ids, VL, rows, positions, deepstack=wrong)
    assert llm_input(embed, prompt_token_ids(stand_in_tokenizer(Q35), QUESTION, Q35), Q35, rows, positions).prefill is None


def test_a_clip_prompt_with_a_placeholder_too_many_or_no_timestamps_is_refused():
    from flashvlm_export.errors import UsageError
    from flashvlm_export.runtime.answer import splice_rows
    from flashvlm_export.runtime.clip import clip_prompt_ids, placeholder_positions, video_token_index
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    tokenizer = stand_in_tokenizer(VL)
    ids = clip_prompt_ids(tokenizer, QUESTION, VL, [0.5, 1.5])
    assert len(placeholder_positions(ids, VL, 2)) == 2
    with pytest.raises(UsageError, match="3 video placeholders where 2 belong") as caught:
        placeholder_positions(clip_prompt_ids(tokenizer, "<|video_pad|> what?", VL, [0.5, 1.5]), VL, 2)
    assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(ValueError, match="pass them"):
        clip_prompt_ids(tokenizer, QUESTION, VL)
    embed = torch.nn.Embedding(VL.text["vocab_size"], VL.text_hidden)
    with pytest.raises(ValueError, match="2 placeholders for 1 groups"):  # rows for one group, two placeholders
        splice_rows(embed, ids, video_token_index(VL), [4], torch.zeros(4, VL.text_hidden))
    with pytest.raises(ValueError, match=r"\(5 of 4\)"):  # counts that do not add up to the rows
        splice_rows(embed, ids, video_token_index(VL), [2, 3], torch.zeros(4, VL.text_hidden))
