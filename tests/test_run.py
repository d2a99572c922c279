"""`flashvlm-export run`: photo + question -> kept tokens, heatmap, answer; and the LLM hand-off proof."""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch

from flashvlm_export.cli import main
from flashvlm_export.errors import UsageError
from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.selector.config import SelectorConfig

from ci_skips import unavailable_here
from conftest import LLAVA15, TINY, expect_one_line

QUESTION = "What is on the table?"


@pytest.fixture(scope="module")
def tiny_graphs(tiny_full_graphs):
    """llava15-tiny full graphs with random weights, seed 0: K=64 and K=N=576 (keeps all); shared (conftest)."""
    return tiny_full_graphs


@pytest.fixture(scope="module")
def demo_image(tmp_path_factory):
    from flashvlm_export.runtime.image import demo_picture

    path = tmp_path_factory.mktemp("images") / "demo.png"
    demo_picture().save(path)
    return path


def _run_cli(capsys, *argv):
    code = main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the hand-off proof


def test_keep_all_splice_gives_the_logits_of_transformers_llava_forward(tiny_graphs, demo_image):
    """K >= N: the graph's visual_embeds spliced at <image> give LlavaForConditionalGeneration's own logits.

    The reference is transformers' forward on pixel_values + input_ids with the image token repeated
    N times (what LlavaProcessor feeds it). Both sides are fp32 but different code (ONNX Runtime's
    encoder vs torch's, eager vs sdpa attention), so the match is within fp32 tolerance, not exact.
    """
    from flashvlm_export.models.llava import random_parts
    from flashvlm_export.models.prompt import prompt_token_ids, text_inputs
    from flashvlm_export.runtime.answer import build_llm, expand_image_token, splice
    from flashvlm_export.runtime.image import prepare_image
    from flashvlm_export.runtime.session import OrtGraph, select
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    parts = random_parts(TINY, 0, with_embeddings=True)
    llm = build_llm(TINY, parts, None, 0, torch.device("cpu"))
    pixels = prepare_image(demo_image, TINY).pixel_values
    ids = prompt_token_ids(stand_in_tokenizer(TINY), QUESTION, TINY)
    text, mask = text_inputs(parts.embed_tokens, ids, TINY.t_max, TINY.image_token_index)
    selection = select(OrtGraph(tiny_graphs[576]), pixels, text, mask, batch=1)
    assert selection.indices.tolist() == list(range(576))

    with torch.no_grad():
        ours = llm(inputs_embeds=splice(llm.get_input_embeddings(), ids, TINY.image_token_index, selection.visual_embeds)).logits
        expanded = torch.tensor([expand_image_token(ids, TINY.image_token_index, 576)])
        theirs = llm(input_ids=expanded, pixel_values=pixels).logits
        assert ours.shape == theirs.shape == (1, len(ids) - 1 + 576, TINY.text["vocab_size"])
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

        # the check itself: the same rows in the wrong order (not ascending token order) are caught
        shuffled = selection.visual_embeds.flip(0)
        wrong = llm(inputs_embeds=splice(llm.get_input_embeddings(), ids, TINY.image_token_index, shuffled)).logits
        assert not torch.allclose(wrong, theirs, rtol=1e-4, atol=1e-4)


