"""Qwen2.5-VL through `run`: the photo, the stand-in tokenizer, and the hand-off of the kept tokens to the LLM.

The hand-off proof (issue 20, item 4), tiny random model, CPU, fp32. The graph's indices, visual_embeds and
positions come from exported tiny graphs run in ONNX Runtime (not the torch module): what a runtime receives.
Positions are integers and are compared exactly. Logits are compared within TOL: the graph's visual_embeds
come from ONNX Runtime's encoder, the reference's from transformers' vision tower (different GEMM order and
window-attention code, ~1e-6 apart), and the LLM then runs different sequences of the same fp32 kernels, so
the last bits differ; a misplaced token or position moves logits by orders of magnitude more (the planted faults).
"""

from __future__ import annotations

import ast
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flashvlm_export.cli import main
from flashvlm_export.errors import FlashVLMError, UsageError
from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.models.registry import get_spec
from flashvlm_export.selector.config import SelectorConfig

QWEN = get_spec("qwen2.5-vl-tiny")
N = QWEN.n_tokens  # 256
S = QWEN.image_size  # 448
QUESTION = "What is on the table?"
TOL = dict(rtol=1e-5, atol=1e-5)  # measured: honest <= 7e-7; two positions exchanged >= 5e-4


@pytest.fixture(scope="module")
def qwen_parts():
    from flashvlm_export.models.qwen2_5_vl import random_parts

    return random_parts(QWEN, 0, with_embeddings=True)


@pytest.fixture(scope="module")
def qwen_graphs(tmp_path_factory, qwen_parts):
    """qwen2.5-vl-tiny full graphs with random weights, seed 0: K=64 and K=N=256 (keeps all)."""
    folder = tmp_path_factory.mktemp("qwen_graphs")
    graphs = {}
    for k in (64, N):
        config = SelectorConfig(gate=QWEN.gate)
        request = ExportRequest(spec=QWEN, budget=k, t_max=QWEN.t_max, batch=1, config=config, selector_only=False)
        graphs[k] = export_graph(request, folder / f"qwen2.5-vl-tiny_b{k}.onnx", qwen_parts, "random:0", exporter="torchscript")
    return graphs


