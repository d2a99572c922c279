"""The engine chain of a split export (trt/chain.py): encoder engine -> the selector engine of a budget.

What runs here: the chain's checks before TensorRT, on sidecar JSON written by hand next to dummy .plan
files; and the checks of the loaded engines' I/O tensors (engine_io, check_io) and the choice of what each
execution context binds (bound_names), on stand-ins for ICudaEngine and the tensorrt module's enums whose
tensors are the exported graphs' interface (export/interface.py), for a llava15-tiny and a Qwen3-VL (DeepStack)
engine set. They prove our refusal and binding logic only and nothing about TensorRT itself (no engine is
deserialized, no TensorRT name is called). Building and running a real chain needs TensorRT and a CUDA GPU;
that test is skipped where either is absent.
"""

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flashvlm_export.errors import MissingDependencyError, UsageError
from flashvlm_export.export.interface import graph_interface
from flashvlm_export.models.registry import get_spec
from flashvlm_export.trt.chain import (
    EngineChain,
    _torch_dtypes,
    bound_names,
    check_chain_records,
    check_io,
    engine_io,
    select_budget,
)
from flashvlm_export.trt.runner import check_engine

from ci_skips import unavailable_here

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def have_gpu() -> bool:
    import torch

    return torch.cuda.is_available() or shutil.which("nvidia-smi") is not None


def write_engine(folder, name, kind, budget, *, batch=1, n_tokens=576, vision_hidden=1024, text_hidden=4096, t_max=128):
    """A dummy .plan and a complete sidecar for it, shaped like trt/sidecar.py's engine_record."""
    plan = folder / f"{name}.plan"
    plan.write_bytes(f"engine bytes of {name}".encode())
    meta = {"graph": kind, "batch": str(batch), "n_tokens": str(n_tokens), "vision_hidden": str(vision_hidden)}
    meta |= {"text_hidden": str(text_hidden), "image_size": "336", "precision": "fp32"}
    if kind == "selector":
        meta |= {"budget": str(budget), "t_max": str(t_max)}
    record = {
        "engine": plan.name,
        "engine_sha256": hashlib.sha256(plan.read_bytes()).hexdigest(),
        "tensorrt_version": "10.3.0",
        "gpu": "NVIDIA H100",
        "compute_capability": "9.0",
        "precision": "fp32",
        "budget": budget,
        "batch": batch,
        "t_max": t_max if kind == "selector" else 0,
        "graph_kind": kind,
        "plugin": False,
        "onnx": f"{name}.onnx",
        "onnx_metadata": meta,
    }
    plan.with_suffix(".json").write_text(json.dumps(record))
    return plan


@pytest.fixture
def chain_files(tmp_path):
    encoder = write_engine(tmp_path, "enc", "encoder", 0)
    selectors = {k: write_engine(tmp_path, f"sel_b{k}", "selector", k) for k in (32, 64)}
    return encoder, selectors


def refused(encoder, selectors) -> str:
    with pytest.raises(UsageError) as info:
        check_chain_records(encoder, selectors)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_consistent_sidecars_pass_the_checks_before_tensorrt(chain_files):
    encoder, selectors = chain_files
    encoder_record, records = check_chain_records(encoder, selectors)
    assert encoder_record["graph_kind"] == "encoder" and sorted(records) == [32, 64]


def test_missing_selector_sidecar_is_refused_naming_the_file(chain_files):
    encoder, selectors = chain_files
    selectors[64].with_suffix(".json").unlink()
    message = refused(encoder, selectors)
    assert str(selectors[64]) in message and "has no sidecar" in message


def test_missing_encoder_engine_is_refused_naming_the_file(chain_files):
    encoder, selectors = chain_files
    encoder.unlink()
    assert f"engine {encoder} does not exist" in refused(encoder, selectors)


def test_unreadable_sidecar_is_refused_naming_the_file(chain_files):
    encoder, selectors = chain_files
    selectors[32].with_suffix(".json").write_text("{not json")
    assert f"sidecar {selectors[32].with_suffix('.json')} is not readable JSON" in refused(encoder, selectors)


def test_encoder_whose_sidecar_says_selector_is_refused(tmp_path):
    encoder = write_engine(tmp_path, "enc", "selector", 32)
    selectors = {32: write_engine(tmp_path, "sel_b32", "selector", 32)}
    message = refused(encoder, selectors)
    assert str(encoder) in message and "'selector' engine" in message and "expects 'encoder'" in message


