"""LLaVA-NeXT (issue 22): the base image and a grid of crops through one encoder, the selector per crop at K / crops,
parity crop by crop, and the hand-off of the kept rows to transformers' LlavaNextForConditionalGeneration.

Everything on llava-next-tiny (random weights, 2x2 grid: 5 crops x 576 = N = 2880). The graphs are exported with
dynamo (CLIP's embeddings do not export with TorchScript) and run in ONNX Runtime: what a runtime receives. Logits are compared within
TOL for the reason tests/test_qwen_handoff.py gives (ONNX Runtime's encoder against transformers' tower, ~1e-6); so are
the rows of the K < N layout, against transformers' own projected crop features laid out independently (_gathered).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.models.registry import get_spec

from conftest import expect_one_line, openvino_parity_passes

NEXT = get_spec("llava-next-tiny")
K = 160  # 5 crops x 32
N = NEXT.n_tokens  # 2880
QUESTION = "What is on the table?"
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def next_parts():
    from flashvlm_export.models.llava_next import random_parts

    return random_parts(NEXT, 0, with_embeddings=True)


def _request(k: int, selector_only: bool = False) -> ExportRequest:
    return ExportRequest(
        spec=NEXT, budget=k, t_max=NEXT.t_max, batch=1, config=NEXT.selector_config(), selector_only=selector_only
    )


@pytest.fixture(scope="module")
def next_graphs(tmp_path_factory, next_parts):
    folder = tmp_path_factory.mktemp("next_graphs")
    return {
        k: export_graph(_request(k), folder / f"llava-next-tiny_b{k}.onnx", next_parts, "random:0", exporter="torchscript")
        for k in (K, N)
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from flashvlm_export.runtime.image import demo_picture

    folder = tmp_path_factory.mktemp("next_photos")
    demo_picture(500).resize((500, 500)).save(folder / "square.png")
    demo_picture(448).save(folder / "wide.png")  # 448 x 336: the 2x2 grid pads it, unpadding cuts rows
    return {"square": folder / "square.png", "wide": folder / "wide.png"}


def _handoff(parts, graphs, photo):
    from flashvlm_export.models.prompt import prompt_token_ids, text_inputs
    from flashvlm_export.runtime.answer import build_llm
    from flashvlm_export.runtime.image import prepare_image
    from flashvlm_export.runtime.session import OrtGraph, select
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    llm = build_llm(NEXT, parts, None, 0, torch.device("cpu"))
    llm.config.image_grid_pinpoints = [[672, 672]]  # the graph's grid: transformers packs what the processor made
    tokenizer = stand_in_tokenizer(NEXT)
    prepared = prepare_image(photo, NEXT)
    ids = prompt_token_ids(tokenizer, QUESTION, NEXT)
    text, mask = text_inputs(parts.embed_tokens, ids, NEXT.t_max, NEXT.image_token_index)
    selections = {k: select(OrtGraph(path), prepared.pixel_values, text, mask, batch=1) for k, path in graphs.items()}
    return SimpleNamespace(llm=llm, ids=ids, prepared=prepared, selections=selections)


@pytest.fixture(scope="module", params=["square", "wide"])
def handoff(request, next_parts, next_graphs, photos):
    return _handoff(next_parts, next_graphs, photos[request.param])


def _theirs(h):
    """transformers' own forward: input_ids with the image token repeated as its processor does, pixel_values, image_sizes."""
    from flashvlm_export.runtime.answer import expand_image_token

    sizes = torch.tensor([h.prepared.image_hw])
    with torch.no_grad():
        packed = torch.cat(h.llm.model.get_image_features(h.prepared.pixel_values, sizes).pooler_output)
        expanded = torch.tensor([expand_image_token(h.ids, NEXT.image_token_index, len(packed))])
        logits = h.llm(input_ids=expanded, pixel_values=h.prepared.pixel_values, image_sizes=sizes).logits
    return packed, logits


def _ours(h, rows):
    from flashvlm_export.runtime.answer import llm_input

    inputs = llm_input(h.llm.get_input_embeddings(), h.ids, NEXT, rows)
    with torch.no_grad():
        return h.llm(inputs_embeds=inputs.inputs_embeds).logits


def _rows(h, selection, embeds=None):
    from flashvlm_export.models.anyres import llm_rows

    embeds = selection.visual_embeds if embeds is None else embeds
    return llm_rows(embeds, selection.indices, h.llm.model.image_newline, NEXT, h.prepared.image_hw)


