"""Shared fixtures: seeded selector inputs and exported graphs, built once per session."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.models.registry import get_spec
from flashvlm_export.parity.corpus import Geometry, selector_corpus
from flashvlm_export.selector.config import SelectorConfig

from ci_skips import pytest_runtest_makereport  # noqa: F401 (the hook: in CI a skip fails unless nothing here can run it)

LLAVA15 = get_spec("llava15")
TINY = get_spec("llava15-tiny")

# pytest-xdist (pyproject's addopts: a worker per core): each worker takes a share of the torch threads, so two
# workers on two cores do not fight over them. Exports are mostly single-threaded Python; the GEMMs lose little.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // WORKERS))


def shared_folder(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder built once per test run and shared by every xdist worker (and every module that asks for it).

    The first worker that asks runs build(folder) under a file lock; the others wait for it and reuse the folder. A
    build that failed leaves no `.done` mark, so the next one to ask builds it again (and fails the same way).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's base folder, common to the workers
    folder = root / f"shared-{name}"
    with FileLock(f"{folder}.lock"):
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".done").touch()
    return folder


def selector_inputs(batch=2, n=576, dv=64, dl=96, t_max=16, seed=0, lengths=None):
    """Random selector inputs as torch tensors; each image has its own text length."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, dv, generator=g)
    a = torch.rand(batch, n, generator=g)
    p = torch.tanh(x @ torch.randn(dv, dl, generator=g) / dv**0.5)
    text = torch.randn(batch, t_max, dl, generator=g)
    mask = torch.zeros(batch, t_max, dtype=torch.bool)
    for b, length in enumerate(lengths or [t_max - 3 * b for b in range(batch)]):
        mask[b, :length] = True
    return x, a, p, text, mask


def corpus(n_tokens=576, dv=64, dl=96, t_max=16, batch=1, repeats=1, seed=0):
    return selector_corpus(Geometry(n_tokens, dv, dl, t_max, batch), seed=seed, repeats=repeats)


def export_selector(path: Path, budget: int, spec=LLAVA15, n_tokens=None, batch=1, t_max=None, exporter="dynamo") -> Path:
    request = ExportRequest(
        spec=spec,
        budget=budget,
        t_max=t_max or spec.t_max,
        batch=batch,
        config=SelectorConfig(),
        selector_only=True,
        n_tokens=n_tokens,
    )
    return export_graph(request, path, exporter=exporter)


@pytest.fixture(scope="session")
def selector_graphs(tmp_path_factory):
    """llava15 selector graphs (N=576, Dv=1024, Dl=4096, T_max=128) at the budgets the issue names."""
    budgets = (32, 64, 128, 192)

    def build(folder: Path) -> None:  # TorchScript traces the unrolled rounds several times faster than dynamo, which
        for k in budgets:  # tests/test_exporters.py covers on every graph kind
            export_selector(folder / f"llava15_selector_b{k}.onnx", k, exporter="torchscript")

    folder = shared_folder(tmp_path_factory, "selector_graphs", build)
    return {k: folder / f"llava15_selector_b{k}.onnx" for k in budgets}


TINY_FULL_BUDGETS = (64, TINY.n_tokens)


@pytest.fixture(scope="session")
def tiny_full_graphs(tmp_path_factory) -> dict[int, Path]:
    """llava15-tiny full graphs (random weights, seed 0) at K = 64 and K = N, exported once per run (TorchScript) and
    shared by every module and worker that runs them (run, llama.cpp)."""
    from flashvlm_export.models.llava import random_parts

    def build(folder: Path) -> None:
        parts = random_parts(TINY, seed=0)
        for k in TINY_FULL_BUDGETS:
            request = ExportRequest(spec=TINY, budget=k, t_max=TINY.t_max, batch=1, config=SelectorConfig(), selector_only=False)
            export_graph(request, folder / f"llava15-tiny_b{k}.onnx", parts, "random:0", exporter="torchscript")

    folder = shared_folder(tmp_path_factory, "tiny_full_graphs", build)
    return {k: folder / f"llava15-tiny_b{k}.onnx" for k in TINY_FULL_BUDGETS}


@pytest.fixture(scope="session")
def tiny_parts():
    from flashvlm_export.models.llava import random_parts

    return random_parts(TINY, seed=0)


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


def copy_split(manifest: Path, folder: Path) -> Path:
    """A copy of a split export's folder inside `folder`, to edit as a user (or an attacker) would; its manifest."""
    target = folder / manifest.parent.name
    shutil.copytree(manifest.parent, target)
    return target / manifest.name


def list_engines(manifest: Path, folder: str) -> None:
    """Edit the manifest to list an engine per graph in `folder` (relative to the split), none of them built."""
    record = json.loads(manifest.read_text())
    for entry in [record["encoder"], *record["selectors"]]:
        entry["engine"] = {"path": f"{folder}/{entry['onnx']['path']}.plan", "sha256": "0" * 64, "bytes": 1}
    manifest.write_text(json.dumps(record))


