"""The full LLaVA-1.5 graph on the tiny model: features, round trip, metadata."""

import numpy as np
import onnx
import pytest
import torch

from flashvlm_export.export.graph_check import static_graph_problems
from flashvlm_export.export.graphs import ExportRequest
from flashvlm_export.export.onnx_export import GraphIO, export_onnx
from flashvlm_export.models.vision import FlashVLMPipeline
from flashvlm_export.parity.corpus import PIPELINE_INPUTS, Geometry, pipeline_corpus
from flashvlm_export.selector import SelectorConfig, StaticSelector

from conftest import TINY


def test_vision_features_equal_llava_hidden_states_and_cls_attention(tiny_parts):
    pixels = torch.randn(2, 3, 336, 336)
    with torch.no_grad():
        out = tiny_parts.vision_tower(pixels, output_hidden_states=True, output_attentions=True)
        x, a = tiny_parts.vision_features()(pixels)
    assert x.shape == (2, 576, TINY.vision_hidden) and a.shape == (2, 576)
    assert torch.equal(x, out.hidden_states[-2][:, 1:])
    assert torch.equal(a, out.attentions[-2][:, :, 0, 1:].mean(dim=1))


@pytest.fixture(scope="module")
def round_trip_graph(tiny_parts, tmp_path_factory):
    """The tiny full graph with X, a and P(X) exposed as extra outputs."""
    selector = StaticSelector(576, 64)
    pipeline = FlashVLMPipeline(tiny_parts.vision_features(), tiny_parts.projector, selector, features_out=True)
    request = ExportRequest(spec=TINY, budget=64, t_max=TINY.t_max, batch=2, config=SelectorConfig(), selector_only=False)
    example = request.graph_io().example_inputs
    outputs = ("indices", "visual_embeds", "vision_features", "cls_attention", "projected_features")
    path = tmp_path_factory.mktemp("pipeline") / "tiny_features.onnx"
    return export_onnx(pipeline, GraphIO(PIPELINE_INPUTS, outputs, example), path, request.metadata("random:0"))


def test_full_graph_indices_equal_reference_on_its_own_features(round_trip_graph):
    import onnxruntime as ort

    from flashvlm_export.parity.backends import SelectorReference
    from flashvlm_export.parity.compare import compare_case

    session = ort.InferenceSession(str(round_trip_graph), providers=["CPUExecutionProvider"])
    reference = SelectorReference(64, SelectorConfig())
    for case in pipeline_corpus(Geometry(576, TINY.vision_hidden, TINY.text_hidden, TINY.t_max, 2), 336, repeats=1):
        indices, visual, x, a, p = session.run(None, case.feeds)
        own = dict(
            vision_features=x, cls_attention=a, projected_features=p, **{k: case.feeds[k] for k in ("text_embeds", "text_mask")}
        )
        expected, near_ties = reference.run(own)
        results = compare_case(case.name, expected, near_ties, indices)
        assert all(r.status != "mismatch" for r in results), [r.describe() for r in results]
        if case.name.startswith("noise"):  # no near-ties in noise images: bit-for-bit the same choice
            assert np.array_equal(indices, expected), [r.describe() for r in results]
        assert np.array_equal(visual, np.take_along_axis(p, indices[..., None], axis=1)), case.name


def test_full_graph_matches_torch_model_within_near_ties(tiny_parts, tmp_path):
    from flashvlm_export.parity.run import run_parity

    request = ExportRequest(spec=TINY, budget=32, t_max=TINY.t_max, batch=1, config=SelectorConfig(), selector_only=False)
    graph = export_onnx(request.module(tiny_parts), request.graph_io(), tmp_path / "tiny.onnx", request.metadata("random:0"))
    reports = run_parity(graph, tiny_parts, repeats=1, log=lambda _: None)
    for report in reports:
        assert report, "\n".join(report.lines())
    assert reports[0].exact == reports[0].total  # static torch pipeline == reference exactly


def test_full_graph_is_static_with_declared_shapes(round_trip_graph):
    model = onnx.load(str(round_trip_graph))
    assert static_graph_problems(model) == []
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims == {"pixel_values": [2, 3, 336, 336], "text_embeds": [2, TINY.t_max, 64], "text_mask": [2, TINY.t_max]}
    assert {"LayerNormalization", "Softmax"} <= {n.op_type for n in model.graph.node}  # single-op normalisation


def test_prompt_embeddings_drop_the_image_token_and_pad_to_t_max():
    from flashvlm_export.models.prompt import text_inputs

    embed = torch.nn.Embedding(50, 8)
    ids = [1, 5, 6, 49, 7, 8]  # 49 plays the image token
    text, mask = text_inputs(embed, ids, t_max=10, image_token_index=49)
    assert text.shape == (1, 10, 8) and mask.tolist() == [[True] * 5 + [False] * 5]
    assert torch.equal(text[0, :5], embed(torch.tensor([1, 5, 6, 7, 8])).detach())
    assert torch.count_nonzero(text[0, 5:]) == 0


def test_prompt_longer_than_t_max_is_an_error_not_a_truncation():
    from flashvlm_export.errors import UsageError
    from flashvlm_export.models.prompt import text_inputs

    with pytest.raises(UsageError, match="re-export with --t-max 12"):
        text_inputs(torch.nn.Embedding(50, 8), list(range(12)), t_max=11, image_token_index=49)