def _own_projected(h) -> torch.Tensor:
    """(N, D): transformers' own projected features of every crop token, in the graph's token order (crop c, token t
    at c * crop_tokens + t), taken from its get_image_features where they enter pack_image_features."""
    model = h.llm.model
    seen = []

    def recording(image_features, *args, **kwargs):
        seen.append(image_features)
        return type(model).pack_image_features(model, image_features, *args, **kwargs)

    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "pack_image_features", recording)
        model.get_image_features(h.prepared.pixel_values, torch.tensor([h.prepared.image_hw]))
    ((crops,),) = seen  # one image: (crops, crop_tokens, D)
    assert crops.shape == (NEXT.crops, NEXT.crop_tokens, NEXT.text_hidden)
    return crops.reshape(N, NEXT.text_hidden)


def _gathered(h, indices, projected):
    """An independent construction of the K < N rows: transformers' own pack_image_features run on the token indices
    (a one-wide "feature" per token, the newline -1), the pruned tokens taken out, and the newline of a grid row
    that kept nothing with them."""
    crops = torch.arange(N, dtype=torch.float32).reshape(NEXT.crops, NEXT.crop_tokens, 1)
    sizes = torch.tensor([h.prepared.image_hw])
    with torch.no_grad():
        (order,), _ = h.llm.model.pack_image_features([crops], sizes, "default", image_newline=torch.tensor([-1.0]))
    order = order[:, 0].long().tolist()
    kept = set(int(i) for i in indices)
    rows, run = [], []
    for token in order:
        if token == -1:
            if run:
                rows += run + ["newline"]
            run = []
        elif token in kept:
            (rows if len(rows) < sum(1 for t in kept if t < NEXT.crop_tokens) else run).append(token)
    newline = h.llm.model.image_newline
    return torch.stack([newline if r == "newline" else projected[r] for r in rows])


# ---------------------------------------------------------------- the shape of the model


def test_grid_2x2_is_the_base_image_and_four_crops_of_576_tokens():
    assert (NEXT.crops, NEXT.crop_tokens, N) == (5, 576, 2880)
    wide = NEXT.at_grid("1x2")
    assert (wide.crops, wide.n_tokens, wide.label) == (3, 1728, "llava-next-tiny-1x2")
    assert (_request(640).schedule.n_tokens, _request(640).schedule.budget) == (576, 128)


def test_a_budget_not_divisible_by_the_crops_is_one_line_exit_2(capsys):
    expect_one_line(
        capsys, ["--model", "llava-next-tiny", "--budget", "642", "--random-weights"], "--budget 642", "5 crops", "640 or 645"
    )


def test_a_grid_the_checkpoint_does_not_list_is_one_line_exit_2(capsys):
    expect_one_line(
        capsys, ["--model", "llava-next-tiny", "--grid", "3x3", "--random-weights"], "--grid 3x3", "1x2, 2x1, 2x2, 3x1, 1x3"
    )
    expect_one_line(capsys, ["--model", "llava15-tiny", "--grid", "2x2", "--random-weights"], "--grid 2x2", "no grid")


def test_the_photo_is_prepared_by_transformers_processor_for_the_graphs_grid(photos):
    from PIL import Image
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from flashvlm_export.runtime.image import prepare_image

    for name, path in photos.items():
        prepared = prepare_image(path, NEXT)
        processor = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        with Image.open(path) as image:
            theirs = processor(images=image.convert("RGB"), return_tensors="pt")  # every pinpoint: it picks its own
        assert prepared.pixel_values.shape == (1, 5, 3, 336, 336)
        if name == "square":  # the processor picks 2x2 itself
            assert torch.equal(prepared.pixel_values, theirs["pixel_values"]) and not prepared.note
        else:  # it would pick 1x2; the graph takes 2x2, and run says so
            assert theirs["pixel_values"].shape[1] == 3 and "1x2" in prepared.note and "576 of its 2304" in prepared.note


# ---------------------------------------------------------------- the hand-off proof


def test_keep_all_layout_gives_transformers_own_llava_next_logits(handoff):
    """K = N: the graph's visual_embeds laid out by models/anyres.py (base, unpadded grid, image_newline rows) give
    LlavaNextForConditionalGeneration's logits on input_ids, pixel_values and image_sizes."""
    selection = handoff.selections[N]
    assert selection.indices.tolist() == list(range(N))
    packed, theirs = _theirs(handoff)
    rows = _rows(handoff, selection)
    assert rows.shape == packed.shape
    torch.testing.assert_close(rows, packed, **TOL)
    ours = _ours(handoff, rows)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, **TOL)


