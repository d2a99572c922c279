"""Triton model repositories of a split (serve/, docs/TRITON.md): the writer's checks, and the CPU flavour on a real
tritonserver (skips, saying why, where scripts/fetch_triton.sh could not fetch the server or the client).

The tiny model's split at K = 64, 16 is exported once; the live server runs its generated CPU repository on
127.0.0.1 with free ports, bounded timeouts, and is always stopped (its process group killed)."""

import json
import os
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
    expect_one_line(capsys, ["triton", "--manifest", str(split), "--out", str(out), "--flavour", "tensorrt"], "no TensorRT engines")
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
    assert f'plugins="{(fresh / repository.PLUGIN_FILE).resolve()}"' in json.loads((fresh / repository.RECORD).read_text())["serve"]
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

    argv = ["--model", "llava15-tiny", "--budget-range", "8..64", "--batch", "2", "--random-weights", "--split", "--out-dir", str(tmp_path)]
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