def test_selector_whose_sidecar_says_encoder_is_refused(tmp_path):
    encoder = write_engine(tmp_path, "enc", "encoder", 0)
    selectors = {32: write_engine(tmp_path, "enc2", "encoder", 0)}
    message = refused(encoder, selectors)
    assert str(selectors[32]) in message and "expects 'selector'" in message


def test_selector_whose_budget_differs_from_its_key_is_refused(chain_files):
    encoder, selectors = chain_files
    selectors = {32: selectors[32], 128: selectors[64]}
    message = refused(encoder, selectors)
    assert str(selectors[128]) in message and "K=64" in message and "keyed as K=128" in message


@pytest.mark.parametrize(
    "field, value",
    [("batch", 2), ("n_tokens", 2880), ("vision_hidden", 1152), ("text_hidden", 3584)],
)
def test_batch_or_geometry_mismatch_between_encoder_and_selector_is_refused(tmp_path, field, value):
    encoder = write_engine(tmp_path, "enc", "encoder", 0)
    selectors = {
        32: write_engine(tmp_path, "sel_b32", "selector", 32),
        64: write_engine(tmp_path, "sel_b64", "selector", 64, **{field: value}),
    }
    message = refused(encoder, selectors)
    assert str(selectors[64]) in message and str(encoder) in message and f"{field}={value}" in message


def test_selectors_with_different_t_max_are_refused(tmp_path):
    encoder = write_engine(tmp_path, "enc", "encoder", 0)
    selectors = {
        32: write_engine(tmp_path, "sel_b32", "selector", 32),
        64: write_engine(tmp_path, "sel_b64", "selector", 64, t_max=64),
    }
    message = refused(encoder, selectors)
    assert "T_max" in message and "t_max=64" in message


def test_a_chain_without_selectors_is_refused(chain_files):
    encoder, _ = chain_files
    assert str(encoder) in refused(encoder, {})


def test_an_engine_its_sidecar_does_not_describe_is_refused(chain_files):
    encoder, selectors = chain_files
    selectors[32].write_bytes(b"another engine")
    message = refused(encoder, selectors)
    assert str(selectors[32]) in message and "sha256 differs" in message


def test_a_budget_the_chain_lacks_names_the_budgets_it_has():
    assert select_budget(64, (32, 64)) == 64
    with pytest.raises(UsageError, match=r"budget 128 has no selector engine .*K = 32, 64") as info:
        select_budget(128, (32, 64))
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="budget True"):
        select_budget(True, (1, 32))


def test_check_engine_refuses_a_kind_other_than_expected_before_tensorrt(chain_files):
    _, selectors = chain_files
    with pytest.raises(UsageError, match=r"'selector' engine .*expects 'encoder'"):
        check_engine(selectors[32], expect_kind="encoder")


@pytest.mark.skipif(HAVE_TRT, reason=unavailable_here("TensorRT is installed: the missing-TensorRT message cannot be shown"))
def test_checks_that_need_tensorrt_are_the_one_line_missing_tensorrt_error(chain_files):
    encoder, selectors = chain_files
    for attempt in (lambda: EngineChain(encoder, selectors), lambda: check_engine(selectors[32], expect_kind="selector")):
        with pytest.raises(MissingDependencyError, match="TensorRT is not installed") as info:
            attempt()
        assert "\n" not in str(info.value)