def test_random_llm_shares_the_graphs_encoder_projector_and_embeddings(tiny_parts):
    from flashvlm_export.models.llava import random_parts
    from flashvlm_export.runtime.answer import build_llm

    parts = random_parts(TINY, 0, with_embeddings=True)
    llm = build_llm(TINY, parts, None, 0, torch.device("cpu"))
    # exact: the same seeded construction, copied tensors
    for ours, graphs in (
        (llm.model.vision_tower, tiny_parts.vision_tower),
        (llm.model.multi_modal_projector, tiny_parts.projector),
    ):
        for (name, a), (_, b) in zip(ours.state_dict().items(), graphs.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    assert torch.equal(llm.get_input_embeddings().weight, parts.embed_tokens.weight)


def test_random_weight_answer_on_the_full_size_model_is_refused_naming_the_tiny_model():
    from flashvlm_export.runtime.answer import check_random_llm_fits

    check_random_llm_fits(TINY)
    with pytest.raises(UsageError, match="llava15-tiny"):
        check_random_llm_fits(LLAVA15)


# ---------------------------------------------------------------- the command, end to end


def test_run_prints_kept_tokens_both_answers_and_prefill_times_and_writes_the_heatmap(tiny_graphs, tmp_path, capsys):
    heatmap = tmp_path / "h.png"
    code, out, err = _run_cli(
        capsys, "--graph", tiny_graphs[64], "--random-weights", "--demo-image", tmp_path / "demo.png",
        "--question", QUESTION, "--heatmap", heatmap, "--answer", "--compare-full", "--max-new-tokens", 4,
    )  # fmt: skip
    assert code == 0, err
    assert "Run: selected 64/576 tokens" in out and "Run: kept indices [" in out
    assert "Answer [pruned K=64]: prefill" in out and "Answer [full N=576]: prefill" in out
    assert "answers below are noise" in out
    assert heatmap.is_file() and (tmp_path / "demo.png").is_file()
    kept = ast.literal_eval(out.split("Run: kept indices ", 1)[1].splitlines()[0])
    assert len(kept) == 64 and kept == sorted(kept)


def test_python_api_returns_indices_answers_and_kv_sizes(tiny_graphs, demo_image):
    from flashvlm_export.runtime import run

    result = run(
        str(tiny_graphs[64]),
        str(demo_image),
        QUESTION,
        random_weights=True,
        compare_full=True,
        max_new_tokens=2,
        log=lambda _: None,
    )
    assert result.indices.shape == (64,) and result.n_tokens == 576
    pruned, full = result.answers["pruned"], result.answers["full"]
    assert full.prompt_tokens - pruned.prompt_tokens == 576 - 64
    # KV cache grows linearly in the sequence: exact integer arithmetic
    per_token = full.kv_bytes // full.prompt_tokens
    assert pruned.kv_bytes == per_token * pruned.prompt_tokens and full.kv_bytes == per_token * full.prompt_tokens


def test_heatmap_marks_kept_cells_in_their_role_colour_and_dims_dropped_ones(tiny_graphs, demo_image, tmp_path):
    """Render one, open it, and read the pixels of known kept and dropped cells."""
    from PIL import Image

    from flashvlm_export.models.llava import random_parts
    from flashvlm_export.models.prompt import prompt_token_ids, text_inputs
    from flashvlm_export.runtime import run
    from flashvlm_export.runtime.heatmap import DIVERSE_RGB, DROPPED_DIM, IMPORTANT_RGB, cell_origin, score_maps, token_roles
    from flashvlm_export.runtime.image import prepare_image
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    path = tmp_path / "kept.png"
    result = run(str(tiny_graphs[64]), str(demo_image), QUESTION, random_weights=True, heatmap=str(path), log=lambda _: None)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[1] == 5 * 336 + 4 * 8  # image panel + S_int, s, S_ext, F

    parts = random_parts(TINY, 0, with_embeddings=True)
    prepared = prepare_image(demo_image, TINY)
    text, mask = text_inputs(parts.embed_tokens, prompt_token_ids(stand_in_tokenizer(TINY), QUESTION, TINY), TINY.t_max, 999)
    maps = score_maps(parts, prepared.pixel_values, text[0][mask[0]], SelectorConfig())
    important, diverse = token_roles(result.indices, maps.fused, 32)
    assert important.sum() == 32 and diverse.sum() == 32  # the graph's K_imp = floor(K / 2), K - K_imp (step 9)

    def corner(token):
        x, y = cell_origin(int(token), 24, 336)
        return tuple(int(v) for v in picture[y, x]), (x, y)

    first_important, first_diverse = np.flatnonzero(important)[0], np.flatnonzero(diverse)[0]
    assert corner(first_important)[0] == IMPORTANT_RGB
    assert corner(first_diverse)[0] == DIVERSE_RGB
    for token in np.flatnonzero(important):
        assert corner(token)[0] == IMPORTANT_RGB, token
    for token in np.flatnonzero(diverse):
        assert corner(token)[0] == DIVERSE_RGB, token
    dropped = sorted(set(range(576)) - set(result.indices.tolist()))[0]
    colour, (x, y) = corner(dropped)
    shown = prepared.shown[y - 18, x]  # the title strip is 18 px
    assert colour == tuple(int(v) for v in np.round(shown.astype(np.float64) * DROPPED_DIM))
    assert colour not in (IMPORTANT_RGB, DIVERSE_RGB)


def _rendered_roles(indices, fused, k_imp, grid=4, side=48):
    """Render a heatmap and count the kept cells outlined in each role's colour (their top-left pixel)."""
    from flashvlm_export.runtime.heatmap import DIVERSE_RGB, IMPORTANT_RGB, ScoreMaps, cell_origin, render_heatmap

    n = grid * grid
    maps = ScoreMaps(np.zeros(n), np.zeros(n), np.zeros(n), fused)
    picture = np.asarray(render_heatmap(np.full((side, side, 3), 128, np.uint8), indices, maps, k_imp, "test"))
    colours = [tuple(int(v) for v in picture[cell_origin(int(t), grid, side)[::-1]]) for t in indices]
    return colours.count(IMPORTANT_RGB), colours.count(DIVERSE_RGB)


def _role_case():
    """K = 8 of N = 16 kept, K_imp = 4; F ranks two dropped tokens first, as a reference F that differs from the
    graph's can: the reference's own top 4 hold only 2 kept tokens."""
    indices = np.array([2, 3, 5, 7, 8, 11, 13, 14])
    fused = np.linspace(0.5, 0.1, 16)  # tokens 0 and 1 first, dropped by the graph
    return indices, fused, 4


def test_the_heatmap_shows_k_imp_important_and_k_minus_k_imp_diverse_however_the_reference_ranks():
    indices, fused, k_imp = _role_case()
    assert np.isin(np.argsort(-fused, kind="stable")[:k_imp], indices).sum() == 2  # a recomputation would say 2 / 6
    assert _rendered_roles(indices, fused, k_imp) == (k_imp, len(indices) - k_imp)


def test_the_heatmap_role_check_catches_roles_recomputed_from_the_reference(monkeypatch):
    """The planted old rule (kept tokens in the reference's own top K_imp) fails the count above."""
    from flashvlm_export.runtime import heatmap

    def recomputed(indices, fused, k_imp):
        top = np.zeros(fused.shape[0], dtype=bool)
        top[np.argsort(-fused, kind="stable")[:k_imp]] = True
        kept = np.zeros(fused.shape[0], dtype=bool)
        kept[indices] = True
        return kept & top, kept & ~top

    monkeypatch.setattr(heatmap, "token_roles", recomputed)
    indices, fused, k_imp = _role_case()
    assert _rendered_roles(indices, fused, k_imp) != (k_imp, len(indices) - k_imp)


# ---------------------------------------------------------------- bad input: one line, exit 2


def test_missing_or_unreadable_image_is_one_line_exit_2(tiny_graphs, tmp_path, capsys):
    code, _, err = _run_cli(capsys, "--graph", tiny_graphs[64], "--image", tmp_path / "nope.jpg", "--question", QUESTION)
    assert code == 2 and "nope.jpg does not exist" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    code, _, err = _run_cli(capsys, "--graph", tiny_graphs[64], "--image", bad, "--question", QUESTION)
    assert code == 2 and "not an image Pillow can read" in err and len(err.strip().splitlines()) == 1


def test_a_huge_picture_a_folder_or_a_bad_pixel_limit_is_one_line_exit_2(tiny_graphs, tmp_path, capsys):
    """A 20000 x 20000 PNG header (tests/test_pictures.py has the decoding rules and the option raising the limit)."""
    from PIL import Image
    from test_pictures import write_png16

    huge = write_png16(tmp_path / "huge.png", np.zeros((1, 1), dtype=np.uint16), 0, size=(20000, 20000))
    run = ["run", "--graph", str(tiny_graphs[64]), "--question", QUESTION, "--image"]
    limit = f"limit of {Image.MAX_IMAGE_PIXELS:,}"  # Pillow's own, the default
    expect_one_line(capsys, [*run, str(huge)], "20000x20000 = 400,000,000 pixels", limit, "--max-image-pixels 400000000")
    expect_one_line(capsys, [*run, str(tmp_path)], f"--image {tmp_path} is a folder, not a regular file", "pass a picture file")
    expect_one_line(capsys, [*run, str(huge), "--max-image-pixels", "0"], "--max-image-pixels 0 is not a pixel count")


def test_a_question_holding_an_image_token_is_one_line_exit_2(tiny_graphs, demo_image, capsys):
    code, _, err = _run_cli(capsys, "--graph", tiny_graphs[64], "--image", demo_image, "--question", "<image> what is it?")
    assert code == 2 and "remove '<image>' from --question" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--random-weights", "--seed", "1"], "random weights seed 0, not --seed 1"),
        (["--model-path", "/nonexistent/ckpt"], "random weights (seed 0), not --model-path"),
        (["--seed", "3"], "--seed 3 applies to --random-weights only"),
    ],
)
def test_weights_other_than_the_graphs_are_a_one_line_error(tiny_graphs, demo_image, capsys, flags, expected):
    code, _, err = _run_cli(capsys, "--graph", tiny_graphs[64], "--image", demo_image, "--question", QUESTION, *flags)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags, named",
    [([], "--answer with the random weights {graph} records (seed 0)"), (["--random-weights"], "--answer with --random-weights")],
)
def test_a_refused_random_weight_answer_names_what_the_user_passed_or_the_graph_records(
    tmp_path, demo_image, capsys, flags, named
):
    """A full-size graph's metadata only (the refusal comes before any inference): no flag means the graph's record."""
    import onnx

    request = ExportRequest(spec=LLAVA15, budget=128, t_max=LLAVA15.t_max, batch=1, config=SelectorConfig(), selector_only=False)
    model = onnx.helper.make_model(onnx.helper.make_graph([], "metadata_only", [], []))
    onnx.helper.set_model_props(model, request.metadata("random:0"))
    graph = tmp_path / "llava15_b128.onnx"
    onnx.save(model, str(graph))
    code, _, err = _run_cli(capsys, "--graph", graph, "--image", demo_image, "--question", QUESTION, "--answer", *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert named.format(graph=graph) in err
    if not flags:
        assert "--random-weights" not in err


def test_weights_metadata_parses_random_seeds_and_paths_and_refuses_other_weights():
    from flashvlm_export.models.weights import WeightsSource, recorded_weights, weights_for_graph

    assert recorded_weights("random:7", "g") == WeightsSource(seed=7)
    assert recorded_weights("/ckpt/llava", "g") == WeightsSource(path="/ckpt/llava")
    with pytest.raises(UsageError, match="records no weights"):
        recorded_weights(None, "g")
    with pytest.raises(UsageError, match="not random_weights=True"):
        weights_for_graph("/ckpt/llava", True, None, None, "g.onnx")
    with pytest.raises(UsageError, match="not seed=3"):
        weights_for_graph("random:7", True, 3, None, "g.onnx")
    assert weights_for_graph("random:7", True, None, None, "g.onnx") == WeightsSource(seed=7)


def test_existing_heatmap_is_not_overwritten_without_force(tiny_graphs, demo_image, tmp_path, capsys):
    target = tmp_path / "h.png"
    target.write_bytes(b"mine")
    code, _, err = _run_cli(
        capsys, "--graph", tiny_graphs[64], "--image", demo_image, "--question", QUESTION, "--heatmap", target
    )
    assert code == 2 and "--force" in err and target.read_bytes() == b"mine"


def test_engine_without_tensorrt_is_one_line_error(tiny_graphs, demo_image, tmp_path, capsys):
    """Only our loading path: a plan file with a sidecar, where TensorRT is absent. It proves nothing about TensorRT."""
    pytest.importorskip("PIL")
    try:
        import tensorrt  # noqa: F401

        pytest.skip(unavailable_here("TensorRT is installed here; this test covers its absence"))
    except ImportError:
        pass
    import json

    from flashvlm_export.export.metadata import graph_metadata
    from flashvlm_export.trt.runner import SIDECAR_KEYS

    plan = tmp_path / "tiny.plan"
    plan.write_bytes(b"\0")
    record = {key: "stand-in" for key in SIDECAR_KEYS}  # a complete record: TensorRT's absence is the first failure
    record["onnx_metadata"] = graph_metadata(tiny_graphs[64])
    plan.with_suffix(".json").write_text(json.dumps(record))
    code, _, err = _run_cli(capsys, "--engine", plan, "--image", demo_image, "--question", QUESTION)
    assert code == 2 and "TensorRT" in err and len(err.strip().splitlines()) == 1


def test_stand_in_tokenizer_fits_the_tiny_vocabulary_with_one_image_token():
    from flashvlm_export.models.prompt import prompt_token_ids
    from flashvlm_export.runtime.tokenizer import BOS, stand_in_tokenizer

    tokenizer = stand_in_tokenizer(TINY)
    ids = prompt_token_ids(tokenizer, "What is on the table? é", TINY)
    assert ids[0] == BOS and ids.count(TINY.image_token_index) == 1
    assert max(ids) < TINY.text["vocab_size"]
    assert tokenizer.decode(ids, skip_special_tokens=True).endswith("What is on the table? é ASSISTANT:")
    assert len(ids) - 1 <= TINY.t_max


# ---------------------------------------------------------------- a checkpoint directory, as --model-path reads it


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A llava-hf-style directory written by transformers: config, safetensors, tokenizer, preprocessor config."""
    from transformers import LlavaForConditionalGeneration

    from flashvlm_export.models.llava import full_config
    from flashvlm_export.runtime.image import image_processor
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    folder = tmp_path_factory.mktemp("ckpt") / "llava-tiny"
    torch.manual_seed(5)
    LlavaForConditionalGeneration(full_config(TINY)).save_pretrained(folder)
    stand_in_tokenizer(TINY).save_pretrained(folder)
    processor, _ = image_processor(TINY, None)
    processor.image_mean = [0.5, 0.5, 0.5]  # not CLIP's: proves the directory's config is the one used
    processor.save_pretrained(folder)
    return folder


def test_run_with_a_checkpoint_uses_its_processor_tokenizer_and_llm(tiny_checkpoint, demo_image, tmp_path):
    from flashvlm_export.models.llava import load_parts
    from flashvlm_export.runtime import run
    from flashvlm_export.runtime.image import prepare_image

    parts = load_parts(TINY, str(tiny_checkpoint))
    request = ExportRequest(spec=TINY, budget=576, t_max=TINY.t_max, batch=1, config=SelectorConfig(), selector_only=False)
    graph = export_graph(request, tmp_path / "ckpt_b576.onnx", parts, str(tiny_checkpoint))

    prepared = prepare_image(demo_image, TINY, tiny_checkpoint)
    assert "preprocessor_config.json" in prepared.processor
    assert not torch.allclose(prepared.pixel_values, prepare_image(demo_image, TINY).pixel_values)

    lines = []
    result = run(str(graph), str(demo_image), QUESTION, compare_full=True, max_new_tokens=3, log=lines.append)
    assert any(str(tiny_checkpoint) in line for line in lines) and not any("noise" in line for line in lines)
    # K = N: the spliced prompt has LLaVA's own length (its logits are checked in the hand-off test)
    pruned, full = result.answers["pruned"], result.answers["full"]
    assert (pruned.prompt_tokens, pruned.kv_bytes) == (full.prompt_tokens, full.kv_bytes)

    with pytest.raises(UsageError, match="not model_path="):
        run(str(graph), str(demo_image), QUESTION, model_path=str(tmp_path), log=lines.append)
    with pytest.raises(UsageError, match="not random_weights=True"):
        run(str(graph), str(demo_image), QUESTION, random_weights=True, log=lines.append)


def test_checkpoint_layouts_of_the_hub_and_of_transformers_5_load_the_same_weights(tiny_checkpoint, tmp_path):
    """llava-hf's hub keys (vision_tower.vision_model.*) and save_pretrained's in transformers 5 (vision_tower.*)."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import LlavaForConditionalGeneration

    from flashvlm_export.models.llava import load_parts

    hub = tmp_path / "hub"
    shutil.copytree(tiny_checkpoint, hub)
    weights = load_file(hub / "model.safetensors")
    renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in weights.items()}
    assert any(k.startswith("vision_tower.vision_model.") for k in renamed)
    save_file(renamed, hub / "model.safetensors", metadata={"format": "pt"})
    saved, from_hub = load_parts(TINY, str(tiny_checkpoint), True), load_parts(TINY, str(hub), True)
    llm = LlavaForConditionalGeneration.from_pretrained(hub, local_files_only=True)
    for name, value in saved.vision_tower.state_dict().items():
        assert torch.equal(value, from_hub.vision_tower.state_dict()[name]), name
        assert torch.equal(value, llm.model.vision_tower.state_dict()[name]), name
    assert torch.equal(saved.embed_tokens.weight, llm.get_input_embeddings().weight)


