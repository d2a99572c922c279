"""A split of several shapes on Triton (issue 33, item 3): the entry model routes each request to the chain of the shape
its pixel_values have, and refuses another shape in one line.

Exact equality against the in-process chain (runtime/chain.py) of that shape's manifest: the repository's models are
the split's own graph files (sha256-checked copies), run by the same onnxruntime on the same CPU with the same inputs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_aspects import split  # noqa: F401 (the shared split of five shapes)
from test_triton import TIMEOUT_S, StandInTensor, stand_in_bls_entry

from flashvlm_export.cli import main
from flashvlm_export.errors import UsageError
from flashvlm_export.export.interface import INDICES, PIXEL_VALUES, TEXT_EMBEDS, TEXT_MASK, VISUAL_EMBEDS
from flashvlm_export.models.registry import get_spec
from flashvlm_export.runtime.chain import SplitChain
from flashvlm_export.serve.handler import handler_for
from flashvlm_export.serve.server import TritonServer, find_tritonserver, import_tritonclient

QWEN = get_spec("qwen2.5-vl-tiny")
K = 32


def inputs(height: int, width: int, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        PIXEL_VALUES: rng.standard_normal((1, 3, height, width)).astype(np.float32),
        TEXT_EMBEDS: rng.standard_normal((1, QWEN.t_max, QWEN.text_hidden)).astype(np.float32),
        TEXT_MASK: np.arange(QWEN.t_max)[None] < 19,
    }


def chain_of(split, key: str, feeds):  # noqa: F811
    return SplitChain(split / f"manifest_{key}.json").infer(feeds, K)


def test_cpu_repository_routes_each_request_by_its_pixels_shape(split, tmp_path):  # noqa: F811
    repo = tmp_path / "repo"
    assert main(["triton", "--manifest", str(split), "--out", str(repo)]) == 0
    config = (repo / "flashvlm" / "config.pbtxt").read_text()
    assert re.search(r'name: "pixel_values"\s+data_type: TYPE_FP32\s+dims: \[ 3, -1, -1 \]', config), config
    handler = handler_for(repo / "flashvlm" / "1" / "split" / "manifest.json")  # the copy, checked as it is served
    for key, (height, width) in [("336x588", (336, 588)), ("448", (448, 448))]:
        feeds = inputs(height, width)
        got, want = handler.infer(feeds, np.array([[K]])), chain_of(split, key, feeds)
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    with pytest.raises(UsageError, match=r"3x300x300 is none of this repository's shapes") as info:
        handler.infer(inputs(300, 300), np.array([[K]]))
    assert "\n" not in str(info.value)


def test_onnx_flavour_bls_entry_routes_by_shape_on_stand_in_triton(split, tmp_path, monkeypatch):  # noqa: F811
    """model_bls.py as copied into the repository, against test_triton's stand-in pb_utils (its BLS calls run the
    repository's sub-models in onnxruntime). What it does not prove: that Triton's Python backend behaves like it."""
    repo = tmp_path / "repo"
    assert main(["triton", "--manifest", str(split), "--out", str(repo), "--flavour", "onnx"]) == 0
    calls = []
    model = stand_in_bls_entry(repo, calls, monkeypatch)
    feeds = inputs(364, 504)
    request = {name: StandInTensor(name, value) for name, value in {**feeds, "budget": np.array([[K]])}.items()}
    wrong = {**request, PIXEL_VALUES: StandInTensor(PIXEL_VALUES, inputs(504, 504)[PIXEL_VALUES])}
    good, refused = model.execute([request, wrong])
    assert not good.has_error(), good.error().message()
    assert [c[0] for c in calls] == ["flashvlm_364x504_encoder", f"flashvlm_364x504_selector_b{K}"]
    got = {t.name(): t.array for t in good.output_tensors}
    want = chain_of(split, "364x504", feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert refused.has_error() and "3x504x504 is none of this repository's shapes" in refused.error().message()


def test_live_server_routes_two_shapes_to_their_chains(split, tmp_path):  # noqa: F811
    binary, why = find_tritonserver()
    why = why if binary is None else import_tritonclient()
    if binary is None or why:
        pytest.skip(f"live Triton test: {why}")
    import tritonclient.http as http

    assert main(["triton", "--manifest", str(split), "--out", str(tmp_path / "repo")]) == 0
    types = {np.dtype(np.float32): "FP32", np.dtype(bool): "BOOL", np.dtype(np.int64): "INT64"}
    with TritonServer(binary, tmp_path / "repo", tmp_path / "server.log") as live:
        client = http.InferenceServerClient(live.http_url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
        for key, (height, width) in [("588x336", (588, 336)), ("364x504", (364, 504))]:
            feeds = inputs(height, width)
            tensors = []
            for name, array in {**feeds, "budget": np.array([[K]], dtype=np.int64)}.items():
                tensor = http.InferInput(name, list(array.shape), types[array.dtype])
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            answer = client.infer("flashvlm", tensors)
            want = chain_of(split, key, feeds)
            for name in (INDICES, VISUAL_EMBEDS, "positions"):
                np.testing.assert_array_equal(answer.as_numpy(name), want[name])
        client.close()