def test_importing_the_chain_does_not_import_tensorrt():
    """In a fresh interpreter that records every import attempt: tensorrt is never asked for."""
    probe = (
        "import sys\n"
        "asked = []\n"
        "class Recorder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        asked.append(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Recorder())\n"
        "import flashvlm_export.trt.chain\n"
        "assert 'flashvlm_export.trt.chain' in asked, 'the recorder saw nothing'\n"
        "hit = [n for n in asked if n.split('.')[0] == 'tensorrt'] + [n for n in sys.modules if n.split('.')[0] == 'tensorrt']\n"
        "assert not hit, hit\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---- the loaded engines' I/O, on stand-ins for TensorRT's objects -------------------------------------------------
# What these do not prove: that TensorRT's ONNX parser gives an engine the graph's tensor names, modes, shapes and
# types (read against its sources, not run), that set_tensor_address accepts the addresses, or any engine run.

TRT = SimpleNamespace(  # the tensorrt module's names engine_io and _torch_dtypes read: distinct enum values
    TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
    DataType=SimpleNamespace(FLOAT="FLOAT", HALF="HALF", BF16="BF16", INT32="INT32", INT64="INT64", BOOL="BOOL"),
)
TRT_TYPES = {np.float32: "FLOAT", np.int64: "INT64", np.bool_: "BOOL"}


class StandInEngine:
    """The ICudaEngine names engine_io calls (num_io_tensors, get_tensor_name/mode/shape/dtype) over a fixed tensor
    list; a tuple stands in for Dims (both have len and indexing)."""

    def __init__(self, tensors: dict[str, tuple[bool, tuple[int, ...], str]]):
        self.tensors = tensors
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> str:
        return TRT.TensorIOMode.INPUT if self.tensors[name][0] else TRT.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def get_tensor_dtype(self, name: str) -> str:
        return self.tensors[name][2]


def stand_in(model: str, kind: str, budget: int = 0, deepstack: int | None = None, **edits) -> StandInEngine:
    """An engine with the I/O tensors of `model`'s split graph of `kind` (export/interface.py, as the export writes
    them); deepstack overrides the model's DeepStack layers (0: none); edits replace a tensor's (is_input, shape, type),
    None drops it."""
    spec = get_spec(model)
    layers = spec.deepstack_layers if deepstack is None else deepstack
    n = spec.n_tokens
    face = graph_interface(
        kind, 1, n, budget or n, spec.t_max, spec.vision_hidden, spec.text_hidden, spec.image_shape,
        positions=spec.has_positions and kind == "selector", deepstack=layers,
    )  # fmt: skip
    tensors = {t.name: (True, t.shape, TRT_TYPES[t.dtype]) for t in face.inputs}
    tensors |= {t.name: (False, t.shape, TRT_TYPES[t.dtype]) for t in face.outputs}
    for name, value in edits.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    return StandInEngine(tensors)


def load_io(encoder: StandInEngine, selectors: dict[int, StandInEngine]):
    """What EngineChain does with its engines between deserializing them and allocating buffers."""
    import torch

    dtypes = _torch_dtypes(TRT, torch)
    enc_io = engine_io(TRT, encoder, Path("encoder.plan"), "encoder", dtypes)
    paths = {k: Path(f"selector_b{k}.plan") for k in selectors}
    selector_io = {k: engine_io(TRT, engine, paths[k], "selector", dtypes) for k, engine in selectors.items()}
    check_io(Path("encoder.plan"), enc_io, paths, selector_io, torch.bfloat16)
    return enc_io, selector_io


def io_refused(encoder, selectors) -> str:
    with pytest.raises(UsageError) as info:
        load_io(encoder, selectors)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("model", ["llava15-tiny", "qwen3-vl-tiny"])
def test_every_io_tensor_of_every_engine_gets_one_address(model):
    """The encoder binds pixel_values and every buffer it writes; each selector reads those buffers and the text and
    writes its selected tensors: together exactly each engine's I/O tensors, once (TensorRT runs only an engine whose
    every I/O tensor has an address). Qwen3-VL: deepstack_features is shared, deepstack_embeds selected."""
    enc_io, selector_io = load_io(stand_in(model, "encoder"), {k: stand_in(model, "selector", k) for k in (64, 32)})
    encoder_names, selector_names = bound_names(enc_io, selector_io)
    assert sorted(encoder_names) == sorted(enc_io)
    for k, (inputs, outputs) in selector_names.items():
        assert sorted(inputs + outputs) == sorted(selector_io[k])
        assert all(selector_io[k][name][0] for name in inputs) and not any(selector_io[k][name][0] for name in outputs)
    deepstack = get_spec(model).deepstack_layers
    if deepstack:
        assert encoder_names[-1] == "deepstack_features" and selector_names[32][0][3] == "deepstack_features"
        assert selector_names[32][1] == ("indices", "visual_embeds", "positions", "deepstack_embeds")
        assert selector_io[32]["deepstack_embeds"][1] == (1, deepstack, 32, get_spec(model).text_hidden)
    else:
        assert "deepstack_features" not in encoder_names and selector_names[32][1] == ("indices", "visual_embeds")


def test_a_selector_taking_deepstack_rows_the_encoder_does_not_write_is_refused():
    encoder = stand_in("qwen3-vl-tiny", "encoder", deepstack=0)  # same geometry, no DeepStack
    message = io_refused(encoder, {32: stand_in("qwen3-vl-tiny", "selector", 32)})
    assert "selector_b32.plan takes deepstack_features" in message and "encoder.plan does not write it" in message


def test_an_encoder_writing_deepstack_rows_no_selector_takes_is_refused():
    selectors = {32: stand_in("qwen3-vl-tiny", "selector", 32, deepstack=0)}
    message = io_refused(stand_in("qwen3-vl-tiny", "encoder"), selectors)
    assert "selector_b32.plan does not take deepstack_features" in message and "encoder.plan writes it" in message


def test_a_selector_with_half_the_deepstack_tensors_is_refused_naming_the_other():
    selectors = {32: stand_in("qwen3-vl-tiny", "selector", 32, deepstack_embeds=None)}
    message = io_refused(stand_in("qwen3-vl-tiny", "encoder"), selectors)
    assert "selector_b32.plan" in message and "['deepstack_embeds'] which the engine lacks" in message


def test_deepstack_tensors_of_other_shapes_are_refused():
    wrong_layers = {32: stand_in("qwen3-vl-tiny", "selector", 32, deepstack_features=(True, (1, 2, 256, 64), "FLOAT"))}
    message = io_refused(stand_in("qwen3-vl-tiny", "encoder"), wrong_layers)
    assert "takes deepstack_features (1, 2, 256, 64)" in message and "writes (1, 3, 256, 64)" in message
    wrong_k = {32: stand_in("qwen3-vl-tiny", "selector", 32, deepstack_embeds=(False, (1, 3, 64, 64), "FLOAT"))}
    message = io_refused(stand_in("qwen3-vl-tiny", "encoder"), wrong_k)
    assert "outputs deepstack_embeds (1, 3, 64, 64), not K=32 wide on axis 2" in message


def test_deepstack_embeds_in_bfloat16_is_refused_numpy_has_none():
    selectors = {32: stand_in("qwen3-vl-tiny", "selector", 32, deepstack_embeds=(False, (1, 3, 32, 64), "BF16"))}
    assert "deepstack_embeds as bfloat16" in io_refused(stand_in("qwen3-vl-tiny", "encoder"), selectors)


@pytest.mark.skipif(not HAVE_TRT or not have_gpu(), reason=unavailable_here("needs TensorRT and a CUDA GPU"))
@pytest.mark.parametrize("model", ["llava15-tiny", "qwen3-vl-tiny"])
def test_a_real_chain_matches_its_selector_engines_run_one_by_one(tmp_path, model):
    """Split-export the model with --engine (encoder + K=32, 64), then for each budget: the chain's indices
    equal the K engine run alone (EngineRunner) on the encoder engine's outputs, and visual_embeds are
    projected_features gathered at those indices (Qwen3-VL: and deepstack_embeds the DeepStack rows gathered there).
    The qwen3-vl-tiny case was written where neither TensorRT nor a GPU is, and has not run."""
    from flashvlm_export.cli import main
    from flashvlm_export.trt.runner import EngineRunner

    assert HAVE_TRT and have_gpu()
    argv = ["--model", model, "--random-weights", "--split", "--budget", "32,64"]
    assert main([*argv, "--out-dir", str(tmp_path), "--engine"]) == 0  # engines go to the split's own engines/
    from flashvlm_export.export.manifest import read_manifest

    encoder, selectors = read_manifest(tmp_path / f"{model}_split" / "manifest.json").engines()
    chain = EngineChain(encoder, selectors)
    spec = get_spec(model)
    rng = np.random.default_rng(0)
    feeds = {
        "pixel_values": rng.standard_normal((1, 3, spec.image_size, spec.image_size), dtype=np.float32),
        "text_embeds": rng.standard_normal((1, spec.t_max, spec.text_hidden), dtype=np.float32),
        "text_mask": np.arange(spec.t_max)[None] < spec.t_max // 2,
    }
    encoded = EngineRunner(encoder).infer({"pixel_values": feeds["pixel_values"]})
    for k in chain.budgets:
        got = chain.infer(feeds, k)
        alone = EngineRunner(selectors[k], expect_budget=k).infer(
            {**encoded, **{n: feeds[n] for n in ("text_embeds", "text_mask")}}
        )
        assert got["indices"].shape == (1, k) and np.array_equal(got["indices"], alone["indices"])
        gathered = np.take_along_axis(encoded["projected_features"], got["indices"][..., None], axis=1)
        np.testing.assert_allclose(got["visual_embeds"], gathered, rtol=0, atol=0)
        if spec.deepstack_layers:
            rows = np.take_along_axis(encoded["deepstack_features"], got["indices"][:, None, :, None], axis=2)
            assert got["deepstack_embeds"].shape == (1, spec.deepstack_layers, k, spec.text_hidden)
            np.testing.assert_array_equal(got["deepstack_embeds"], rows)