def test_the_llm_parameter_count_of_a_checkpoint_is_read_from_its_safetensors_headers(tiny_checkpoint):
    """The count the memory check uses: headers only, equal to the loaded model's own count (and to the meta build's)."""
    from transformers import LlavaForConditionalGeneration

    from flashvlm_export.runtime.answer import llm_parameters

    loaded = sum(p.numel() for p in LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).parameters())
    assert llm_parameters(TINY, str(tiny_checkpoint)) == loaded == llm_parameters(TINY, None)


# ---------------------------------------------------------------- no library warnings on the answer path


@pytest.mark.filterwarnings("error")
def test_the_answer_path_emits_no_warning_or_deprecation_from_transformers(tiny_graphs, demo_image):
    """pyproject's filterwarnings hides DeprecationWarning/FutureWarning in tests; this test turns every warning into an
    error, and catches transformers' own logger (its `past_key_values` notice is a log record, printed once per process)."""
    import logging

    from transformers.utils import logging as hf_logging

    from flashvlm_export.runtime import run

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    hf_logging.warning_once.cache_clear()  # a notice already given in this process would otherwise stay silent
    try:
        result = run(str(tiny_graphs[64]), str(demo_image), QUESTION, random_weights=True, compare_full=True,
                     max_new_tokens=3, log=lambda _: None)  # fmt: skip
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert set(result.answers) == {"pruned", "full"}


