"""The full LLaVA-1.5 graph on the tiny model: features, round trip, metadata."""

import numpy as np
import onnx
import pytest
import torch

from flashvlm_export.export.graph_check import static_graph_problems
from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.parity.corpus import Geometry, pipeline_corpus
from flashvlm_export.parity.run import run_parity
from flashvlm_export.selector import SelectorConfig

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
def tiny_full_graph(tiny_parts, tmp_path_factory):
    request = ExportRequest(spec=TINY, budget=64, t_max=TINY.t_max, batch=2, config=SelectorConfig(), selector_only=False)
    return export_graph(
        request, tmp_path_factory.mktemp("pipeline") / "tiny_b64_bs2.onnx", tiny_parts, "random:0", exporter="torchscript"
    )


def test_full_graph_passes_layers_1_and_2_with_its_encoder_checked(tiny_full_graph, tiny_parts):
    reports = run_parity(tiny_full_graph, tiny_parts, repeats=1, log=lambda _: None)
    for report in reports:
        assert report, "\n".join(report.lines())
        assert report.decisions_checked == report.shipped_checked or report.backend == "static-torch"
        assert {"vision_features", "cls_attention", "projected_features", "gram", "fused_scores"} <= set(report.tensors)


def test_visual_embeds_are_the_projected_rows_of_the_indices(tiny_full_graph):
    from flashvlm_export.parity.backends import OnnxRuntime

    request = ExportRequest(spec=TINY, budget=64, t_max=TINY.t_max, batch=2, config=SelectorConfig(), selector_only=False)
    session = OnnxRuntime(tiny_full_graph, request.interface()).verification  # exposes P(X) beside the outputs
    names = [o.name for o in session.get_outputs()]
    for case in pipeline_corpus(Geometry(576, TINY.vision_hidden, TINY.text_hidden, TINY.t_max, 2), 336, repeats=1)[:3]:
        out = dict(zip(names, session.run(names, case.feeds), strict=True))
        # a gather copies rows: exact on every CPU
        rows = np.take_along_axis(out["projected_features"], out["indices"][..., None], axis=1)
        assert np.array_equal(out["visual_embeds"], rows)


def test_full_graph_is_static_with_declared_shapes(tiny_full_graph):
    model = onnx.load(str(tiny_full_graph))
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