class Planted:
    """Wraps an honest parity backend and corrupts its outputs with `corrupt` (a planted fault the checks must catch)."""

    def __init__(self, honest, corrupt, name="planted"):
        self.honest, self.corrupt, self.name = honest, corrupt, name

    def infer(self, feeds):
        return self.corrupt({k: v.copy() for k, v in self.honest.infer(feeds).items()})


def expect_one_line(capsys, argv, *fragments) -> str:
    """The CLI refuses argv with exit code 2 and one line on stderr (no traceback) holding every fragment; the line."""
    from flashvlm_export.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def openvino_report(graph: Path, parts=None):
    """Parity of `graph` with the OpenVINO backend alone (no static torch), on its own recorded weights unless `parts`
    are given; the one BackendReport."""
    from flashvlm_export.backend import OPENVINO
    from flashvlm_export.export.graphs import request_from_metadata
    from flashvlm_export.export.metadata import graph_metadata
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.models.weights import WeightsSource
    from flashvlm_export.parity.backends import OnnxRuntime
    from flashvlm_export.parity.run import run_parity

    meta = graph_metadata(graph)
    request = request_from_metadata(meta, str(graph))
    parts = parts if parts is not None else get_parts(request.spec, WeightsSource.from_tag(meta["weights"]))
    with tempfile.TemporaryDirectory() as scratch:
        backend = OnnxRuntime(graph, request.interface(), OPENVINO, plugin=request.plugin, scratch=Path(scratch))
        (report,) = run_parity(graph, parts, repeats=1, backends=[backend], log=lambda _: None, meta=meta)
    return report


def openvino_parity_passes(capsys, flag: str, artifact: Path, *argv) -> str:
    """Parity on OpenVINO passes for ARTIFACT, and OpenVINO really compiled it: its model cache beside it holds a blob
    OpenVINO wrote (a label alone would pass were ONNX Runtime run instead). Skips (a failure in CI: tests/ci_skips.py)
    where OpenVINO is not installed.

    --manifest: `parity --manifest M --backend openvino` as typed. --graph: the same run_parity the command runs, with
    the OpenVINO backend alone (the command adds static torch, which the family's other tests check, and takes 4x as
    long; tests/test_openvino.py runs the command itself on llava15-tiny)."""
    from flashvlm_export.cli import main

    pytest.importorskip("openvino", reason="OpenVINO Runtime is not installed (pip install openvino)")
    cache = Path(artifact).parent / "openvino_cache"
    shutil.rmtree(cache, ignore_errors=True)
    if flag == "--graph":
        report = openvino_report(artifact)
        out = "\n".join(report.lines())
        assert report and report.backend.startswith("openvino[CPU"), out
    else:
        code = main(["parity", flag, str(artifact), *argv, "--backend", "openvino", "--repeats", "1", "--no-save"])
        out = capsys.readouterr().out
        assert code == 0 and out.strip().splitlines()[-1].startswith("PASSED"), out
        assert "OpenVINO CPU chain" in out and "onnxruntime[" not in out, out
    assert list(cache.glob("*.blob")), f"no OpenVINO blob in {cache}: OpenVINO did not compile {artifact}"
    return out


# ---------------------------------------------------------------- eval (tests/test_eval*.py)

EVAL_T_MAX = "512"  # the stand-in tokenizer is byte-level: a multiple-choice prompt is ~330 bytes (tiny default: 256)
EVAL_BUDGETS = "512,544,full"  # budgets near N: few pruning rounds to export (a few seconds)


def cli_ok(argv: list[str]) -> None:
    from flashvlm_export.cli import main

    assert main(argv) == 0


@pytest.fixture(scope="session")
def eval_split(tmp_path_factory) -> Path:
    """llava15-tiny split, K = 544 and 512, T_max 512: the encoder once per picture, "full" from its P(X)."""

    def build(folder: Path) -> None:
        cli_ok(["--model", "llava15-tiny", "--budget", "544,512", "--random-weights", "--t-max", EVAL_T_MAX, "--exporter",
                "torchscript", "--out-dir", str(folder)])  # fmt: skip

    return shared_folder(tmp_path_factory, "eval_split", build) / "llava15-tiny_split" / "manifest.json"


@pytest.fixture(scope="session")
def eval_demo(tmp_path_factory) -> Path:
    """The synthetic benchmark (eval --demo-data), written once per worker."""
    from flashvlm_export.evaluation.demo_data import write_demo_data

    folder = tmp_path_factory.mktemp("eval-demo") / "demo"
    write_demo_data(folder, log=lambda _: None)
    return folder


def run_eval(manifest, data, out, **kwargs):
    """flashvlm_export.evaluation.job.evaluate on a split, random weights, budgets 16,64,full unless given; quiet."""
    from flashvlm_export.evaluation.job import evaluate

    kwargs.setdefault("budgets", EVAL_BUDGETS)
    return evaluate(str(data), manifest=str(manifest), out=str(out), random_weights=True, log=lambda _: None, **kwargs)


def eval_records(out: Path) -> list[dict]:
    from flashvlm_export.evaluation.results import RESULTS

    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()[1:]]