# ---------------------------------------------------------------- the LLM's dtype and the memory check


def test_the_llm_loads_in_the_dtype_asked_for_bf16_halves_the_kv_cache(tiny_graphs, demo_image):
    from flashvlm_export.runtime import run

    lines = {"fp32": [], "bf16": []}
    results = {
        name: run(
            str(tiny_graphs[64]),
            str(demo_image),
            QUESTION,
            random_weights=True,
            answer=True,
            max_new_tokens=2,
            llm_dtype=name,
            log=lines[name].append,
        )  # fmt: skip
        for name in lines
    }
    assert any("LLM ready on cpu, bf16" in line for line in lines["bf16"])
    assert any("LLM ready on cpu, fp32" in line for line in lines["fp32"])  # auto on the CPU is fp32; asked for here
    fp32, bf16 = results["fp32"].answers["pruned"], results["bf16"].answers["pruned"]
    assert bf16.prompt_tokens == fp32.prompt_tokens and 2 * bf16.kv_bytes == fp32.kv_bytes  # exact: element sizes 2 and 4


def test_auto_llm_dtype_is_fp32_on_the_cpu_and_half_precision_on_cuda(monkeypatch):
    from flashvlm_export.runtime.answer import llm_dtype

    assert llm_dtype("auto", torch.device("cpu")) == torch.float32
    assert llm_dtype("fp16", torch.device("cpu")) == torch.float16
    for bf16, expected in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert llm_dtype("auto", torch.device("cuda")) == expected


