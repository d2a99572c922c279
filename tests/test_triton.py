"""Triton model repositories of a split (serve/, docs/TRITON.md): the writer's checks, and the CPU flavour on a real
tritonserver (skips, saying why, where scripts/fetch_triton.sh could not fetch the server or the client).

The tiny model's split at K = 64, 16 is exported once; the live server runs its generated CPU repository on
127.0.0.1 with free ports, bounded timeouts, and is always stopped (its process group killed). A qwen3-vl-tiny split
(K = 64, 32) checks the DeepStack tensors: the configs, the onnx flavour's BLS entry on a stand-in pb_utils, and one
live request of its CPU repository."""

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from flashvlm_export.cli import main
from flashvlm_export.errors import UsageError
from flashvlm_export.export.interface import INDICES, PIXEL_VALUES, TEXT_EMBEDS, TEXT_MASK, VISUAL_EMBEDS
from flashvlm_export.export.manifest import Manifest, read_manifest
from flashvlm_export.runtime.chain import SplitChain
from flashvlm_export.serve import repository
from flashvlm_export.serve.handler import request_budget
from flashvlm_export.serve.server import TritonServer, find_tritonserver, import_tritonclient

from conftest import copy_split, expect_one_line, list_engines

BUDGETS = (64, 16)
TIMEOUT_S = 30


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split")
    argv = ["--model", "llava15-tiny", "--budget", ",".join(map(str, BUDGETS)), "--random-weights", "--out-dir", str(out)]
    argv += ["--exporter", "torchscript"]  # several times faster at these rounds; dynamo: tests/test_exporters.py
    assert main(argv) == 0
    return out / "llava15-tiny_split" / "manifest.json"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cpu_repository_is_one_python_model_with_a_checked_copy_of_the_split(split, tmp_path):
    out = tmp_path / "repo"
    assert main(["triton", "--manifest", str(split), "--out", str(out), "--instances", "3"]) == 0
    config = (out / "flashvlm" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 1" in config and "dynamic_batching" in config
    assert "count: 3 kind: KIND_CPU" in config and 'key: "python_path"' in config
    assert 'name: "budget" data_type: TYPE_INT64 dims: [ 1 ]' in config
    assert 'name: "indices" data_type: TYPE_INT64 dims: [ -1 ]' in config
    copy = read_manifest(out / "flashvlm" / "1" / "split" / "manifest.json")  # every hash and graph checks in the copy
    assert copy.budgets == BUDGETS
    assert (out / "flashvlm" / "1" / "model.py").read_text() == (Path(repository.__file__).parent / "model_chain.py").read_text()
    assert json.loads((out / repository.RECORD).read_text())["flavour"] == "cpu"
    assert leftovers(tmp_path) == ["repo"]  # no staging folder left


def test_onnx_repository_chains_onnxruntime_models_through_a_bls_entry(split, tmp_path):
    out = tmp_path / "repo"
    assert main(["triton", "--manifest", str(split), "--out", str(out), "--flavour", "onnx"]) == 0
    models = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert models == ["flashvlm", "flashvlm_encoder", "flashvlm_selector_b16", "flashvlm_selector_b64"]
    for stem in ("encoder", "selector_b16", "selector_b64"):
        config = (out / f"flashvlm_{stem}" / "config.pbtxt").read_text()
        assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 0" in config and "KIND_GPU" in config
        assert (out / f"flashvlm_{stem}" / "1" / "model.onnx").read_bytes() == (split.parent / f"{stem}.onnx").read_bytes()
    entry = (out / "flashvlm" / "config.pbtxt").read_text()
    assert 'key: "encoder" value: { string_value: "flashvlm_encoder" }' in entry and 'backend: "python"' in entry


def test_a_manifest_that_fails_its_checks_writes_nothing(split, capsys, tmp_path):
    edited = copy_split(split, tmp_path / "a")
    graph = edited.parent / "selector_b16.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1  # same size, other bytes
    graph.write_bytes(bytes(data))
    out = tmp_path / "out"
    expect_one_line(capsys, ["triton", "--manifest", str(edited), "--out", str(out / "deeper" / "repo")], "sha256 differs")
    assert not out.exists()  # not even the folders --out would go in


def test_an_existing_out_is_refused_and_kept_with_or_without_force(split, capsys, tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    expect_one_line(capsys, ["triton", "--manifest", str(split), "--out", str(out)], "--force")
    assert leftovers(out) == ["mine.txt"]
    # --force replaces only a repository this tool wrote: the user's file is named and kept (test_force.py: the rule)
    expect_one_line(capsys, ["triton", "--manifest", str(split), "--out", str(out), "--force"], str(out / "mine.txt"))
    assert leftovers(out) == ["mine.txt"] and leftovers(tmp_path) == ["repo"]


def test_tensorrt_flavour_needs_engines_and_the_plugin_library(split, capsys, tmp_path, monkeypatch):
    out = tmp_path / "out" / "repo"
    expect_one_line(
        capsys, ["triton", "--manifest", str(split), "--out", str(out), "--flavour", "tensorrt"], "no TensorRT engines"
    )
    listed = copy_split(split, tmp_path / "e")  # engines listed and present, with honest hashes
    list_engines(listed, "engines")
    record = json.loads(listed.read_text())
    from flashvlm_export.artifacts.files import sha256_of

    for entry in [record["encoder"], *record["selectors"]]:
        plan = listed.parent / entry["engine"]["path"]
        plan.parent.mkdir(exist_ok=True)
        plan.write_bytes(b"plan " + entry["onnx"]["path"].encode())
        entry["engine"].update(sha256=sha256_of(plan), bytes=plan.stat().st_size)
    listed.write_text(json.dumps(record))
    assert main(["triton", "--manifest", str(listed), "--out", str(out), "--flavour", "tensorrt"]) == 0
    config = (out / "flashvlm_selector_b64" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and (out / "flashvlm_selector_b64" / "1" / "model.plan").is_file()
    # a --plugin split's engines: refused without the plugin library (the manifest read as one of those)
    real = repository.read_manifest
    monkeypatch.setattr(repository, "read_manifest", lambda *a, **k: Manifest(listed, {**real(*a, **k).record, "plugin": True}))
    fresh = tmp_path / "out" / "plugin"
    argv = ["triton", "--manifest", str(listed), "--out", str(fresh), "--flavour", "tensorrt"]
    expect_one_line(capsys, argv, "--plugin-lib")
    expect_one_line(capsys, ["triton", "--manifest", str(listed), "--out", str(fresh), "--flavour", "onnx"], "--plugin")
    lib = tmp_path / "libflashvlm_plugins.so"
    lib.write_bytes(b"so")
    assert main([*argv, "--plugin-lib", str(lib)]) == 0
    assert (
        f'plugins="{(fresh / repository.PLUGIN_FILE).resolve()}"' in json.loads((fresh / repository.RECORD).read_text())["serve"]
    )
    assert leftovers(tmp_path / "out") == ["plugin", "repo"]


def test_a_request_budget_is_checked_against_the_manifest(split):
    manifest = read_manifest(split)
    assert request_budget(manifest, np.array([[16]]), 1) == (16, 16)
    with pytest.raises(UsageError, match="K = 64, 16"):
        request_budget(manifest, np.array([[48]]), 1)
    with pytest.raises(UsageError, match="one budget per request"):
        request_budget(Manifest(manifest.path, {**manifest.record, "batch": 2}), np.array([[16], [64]]), 2)


# ---- the live server ----------------------------------------------------------------------------------------------


def inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros((1, 256), dtype=bool)
    mask[0, : 5 + 7 * seed] = True
    return {
        PIXEL_VALUES: rng.standard_normal((1, 3, 336, 336)).astype(np.float32),
        TEXT_EMBEDS: rng.standard_normal((1, 256, 64)).astype(np.float32),
        TEXT_MASK: mask,
    }


@pytest.fixture(scope="module")
def server(split, tmp_path_factory):
    binary, why = find_tritonserver()
    if binary is None:
        pytest.skip(f"live Triton test: {why}")
    why = import_tritonclient()
    if why:
        pytest.skip(f"live Triton test: {why}")
    folder = tmp_path_factory.mktemp("triton")
    assert main(["triton", "--manifest", str(split), "--out", str(folder / "repo")]) == 0
    live = TritonServer(binary, folder / "repo", folder / "server.log")
    try:
        yield live.start()
    finally:
        live.stop()


def infer(url: str, protocol: str, feeds: dict[str, np.ndarray], budget: int) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    client_module = http if protocol == "http" else grpc
    arrays = {**feeds, "budget": np.array([[budget]], dtype=np.int64)}
    types = {np.dtype(np.float32): "FP32", np.dtype(bool): "BOOL", np.dtype(np.int64): "INT64"}
    tensors = []
    for name, array in arrays.items():
        tensor = client_module.InferInput(name, list(array.shape), types[array.dtype])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    if protocol == "http":
        client = http.InferenceServerClient(url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
        answer = client.infer("flashvlm", tensors)
    else:
        client = grpc.InferenceServerClient(url)
        answer = client.infer("flashvlm", tensors, client_timeout=TIMEOUT_S)
    client.close()
    return {name: answer.as_numpy(name) for name in (INDICES, VISUAL_EMBEDS)}


@pytest.fixture(scope="module")
def expected(split):
    chain = SplitChain(split)
    return {(seed, k): chain.infer(inputs(seed), k) for seed in range(4) for k in BUDGETS}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_live_server_indices_equal_the_split_chain_at_each_budget(server, expected, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    for k in BUDGETS:
        got = infer(url, protocol, inputs(0), k)
        assert got[INDICES].shape == (1, k)
        np.testing.assert_array_equal(got[INDICES], expected[(0, k)][INDICES])
        np.testing.assert_array_equal(got[VISUAL_EMBEDS], expected[(0, k)][VISUAL_EMBEDS])  # same graphs, same CPU


def test_live_server_answers_16_concurrent_requests_with_mixed_budgets(server, expected):
    jobs = [(i % 4, BUDGETS[i % 2], "http" if i % 3 else "grpc") for i in range(16)]

    def one(job):
        seed, k, protocol = job
        return infer(server.http_url if protocol == "http" else server.grpc_url, protocol, inputs(seed), k)[INDICES]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, jobs, timeout=120))
    for (seed, k, _), got in zip(jobs, answers, strict=True):
        np.testing.assert_array_equal(got, expected[(seed, k)][INDICES])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_live_server_refuses_a_budget_it_lacks_with_our_one_line(server, protocol):
    from tritonclient.utils import InferenceServerException

    url = server.http_url if protocol == "http" else server.grpc_url
    with pytest.raises(InferenceServerException) as caught:
        infer(url, protocol, inputs(0), 48)
    message = caught.value.message()
    assert "budget=48 is not in" in message and "K = 64, 16" in message and "\n" not in message, message


def test_live_server_is_stopped_with_its_stubs(split, tmp_path):
    binary, why = find_tritonserver()
    if binary is None or import_tritonclient():
        pytest.skip(f"live Triton test: {why or import_tritonclient()}")
    assert main(["triton", "--manifest", str(split), "--out", str(tmp_path / "repo")]) == 0
    live = TritonServer(binary, tmp_path / "repo", tmp_path / "server.log")
    with live:
        group = live.process.pid
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)


def test_live_server_serves_a_range_split_two_images_each_its_own_budget_and_a_padded_single(tmp_path):
    """A --budget-range split at batch 2: one request of two images with budgets 8 and 50, and one request of one
    image (padded to the graphs' batch inside the model) answer exactly what the in-process chain answers."""
    binary, why = find_tritonserver()
    why = why if binary is None else import_tritonclient()
    if binary is None or why:
        pytest.skip(f"live Triton test: {why}")
    import tritonclient.http as http

    argv = [
        "--model",
        "llava15-tiny",
        "--budget-range",
        "8..64",
        "--batch",
        "2",
        "--random-weights",
        "--split",
        "--out-dir",
        str(tmp_path),
    ]
    assert main([*argv, "--exporter", "torchscript"]) == 0  # several times faster; dynamo: tests/test_exporters.py
    manifest = next(tmp_path.glob("*/manifest.json"))
    assert main(["triton", "--manifest", str(manifest), "--out", str(tmp_path / "repo")]) == 0
    pair = {name: np.concatenate([inputs(1)[name], inputs(2)[name]]) for name in inputs(1)}
    chain = SplitChain(manifest)
    want_pair = chain.infer(pair, [8, 50])[INDICES]
    want_one = chain.infer(pair, [50, 50])[INDICES][:1]  # the first image alone at 50 (its row does not depend on the other)
    types = {np.dtype(np.float32): "FP32", np.dtype(bool): "BOOL", np.dtype(np.int64): "INT64"}
    with TritonServer(binary, tmp_path / "repo", tmp_path / "server.log") as live:
        client = http.InferenceServerClient(live.http_url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
        answers = []
        for feeds, budgets in ((pair, [[8], [50]]), ({k: v[:1] for k, v in pair.items()}, [[50]])):
            tensors = []
            for name, array in {**feeds, "budget": np.array(budgets, dtype=np.int64)}.items():
                tensor = http.InferInput(name, list(array.shape), types[array.dtype])
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            answers.append(client.infer("flashvlm", tensors).as_numpy(INDICES))
        client.close()
    np.testing.assert_array_equal(answers[0], want_pair)
    assert [int((row >= 0).sum()) for row in answers[0]] == [8, 50]
    np.testing.assert_array_equal(answers[1], want_one)


def test_the_docs_client_snippet_runs_as_written(server, tmp_path):
    """docs/TRITON.md's client call, run as a user runs it: a fresh interpreter of this environment, where tritonclient
    is not installed (scripts/fetch_triton.sh puts it in the cache); only the port differs (the test server's is free)."""
    import re
    import subprocess
    import sys

    page = (Path(__file__).resolve().parents[1] / "docs" / "TRITON.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert "127.0.0.1:8000" in snippet
    script = tmp_path / "client.py"
    script.write_text(snippet.replace("127.0.0.1:8000", server.http_url))
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    indices = [int(i) for i in re.findall(r"\d+", run.stdout)]
    assert len(indices) == 16 and indices == sorted(indices), run.stdout  # (1, 16) ascending, as the comment says


# ---- Qwen3-VL: the DeepStack tensors through the repository ---------------------------------------------------------
# The tiny split's encoder writes deepstack_features (1, 3, 256, 64) besides X, a, P(X); its selectors take it and
# return deepstack_embeds (1, 3, K, 64) after positions. Exact equality below: the repository's models are the split's
# own graph files (sha256-checked copies) run by the same onnxruntime on the same CPU as the in-process OrtChain, with
# the same inputs; deepstack_embeds is a gather of the encoder's rows at the kept indices, so nothing is re-computed
# differently on either side.

QWEN3 = "qwen3-vl-tiny"
QWEN3_BUDGETS = (64, 32)


@pytest.fixture(scope="module")
def qwen3_split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qwen3")
    argv = ["--model", QWEN3, "--budget", ",".join(map(str, QWEN3_BUDGETS)), "--random-weights", "--out-dir", str(out)]
    assert main([*argv, "--exporter", "torchscript"]) == 0
    return out / f"{QWEN3}_split" / "manifest.json"


def qwen3_inputs() -> dict[str, np.ndarray]:
    from flashvlm_export.models.registry import get_spec

    spec = get_spec(QWEN3)
    rng = np.random.default_rng(3)
    return {
        PIXEL_VALUES: rng.standard_normal((1, 3, spec.image_size, spec.image_size)).astype(np.float32),
        TEXT_EMBEDS: rng.standard_normal((1, spec.t_max, spec.text_hidden)).astype(np.float32),
        TEXT_MASK: np.arange(spec.t_max)[None] < 19,
    }


def test_qwen3_vl_repositories_declare_the_deepstack_tensors(qwen3_split, tmp_path):
    """cpu and onnx flavours: the entry returns deepstack_embeds (L, K varying, Dl); the onnx flavour's encoder model
    declares deepstack_features, each selector model takes it, and the BLS entry is told to pass it."""
    assert main(["triton", "--manifest", str(qwen3_split), "--out", str(tmp_path / "cpu")]) == 0
    assert main(["triton", "--manifest", str(qwen3_split), "--out", str(tmp_path / "onnx"), "--flavour", "onnx"]) == 0
    row = 'name: "deepstack_embeds" data_type: TYPE_FP32 dims: [ 3, -1, 64 ]'
    assert row in (tmp_path / "cpu" / "flashvlm" / "config.pbtxt").read_text()
    entry = (tmp_path / "onnx" / "flashvlm" / "config.pbtxt").read_text()
    assert row in entry
    assert 'key: "shared" value: { string_value: "vision_features,cls_attention,projected_features,deepstack_features" }' in entry
    features = 'name: "deepstack_features" data_type: TYPE_FP32 dims: [ 1, 3, 256, 64 ]'
    encoder = (tmp_path / "onnx" / "flashvlm_encoder" / "config.pbtxt").read_text()
    assert features in encoder.split("output [")[1]
    for k in QWEN3_BUDGETS:
        selector = (tmp_path / "onnx" / f"flashvlm_selector_b{k}" / "config.pbtxt").read_text()
        head, outputs = selector.split("output [")
        assert features in head and f'name: "deepstack_embeds" data_type: TYPE_FP32 dims: [ 1, 3, {k}, 64 ]' in outputs


def test_an_encoder_and_selector_that_disagree_on_deepstack_rows_are_refused():
    from flashvlm_export.serve.layout import Tensor, shared_tensors

    features = tuple(Tensor(n, "TYPE_FP32", (1,)) for n in ("vision_features", "cls_attention", "projected_features"))
    deepstack = (Tensor("deepstack_features", "TYPE_FP32", (1,)),)
    encoder = ((Tensor(PIXEL_VALUES, "TYPE_FP32", (1,)),), features + deepstack)
    assert shared_tensors(encoder, (features + deepstack, ()))[-1] == "deepstack_features"
    with pytest.raises(UsageError, match="deepstack_features on one side only") as info:
        shared_tensors(encoder, (features, ()))
    assert "\n" not in str(info.value)


class StandInTensor:
    """pb_utils.Tensor's names the entry models use (from_dlpack, name) over a host array, itself a DLPack producer."""

    def __init__(self, name: str, array: np.ndarray):
        self._name, self.array = name, np.ascontiguousarray(array)

    @classmethod
    def from_dlpack(cls, name, producer):
        return cls(name, np.from_dlpack(producer))

    def name(self) -> str:
        return self._name

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def stand_in_pb_utils(repo: Path, calls: list):
    """A stand-in triton_python_backend_utils whose BLS InferenceRequest runs the repository's sub-model (its
    model.onnx) in onnxruntime, refusing an input the model does not take or an output its config does not declare."""
    import types

    import onnxruntime as ort

    sessions = {}

    def session(name):
        if name not in sessions:
            sessions[name] = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        return sessions[name]

    class Response:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error_value = output_tensors or [], error

        def has_error(self):
            return self.error_value is not None

        def error(self):
            return self.error_value

    class Error:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model, self.requested, self.inputs = model_name, list(requested_output_names), inputs

        def exec(self):
            config = (repo / self.model / "config.pbtxt").read_text()
            declared = re.findall(r'name: "(\w+)"', config.split("output [")[1])
            feeds = {t.name(): t.array for t in self.inputs}
            taken = [i.name for i in session(self.model).get_inputs()]
            calls.append((self.model, sorted(feeds), list(self.requested)))
            if sorted(feeds) != sorted(taken) or not set(self.requested) <= set(declared):
                return Response(error=Error(f"{self.model}: fed {sorted(feeds)}, takes {taken}; asked {self.requested}"))
            values = session(self.model).run(self.requested, feeds)
            return Response([StandInTensor(n, v) for n, v in zip(self.requested, values, strict=True)])

    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = StandInTensor
    module.InferenceRequest = InferenceRequest
    module.InferenceResponse = Response
    module.TritonError = Error
    module.get_input_tensor_by_name = lambda request, name: request[name]
    module.get_output_tensor_by_name = lambda response, name: {t.name(): t for t in response.output_tensors}[name]
    return module


def stand_in_bls_entry(repo: Path, calls: list, monkeypatch):
    """The repository's entry model (model_bls.py as copied there), imported and initialised as Triton's Python
    backend would, over stand_in_pb_utils; the BLS calls it makes are appended to `calls`."""
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stand_in_pb_utils(repo, calls))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the entry puts its python_path first
    spec = importlib.util.spec_from_file_location("flashvlm_bls_under_test", repo / "flashvlm" / "1" / "model.py")
    bls = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bls)
    text = (repo / "flashvlm" / "config.pbtxt").read_text()
    config = {
        "output": [{"name": n} for n in re.findall(r'name: "(\w+)"', text.split("output [")[1].split("]\n")[0])],
        "parameters": {k: {"string_value": v} for k, v in re.findall(r'key: "(\w+)" value: \{ string_value: "(.*?)" \}', text)},
    }
    model = bls.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repo / "flashvlm"), "model_version": "1"})
    return model