def _square_photo(path, side: int):
    from flashvlm_export.runtime.image import demo_picture

    demo_picture(side).resize((side, side)).save(path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return _square_photo(tmp_path_factory.mktemp("qwen_images") / "square.png", 500)


def _processor_output(path):
    """Qwen2VLImageProcessorPil's own input for the photo at S x S pixels: flat patches and image_grid_thw."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(size={"shortest_edge": S * S, "longest_edge": S * S})
    with Image.open(path) as image:
        return processor(images=image.convert("RGB"), return_tensors="pt")


@pytest.fixture(scope="module")
def handoff(qwen_parts, qwen_graphs, photo):
    """Both sides of the hand-off for one photo and prompt: the graphs' selections and transformers' own inputs."""
    from flashvlm_export.models.prompt import prompt_token_ids, text_inputs
    from flashvlm_export.runtime.answer import build_llm, expand_image_token, image_position
    from flashvlm_export.runtime.image import prepare_image
    from flashvlm_export.runtime.session import OrtGraph, select
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    llm = build_llm(QWEN, qwen_parts, None, 0, torch.device("cpu"))
    tokenizer = stand_in_tokenizer(QWEN)
    pixels = prepare_image(photo, QWEN).pixel_values
    ids = prompt_token_ids(tokenizer, QUESTION, QWEN)
    text, mask = text_inputs(qwen_parts.embed_tokens, ids, QWEN.t_max, QWEN.image_token_index)
    selections = {k: select(OrtGraph(path), pixels, text, mask, batch=1) for k, path in qwen_graphs.items()}
    processed = _processor_output(photo)
    expanded = torch.tensor([expand_image_token(ids, QWEN.image_token_index, N)])
    image_mask = expanded == QWEN.image_token_index
    with torch.no_grad():
        full_positions, _ = llm.model.get_rope_index(
            expanded, mm_token_type_ids=image_mask.int(), image_grid_thw=processed["image_grid_thw"]
        )  # (3, 1, L): the model's own
        own_rows = torch.cat(llm.model.get_image_features(processed["pixel_values"], processed["image_grid_thw"]).pooler_output)
        full_embeds = llm.get_input_embeddings()(expanded)
        full_embeds[image_mask] = own_rows  # the model's own full input, as its forward builds it (masked_scatter)
    return SimpleNamespace(
        llm=llm, tokenizer=tokenizer, ids=ids, selections=selections, processed=processed, expanded=expanded,
        image_mask=image_mask, full_positions=full_positions, own_rows=own_rows, full_embeds=full_embeds,
        p=image_position(ids, QWEN.image_token_index),
    )  # fmt: skip


def _ours(h, rows, positions):
    """Our spliced input and its logits."""
    from flashvlm_export.runtime.answer import llm_input

    inputs = llm_input(h.llm.get_input_embeddings(), h.ids, QWEN, rows, positions)
    with torch.no_grad():
        return inputs, h.llm(inputs_embeds=inputs.inputs_embeds, position_ids=inputs.position_ids).logits


def _close(a, b) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, **TOL)


def _kept_sequence(h, indices) -> torch.Tensor:
    """Sequence positions of the text (whole) and of the kept image tokens, in order."""
    before = torch.arange(h.p)
    image = h.p + torch.as_tensor(indices)
    after = torch.arange(h.p + N, h.expanded.shape[1])
    return torch.cat([before, image, after])


# ---------------------------------------------------------------- the photo and the tokenizer


@pytest.mark.parametrize("side", [300, 448, 500, 1000])
def test_a_square_photo_gives_the_qwen_processors_own_pixels_at_the_graphs_side(tmp_path, side):
    """Bitwise: the same PIL bicubic resize, then the processor's own rescale and normalise (no resize of its own)."""
    from flashvlm_export.models.qwen2_5_vl import patchify
    from flashvlm_export.runtime.image import prepare_image

    path = _square_photo(tmp_path / f"sq{side}.png", side)
    ours = prepare_image(path, QWEN).pixel_values
    theirs = _processor_output(path)
    assert ours.shape == (1, 3, S, S)
    assert theirs["image_grid_thw"].tolist() == [[1, S // 14, S // 14]]
    assert torch.equal(patchify(ours, 14, 2, 2), theirs["pixel_values"])


def test_a_qwen_checkpoints_preprocessor_config_sets_mean_and_std(tmp_path, photo):
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from flashvlm_export.runtime.image import prepare_image

    Qwen2VLImageProcessorPil(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(tmp_path)
    prepared = prepare_image(photo, QWEN, tmp_path)
    with Image.open(photo) as image:
        resized = np.asarray(image.convert("RGB").resize((S, S), Image.Resampling.BICUBIC), dtype=np.float32)
    want = torch.from_numpy((resized / 255 - 0.5) / 0.25).permute(2, 0, 1)[None]
    assert "preprocessor_config.json" in prepared.processor
    torch.testing.assert_close(prepared.pixel_values, want, rtol=0, atol=1e-5)
    assert not torch.allclose(prepare_image(photo, QWEN).pixel_values, want, atol=1e-2)  # the defaults differ


def test_qwen_stand_in_tokenizer_keeps_special_tokens_whole_adds_no_bos_and_ends_at_im_end():
    from flashvlm_export.models.prompt import prompt_token_ids
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    tokenizer = stand_in_tokenizer(QWEN)
    ids = prompt_token_ids(tokenizer, "What is on the table? é", QWEN)
    tokens = QWEN.special_tokens
    assert tokenizer.bos_token_id is None and ids[0] == tokens["<|im_start|>"]
    assert tokenizer.eos_token_id == tokens["<|im_end|>"]
    assert ids.count(QWEN.image_token_index) == 1
    assert ids.count(tokens["<|im_start|>"]) == 3 and ids.count(tokens["<|im_end|>"]) == 2
    p = ids.index(QWEN.image_token_index)
    assert ids[p - 1] == tokens["<|vision_start|>"] and ids[p + 1] == tokens["<|vision_end|>"]
    assert max(ids) < QWEN.text["vocab_size"] and len(ids) <= QWEN.t_max
    assert tokenizer.decode(ids, skip_special_tokens=True).endswith("What is on the table? é\nassistant\n")


# ---------------------------------------------------------------- the hand-off proof


def test_keep_all_splice_with_the_graphs_positions_gives_transformers_own_qwen_logits(handoff):
    """K = N: visual_embeds + positions from the graph, spliced, give Qwen2_5_VLForConditionalGeneration's logits
    on input_ids, pixel_values (the processor's layout), image_grid_thw (and mm_token_type_ids, without which its
    forward falls back to 1-D positions). The position ids are exactly the model's own get_rope_index."""
    h = handoff
    selection = h.selections[N]
    assert selection.indices.tolist() == list(range(N))
    inputs, ours = _ours(h, selection.visual_embeds, selection.positions)
    assert torch.equal(inputs.position_ids, h.full_positions)
    with torch.no_grad():
        h.llm.model.rope_deltas = None
        theirs = h.llm(
            input_ids=h.expanded,
            pixel_values=h.processed["pixel_values"],
            image_grid_thw=h.processed["image_grid_thw"],
            mm_token_type_ids=h.image_mask.int(),
        ).logits
    assert ours.shape == theirs.shape == (1, len(h.ids) - 1 + N, QWEN.text["vocab_size"])
    torch.testing.assert_close(ours, theirs, **TOL)


def test_pruned_splice_equals_the_full_input_gathered_at_the_kept_tokens(handoff):
    """K < N: our input (graph's visual_embeds and positions) gives the logits of transformers' forward on the
    model's own full inputs_embeds and get_rope_index position_ids, gathered at the kept tokens (text whole)."""
    h = handoff
    selection = h.selections[64]
    keep = _kept_sequence(h, selection.indices)
    inputs, ours = _ours(h, selection.visual_embeds, selection.positions)
    assert torch.equal(inputs.position_ids, h.full_positions[:, :, keep])
    with torch.no_grad():
        theirs = h.llm(inputs_embeds=h.full_embeds[:, keep], position_ids=h.full_positions[:, :, keep]).logits
    assert ours.shape == theirs.shape == (1, len(h.ids) - 1 + 64, QWEN.text["vocab_size"])
    torch.testing.assert_close(ours, theirs, **TOL)


def _reference(h, k):
    keep = _kept_sequence(h, h.selections[k].indices)
    with torch.no_grad():
        return h.llm(inputs_embeds=h.full_embeds[:, keep], position_ids=h.full_positions[:, :, keep]).logits


@pytest.mark.parametrize("k", [64, N])
def test_positions_of_two_kept_tokens_exchanged_fail_the_hand_off(handoff, k):
    h = handoff
    selection = h.selections[k]
    reference = _reference(h, k)
    assert _close(_ours(h, selection.visual_embeds, selection.positions)[1], reference)  # the check passes honest input
    swapped = selection.positions.clone()
    swapped[[0, -1]] = swapped[[-1, 0]]  # (0, 0, w0) <-> (0, h, w): different rows and columns
    assert not _close(_ours(h, selection.visual_embeds, swapped)[1], reference)


@pytest.mark.parametrize("k", [64, N])
def test_an_embedding_row_off_by_one_fails_the_hand_off(handoff, k):
    h = handoff
    selection = h.selections[k]
    reference = _reference(h, k)
    j = len(selection.indices) // 2
    rows = selection.visual_embeds.clone()
    rows[j] = h.own_rows[selection.indices[j] + 1]  # the next token's embedding at kept row j
    assert not _close(_ours(h, rows, selection.positions)[1], reference)


class Recorder:
    """The LLM, recording each forward's position_ids and last-row logits (greedy_answer calls it as the model)."""

    def __init__(self, model):
        self.model, self.positions, self.logits = model, [], []

    def __call__(self, **kwargs):
        out = self.model(**kwargs)
        self.positions.append(kwargs.get("position_ids"))
        self.logits.append(out.logits[0, -1])
        return out


def test_greedy_decoding_continues_at_the_unpruned_positions(handoff):
    """K = N: each step's logits are transformers' own for the prompt plus the tokens generated before it (its forward
    places them after the image's extent: the rope delta); decoding at the spliced sequence's length instead fails."""
    from flashvlm_export.runtime.answer import LLMInput, greedy_answer, llm_input

    h = handoff
    selection = h.selections[N]
    inputs = llm_input(h.llm.get_input_embeddings(), h.ids, QWEN, selection.visual_embeds, selection.positions)
    before, after = h.p, len(h.ids) - h.p - 1
    assert inputs.next_position == before + QWEN.grid_side + after
    ours = Recorder(h.llm)
    tokens = greedy_answer(ours, inputs, h.tokenizer, 6, "full").token_ids
    assert len(tokens) == 6  # no <|im_end|> among them: every step below is a decode step
    for i, ids in enumerate(ours.positions[2:]):  # after the warm-up and the prefill: one per generated token
        assert torch.equal(ids, torch.full((3, 1, 1), inputs.next_position + i))

    with torch.no_grad():
        h.llm.model.rope_deltas = None
        sequence = torch.cat([h.expanded, torch.tensor([tokens[:-1]])], dim=1)
        theirs = h.llm(
            input_ids=sequence,
            pixel_values=h.processed["pixel_values"],
            image_grid_thw=h.processed["image_grid_thw"],
            mm_token_type_ids=(sequence == QWEN.image_token_index).int(),
        ).logits[0, -len(tokens) :]  # the rows that predict each generated token
    assert theirs.argmax(-1).tolist() == tokens
    torch.testing.assert_close(torch.stack(ours.logits[1:]), theirs, **TOL)

    wrong = Recorder(h.llm)  # the fault: decoding at the spliced length, as if there were no rope delta
    greedy_answer(wrong, LLMInput(inputs.inputs_embeds, inputs.position_ids, h.expanded.shape[1]), h.tokenizer, 6, "x")
    assert not _close(torch.stack(wrong.logits[1:]), theirs)


def test_llava_inputs_carry_no_position_ids():
    from flashvlm_export.runtime.answer import llm_input
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    tiny = get_spec("llava15-tiny")
    embed = torch.nn.Embedding(tiny.text["vocab_size"], tiny.text_hidden)
    from flashvlm_export.models.prompt import prompt_token_ids

    ids = prompt_token_ids(stand_in_tokenizer(tiny), QUESTION, tiny)
    inputs = llm_input(embed, ids, tiny, torch.zeros(5, tiny.text_hidden))
    assert inputs.position_ids is None and inputs.inputs_embeds.shape == (1, len(ids) - 1 + 5, tiny.text_hidden)


def test_run_refuses_graph_positions_that_are_not_the_kept_tokens_own(handoff):
    from flashvlm_export.runtime.run_steps import check_positions as _check_positions

    selection = handoff.selections[64]
    _check_positions(selection, QWEN, "g.onnx")
    wrong = SimpleNamespace(indices=selection.indices, positions=selection.positions.clone())
    wrong.positions[[3, 40]] = wrong.positions[[40, 3]]
    with pytest.raises(FlashVLMError, match="g.onnx returned position .* for token"):
        _check_positions(wrong, QWEN, "g.onnx")
    with pytest.raises(FlashVLMError, match="returns no kept-token positions"):
        _check_positions(SimpleNamespace(indices=selection.indices, positions=None), QWEN, "g.onnx")


# ---------------------------------------------------------------- the command


def test_run_on_a_qwen_graph_prints_positions_and_answers_from_64_and_256_tokens(qwen_graphs, tmp_path, capsys):
    heatmap = tmp_path / "kept.png"
    code = main([
        "run", "--graph", str(qwen_graphs[64]), "--demo-image", str(tmp_path / "demo.png"), "--question", QUESTION,
        "--heatmap", str(heatmap), "--answer", "--compare-full", "--max-new-tokens", "4",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Run: selected 64/256 tokens" in out
    kept = ast.literal_eval(out.split("Run: kept indices ", 1)[1].splitlines()[0])
    first = kept[0]
    line = out.split("Run: kept positions (t, h, w) from the image's start, from the graph: ", 1)[1].splitlines()[0]
    assert line.startswith(f"({0}, {first // 16}, {first % 16})") and line.endswith("58 more")
    assert "Answer [pruned K=64]: prefill" in out and "Answer [full N=256]: prefill" in out
    assert "over 144 tokens" in out and f"over {144 - 64 + 256} tokens" in out
    assert heatmap.is_file()


def test_a_question_holding_qwens_image_token_is_one_line_exit_2(qwen_graphs, photo, capsys):
    code = main(["run", "--graph", str(qwen_graphs[64]), "--image", str(photo), "--question", "<|image_pad|> what?"])
    _, err = capsys.readouterr()
    assert code == 2 and "<|image_pad|>" in err and len(err.strip().splitlines()) == 1


def test_random_weight_answer_on_full_size_qwen_is_refused_naming_the_tiny_model():
    from flashvlm_export.runtime.answer import check_random_llm_fits

    check_random_llm_fits(QWEN)
    with pytest.raises(UsageError, match="qwen2.5-vl-tiny"):
        check_random_llm_fits(get_spec("qwen2.5-vl-7b"))