def test_a_bad_llm_dtype_is_refused_naming_it_even_without_answer(tiny_graphs, demo_image):
    from flashvlm_export.runtime import run

    with pytest.raises(UsageError, match=r"llm_dtype='int8' is not an LLM dtype; choose one of auto, fp32, fp16, bf16"):
        run(str(tiny_graphs[64]), str(demo_image), QUESTION, random_weights=True, llm_dtype="int8", log=lambda _: None)


def test_an_llm_that_cannot_fit_is_refused_in_one_line_before_anything_is_loaded(tiny_graphs, demo_image, monkeypatch):
    from flashvlm_export.runtime import answer, api, run

    def loaded(*args, **kwargs):
        raise AssertionError("loaded before the memory check")

    monkeypatch.setattr(api, "load_parts", loaded)
    monkeypatch.setattr(answer, "build_llm", loaded)
    monkeypatch.setattr(answer, "available_memory", lambda device: 512 * 1024**2)  # 0.5 GB: below the 1 GiB margin alone
    with pytest.raises(UsageError) as caught:
        run(str(tiny_graphs[64]), str(demo_image), QUESTION, random_weights=True, answer=True, log=lambda _: None)
    message = str(caught.value)
    assert "needs about 1.0 GB in fp32 on cpu but 0.5 GB is available" in message and "llm_dtype='bf16'" in message
    assert "\n" not in message
    # enough memory: the same run gets past the check, to the first load
    monkeypatch.setattr(answer, "available_memory", lambda device: 64 * 1024**3)
    with pytest.raises(AssertionError, match="loaded before"):
        run(str(tiny_graphs[64]), str(demo_image), QUESTION, random_weights=True, answer=True, log=lambda _: None)