def test_qwen3_vl_bls_entry_passes_the_deepstack_rows_on_stand_in_triton(qwen3_split, tmp_path, monkeypatch):
    """The onnx flavour's entry model (model_bls.py, as copied into the repository) run in-process against a stand-in
    pb_utils whose BLS calls run the repository's encoder and selector graphs in onnxruntime: it asks the encoder for
    deepstack_features, feeds it to the selector, and returns deepstack_embeds equal to the in-process chain's (same
    graphs, same onnxruntime, same process). What it does not prove: that Triton's Python backend and BLS behave like
    the stand-in (the onnx flavour is not served here: the wheel's tritonserver has no onnxruntime backend)."""

    repo = tmp_path / "repo"
    assert main(["triton", "--manifest", str(qwen3_split), "--out", str(repo), "--flavour", "onnx"]) == 0
    calls = []
    model = stand_in_bls_entry(repo, calls, monkeypatch)
    feeds = qwen3_inputs()
    request = {name: StandInTensor(name, value) for name, value in {**feeds, "budget": np.array([[32]])}.items()}
    (response,) = model.execute([request])
    assert not response.has_error(), response.error().message()
    got = {t.name(): t.array for t in response.output_tensors}
    assert calls[0][0] == "flashvlm_encoder" and "deepstack_features" in calls[0][2]
    assert calls[1][0] == "flashvlm_selector_b32" and "deepstack_features" in calls[1][1]
    want = SplitChain(qwen3_split).infer(feeds, 32)
    assert sorted(got) == sorted(want) == sorted([INDICES, VISUAL_EMBEDS, "positions", "deepstack_embeds"])
    assert got["deepstack_embeds"].shape == (1, 3, 32, 64)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_live_server_returns_qwen3_vl_deepstack_embeds_equal_to_the_split_chain(qwen3_split, tmp_path):
    """The CPU repository of the Qwen3-VL split on a real tritonserver: one HTTP request at K = 32 returns indices,
    visual_embeds, positions and deepstack_embeds (1, 3, 32, 64), each equal to OrtChain's in-process answer (the
    note above: same graph files, same onnxruntime, same CPU, same inputs), and the server's model metadata declares
    deepstack_embeds as it is (its Python backend does not check an output against the config: it returned the
    right tensor while the config declared [-1, 64, 64])."""
    binary, why = find_tritonserver()
    why = why if binary is None else import_tritonclient()
    if binary is None or why:
        pytest.skip(f"live Triton test: {why}")
    import tritonclient.http as http

    assert main(["triton", "--manifest", str(qwen3_split), "--out", str(tmp_path / "repo")]) == 0
    feeds = qwen3_inputs()
    want = SplitChain(qwen3_split).infer(feeds, 32)
    names = (INDICES, VISUAL_EMBEDS, "positions", "deepstack_embeds")
    types = {np.dtype(np.float32): "FP32", np.dtype(bool): "BOOL", np.dtype(np.int64): "INT64"}
    with TritonServer(binary, tmp_path / "repo", tmp_path / "server.log") as live:
        client = http.InferenceServerClient(live.http_url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
        tensors = []
        for name, array in {**feeds, "budget": np.array([[32]], dtype=np.int64)}.items():
            tensor = http.InferInput(name, list(array.shape), types[array.dtype])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        answer = client.infer("flashvlm", tensors)
        declared = {o["name"]: o["shape"] for o in client.get_model_metadata("flashvlm")["outputs"]}
        client.close()
    assert declared["deepstack_embeds"] == [-1, 3, -1, 64]  # what the server tells clients: batch, L, K varying, Dl
    got = {name: answer.as_numpy(name) for name in names}
    assert sorted(want) == sorted(names) and got["deepstack_embeds"].shape == (1, 3, 32, 64)
    for name in names:
        np.testing.assert_array_equal(got[name], want[name])