def test_pruned_layout_equals_transformers_own_features_gathered_and_their_logits(handoff):
    """K < N: our rows (the graph's visual_embeds laid out by models/anyres.py) equal transformers' own projected crop
    features at the kept tokens, laid out by its own pack_image_features (_gathered); the logits on our input equal
    the LLM's on that one. Within TOL: ONNX Runtime's encoder against transformers' tower."""
    selection = handoff.selections[K]
    assert len(selection.indices) == K
    per_crop = np.bincount(selection.indices // NEXT.crop_tokens, minlength=NEXT.crops)
    assert per_crop.tolist() == [K // NEXT.crops] * NEXT.crops
    rows = _rows(handoff, selection)
    want = _gathered(handoff, selection.indices, _own_projected(handoff))
    assert rows.shape == want.shape
    torch.testing.assert_close(rows, want, **TOL)
    with torch.no_grad():
        from flashvlm_export.runtime.answer import splice

        theirs = handoff.llm(
            inputs_embeds=splice(handoff.llm.get_input_embeddings(), handoff.ids, NEXT.image_token_index, want)
        ).logits
    torch.testing.assert_close(_ours(handoff, rows), theirs, **TOL)


def _wrong_rows(selection, fault):
    """The graph's visual_embeds with a planted fault: two crops' rows swapped, or a row the next kept token's."""
    k = K // NEXT.crops
    rows = selection.visual_embeds.clone()
    if fault == "crops swapped":
        rows[k : 2 * k], rows[2 * k : 3 * k] = selection.visual_embeds[2 * k : 3 * k], selection.visual_embeds[k : 2 * k]
    else:  # "row off by one": kept row j carries kept row j + 1's embedding, in a grid crop
        j = 2 * k + k // 2
        rows[j] = selection.visual_embeds[j + 1]
    return rows


@pytest.mark.parametrize("fault", ["crops swapped", "row off by one"])
def test_a_planted_fault_in_the_pruned_rows_fails_against_transformers_own_features(handoff, fault):
    selection = handoff.selections[K]
    want = _gathered(handoff, selection.indices, _own_projected(handoff))
    assert torch.allclose(_rows(handoff, selection), want, **TOL)  # the check passes the honest rows
    assert not torch.allclose(_rows(handoff, selection, _wrong_rows(selection, fault)), want, **TOL)
    assert not torch.allclose(
        _ours(handoff, _rows(handoff, selection, _wrong_rows(selection, fault))), _ours(handoff, want), **TOL
    )


# ---------------------------------------------------------------- parity crop by crop, and its planted faults


class _Planted:
    """The static torch pipeline with a fault planted in its input or its outputs."""

    def __init__(self, module, interface, fault):
        from flashvlm_export.parity.backends import TorchModule

        self.inner = TorchModule(module, interface)
        self.fault = fault
        self.name = f"planted {fault}"

    def infer(self, feeds):
        from flashvlm_export.export.interface import INDICES, PIXEL_VALUES, PROJECTED_FEATURES, VISUAL_EMBEDS

        if self.fault == "crops swapped":  # the encoder sees crops 1 and 2 in each other's place
            pixels = feeds[PIXEL_VALUES].copy()
            pixels[:, [1, 2]] = pixels[:, [2, 1]]
            return self.inner.infer({**feeds, PIXEL_VALUES: pixels})
        out = self.inner.infer(feeds)
        if self.fault == "budget off by one":  # crop 0 keeps one token more, crop 1 one fewer
            k, n = K // NEXT.crops, NEXT.crop_tokens
            for b, row in enumerate(out[INDICES]):
                extra = min(set(range(n)) - set(row[:k].tolist()))
                fixed = np.sort(np.concatenate([row[:k], [extra], row[k + 1 :]]))
                out[INDICES][b] = fixed
                out[VISUAL_EMBEDS][b] = out[PROJECTED_FEATURES][b][fixed]
        return out


def _crop(line: str) -> str:
    """'scene#0 image 0 crop 2: ...' -> 'scene#0 image 0 crop 2' (the photo and crop a parity line names)."""
    return line.split(":")[0]


@pytest.mark.parametrize("fault", [None, "crops swapped", "budget off by one"])
def test_parity_checks_each_crop_and_names_the_crop_and_reason_of_a_planted_fault(next_parts, fault):
    """Honest: every crop replayed. Crops swapped: layer 1 holds (the graph is consistent with its own X, a, P(X)),
    layer 2 fails on the encoder's outputs at crops 1 and 2 of each photo and nowhere else. Budget off by one: layer 1
    fails at crop 0 (its own F and G decide other indices) and crop 1 (a token of crop 0 in its slots), layer 2 holds."""
    from flashvlm_export.export.interface import CLS_ATTENTION, PIXEL_VALUES, PROJECTED_FEATURES, VISION_FEATURES
    from flashvlm_export.parity.corpus import pipeline_corpus
    from flashvlm_export.parity.run import geometry_of, reference_backends, run_backends

    request = _request(K)
    reference, static = reference_backends(request, next_parts)
    backend = static if fault is None else _Planted(static.module, static.interface, fault)
    cases = pipeline_corpus(geometry_of(request), NEXT.image_size, seed=0, repeats=1, grid=NEXT.grid)[:2]
    (report,) = run_backends(request, reference, [backend], cases, 0, None)
    assert len(report.overlaps) == len(cases) * NEXT.crops  # every crop an image of its own
    photos = [f"{case.name} image {b}" for case in cases for b in range(len(case.feeds[PIXEL_VALUES]))]
    if fault is None:
        assert report and report.decisions_checked == len(cases) * NEXT.crops
        return
    failed_tensors = {t.name: sorted(t.over) for t in report.tensors.values() if not t.passed}
    if fault == "crops swapped":  # X, a, P(X) of crops 1 and 2 are each other's
        assert report.decisions_passed, report.decision_failures
        swapped = sorted(f"{photo} crop {c}" for photo in photos for c in (1, 2))
        assert failed_tensors == {name: swapped for name in (VISION_FEATURES, CLS_ATTENTION, PROJECTED_FEATURES)}
        assert any(f"{VISION_FEATURES}: " in line and "crop 1" in line and "crop 2" in line for line in report.lines())
    else:  # crop 0 keeps one token more, crop 1 one fewer
        assert report.arithmetic_passed and failed_tensors == {}
        reasons = {}
        for line in report.decision_failures:
            reasons.setdefault(_crop(line), []).append(line.split(": ", 1)[1])
        assert sorted(reasons) == sorted(f"{photo} crop {c}" for photo in photos for c in (0, 1)), report.decision_failures
        for photo in photos:
            assert [r.split(" (")[0] for r in reasons[f"{photo} crop 0"]] == ["its own F and G decide other indices"]
            assert any("are outside its tokens 0..575 (tokens of another crop)" in r for r in reasons[f"{photo} crop 1"])


def test_the_full_graph_passes_parity_in_onnx_runtime_and_saves_only_what_a_replay_can_judge(next_graphs, next_parts, tmp_path):
    """Passes in three layers; with a save folder it writes the report, and no Polygraphy replay records: the replay
    judges one image's decisions per record, and a photo's are per crop (records of (crops, K / crops) indices
    against the graph's (1, K) would fail an honest graph)."""
    from flashvlm_export.parity.run import run_parity

    reports = run_parity(next_graphs[K], next_parts, repeats=1, save_dir=tmp_path, log=lambda *_: None)
    assert all(reports) and {r.backend for r in reports} >= {"static-torch", "onnxruntime[CPU]"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{next_graphs[K].stem}_parity.json"]


def test_split_export_parity_and_run_through_the_cli(tmp_path, capsys):
    """One encoder graph for the crops, a selector per budget; parity of the chain; run with heatmap and both answers."""
    from flashvlm_export.cli import main
    from flashvlm_export.runtime.image import demo_picture

    quick = ["--max-rounds", "4"]  # the same graph shape with 4 pruning rounds: seconds to export
    assert main(["--model", "llava-next-tiny", "--budget", "160,80", "--random-weights", "--out-dir", str(tmp_path), *quick]) == 0
    manifest = tmp_path / "llava-next-tiny_split" / "manifest.json"
    assert (manifest.parent / "encoder.onnx").is_file()
    assert main(["parity", "--manifest", str(manifest), "--repeats", "1", "--no-save"]) == 0
    demo_picture(500).resize((500, 500)).save(tmp_path / "photo.png")
    capsys.readouterr()
    argv = ["run", "--manifest", str(manifest), "--budget", "80", "--image", str(tmp_path / "photo.png"), "--question", QUESTION]
    assert main([*argv, "--heatmap", str(tmp_path / "kept.png"), "--compare-full", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "selected 80/2880 tokens" in out and "Answer [full N=2880]" in out and (tmp_path / "kept.png").is_file()
    assert "laid out as LLaVA-NeXT's input: 2928 rows" in out  # 576 + 48 rows of 48 + newline


def test_crops_graph_passes_parity_on_openvino(capsys, next_graphs):
    """OpenVINO as a third arithmetic (issue 35): LLaVA-NeXT's base image and crops, crop by crop."""
    openvino_parity_passes(capsys, "--graph", next_graphs[K], "--random-weights")