def test_a_7b_llm_is_checked_on_the_host_and_on_the_gpu(monkeypatch):
    """llava15's 7.06B parameters: fp32 needs ~30 GB, bf16 ~15.5 GB (weights + 10% + 1 GiB); a checkpoint is read on the host, then moved."""
    from flashvlm_export.runtime import answer

    params = answer.llm_parameters(LLAVA15, None)
    assert 7.0e9 < params < 7.1e9
    free = {"cpu": 64 * 1024**3, "cuda": 12 * 1024**3}
    monkeypatch.setattr(answer, "available_memory", lambda device: free[device.type])
    answer.check_llm_fits(params, torch.float32, torch.device("cpu"), random_weights=False)  # 29.9 GB <= 64 GB
    with pytest.raises(
        UsageError, match=r"needs about 15\.5 GB in bf16 on cuda but 12\.0 GB is available; free GPU memory or use a larger GPU$"
    ):
        answer.check_llm_fits(params, torch.bfloat16, torch.device("cuda"), random_weights=False)
    free["cpu"] = 8 * 1024**3
    with pytest.raises(
        UsageError,
        match=r"needs about 29\.9 GB in fp32 on cpu but 8\.0 GB is available; pass llm_dtype='bf16' or llm_dtype='fp16' ",
    ):
        answer.check_llm_fits(params, torch.float32, torch.device("cpu"), random_weights=False)


# ---------------------------------------------------------------- errors name what the caller wrote


def test_python_api_errors_name_keyword_arguments_and_the_cli_names_flags(tiny_graphs, demo_image, tmp_path, capsys):
    from flashvlm_export.errors import arg, cli_spelling, switch
    from flashvlm_export.runtime import run

    target = tmp_path / "kept.png"
    target.write_bytes(b"mine")
    with pytest.raises(UsageError) as caught:
        run(str(tiny_graphs[64]), str(demo_image), QUESTION, random_weights=True, heatmap=str(target), log=lambda _: None)
    assert str(caught.value) == f"{target} already exists; pass force=True to overwrite it, or choose another heatmap="
    code, _, err = _run_cli(
        capsys, "--graph", tiny_graphs[64], "--random-weights", "--image", demo_image, "--question", QUESTION, "--heatmap", target
    )
    assert code == 2 and f"{target} already exists; pass --force to overwrite it, or choose another --heatmap" in err
    # main() spelled flags only while it ran: the Python API speaks Python again
    with pytest.raises(UsageError, match=r"^max_new_tokens=0 must be >= 1$"):
        run(str(tiny_graphs[64]), str(demo_image), QUESTION, max_new_tokens=0, log=lambda _: None)
    assert (arg("model_path", "/x"), switch("random_weights"), arg("heatmap")) == (
        "model_path='/x'",
        "random_weights=True",
        "heatmap=",
    )
    with cli_spelling():
        assert (arg("model_path", "/x"), switch("random_weights"), arg("heatmap")) == (
            "--model-path /x",
            "--random-weights",
            "--heatmap",
        )


def test_a_refused_run_writes_no_demo_picture(tmp_path, capsys):
    """--demo-image is written only after every check has passed: a bad graph leaves the user's folder as it was."""
    picture = tmp_path / "demo.png"
    code, _, err = _run_cli(capsys, "--graph", tmp_path, "--demo-image", picture, "--question", QUESTION)
    assert code == 2 and "not a regular file" in err and not picture.exists()


@pytest.mark.parametrize("images", [(), ("--image", "a.png", "--demo-image", "b.png")], ids=["neither", "both"])
def test_one_image_source_is_required(tmp_path, capsys, images):
    code, _, err = _run_cli(capsys, "--graph", tmp_path / "g.onnx", *images, "--question", QUESTION)
    assert code == 2 and "pass one of --image FILE or --demo-image FILE" in err


def test_the_python_api_names_its_keywords_for_the_image_source(tmp_path):
    from flashvlm_export.runtime import run

    with pytest.raises(UsageError, match="pass one of image='FILE' or demo_image='FILE'"):
        run(str(tmp_path / "g.onnx"), None, QUESTION)
