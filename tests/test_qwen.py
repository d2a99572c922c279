"""Qwen2.5-VL on the tiny model: the static encoder against transformers' own tower, every export path through
parity, planted faults caught, bad input refused in one line, the model's gate recorded (ALGORITHM.md
"Batches and other models").

Kept fast for CI: the tiny model (448 px, N = 256, 4 blocks of width 32), batch 1 or 2, one parity repeat;
every graph is exported once per module and the random weights are built once.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flashvlm_export.cli import main
from flashvlm_export.export.graphs import ExportRequest
from flashvlm_export.export.interface import CLS_ATTENTION, INDICES, POSITIONS, PROJECTED_FEATURES, VISUAL_EMBEDS
from flashvlm_export.export.metadata import graph_metadata, request_fields
from flashvlm_export.models.positions import token_positions
from flashvlm_export.models.qwen2_5_vl import QwenEncoderCore, patchify, random_parts
from flashvlm_export.models.registry import get_spec
from flashvlm_export.models.vision import FlashVLMPipeline, SelectorWithEmbeds, VisionEncoder
from flashvlm_export.parity.backends import TorchModule
from flashvlm_export.parity.compare import max_relative_error
from flashvlm_export.parity.run import run_parity

from conftest import Planted, expect_one_line, openvino_parity_passes

QWEN = get_spec("qwen2.5-vl-tiny")
QUIET = dict(log=lambda _: None)
BUDGET = 64
# The static encoder against transformers' own tower, max|b - r| / max|r|: the same fp32 operations, but attention
# over the whole sequence with a -inf-like additive window mask instead of one call per window, so the sums of AV
# run over other lengths (masked weights are exactly 0); measured 0 at 448 px and 4.7e-8 at 476 px.
ENCODER_BOUND = 1e-5


@pytest.fixture(scope="module")
def parts():
    return random_parts(QWEN, seed=0)


# ---------------------------------------------------------------- (a) the encoder against transformers' own


def window_sizes(core: QwenEncoderCore) -> set[int]:
    """The sizes of the attention windows the constant mask encodes (patches per window)."""
    return set((core.window_mask == 0).sum(dim=1).tolist())


@pytest.mark.parametrize(
    "size", [(448, 448), (476, 476), (364, 504)], ids=["448px-whole-windows", "476px-padded-windows", "364x504-ragged"]
)
def test_static_encoder_equals_transformers_vision_tower_within_bound(parts, size):
    core = QwenEncoderCore(parts.visual, size)
    # 112 px windows are 8x8 patches: 448 px tiles them exactly; 476 px (34 patches a side) and 364 x 504 (26 x 36
    # patches: the 4:3 shape of --aspects) leave ragged windows
    if size == (448, 448):
        assert window_sizes(core) == {64}
    else:
        assert len(window_sizes(core)) > 1
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        x, a, p = VisionEncoder(core)(pixels)
    rx, ra, rp = parts.reference_features(pixels)
    n = (size[0] // QWEN.token_stride) * (size[1] // QWEN.token_stride)
    assert x.shape == p.shape == (2, n, QWEN.text_hidden) and a.shape == (2, n)
    assert torch.equal(x, p)  # X = P(X): the Gram is taken on the merger's outputs
    for name, got, want in [("X", x, rx), ("a", a, ra), ("P(X)", p, rp)]:
        error = max_relative_error(got.numpy(), want.numpy())
        assert error <= ENCODER_BOUND, f"{name} at {size} px: {error:.2e}"


@pytest.mark.parametrize("size", [448, 476])
def test_patchify_equals_qwen_image_processor_exactly(size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cfg = dict(patch_size=QWEN.patch_size, merge_size=QWEN.merge, temporal_patch_size=QWEN.vision["temporal_patch_size"])
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ours = patchify(pixels, QWEN.patch_size, QWEN.merge, cfg["temporal_patch_size"])
    processor = Qwen2VLImageProcessorPil()
    theirs = [processor.patchify(image.numpy(), *cfg.values())[0] for image in pixels]
    # a permutation and a repeat of the same floats: exact on every CPU
    assert torch.equal(ours, torch.from_numpy(np.concatenate(theirs)))


def test_token_positions_are_the_raster_grid():
    table = token_positions(QWEN)
    side = QWEN.grid_side
    assert table.shape == (side * side, 3) and table.dtype == torch.int64
    assert table[side + 3].tolist() == [0, 1, 3] and table[-1].tolist() == [0, side - 1, side - 1]


# ---------------------------------------------------------------- (b) every export path passes parity


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qwen")


def export(out_dir: Path, name: str, *flags: str, budget: int = BUDGET) -> Path:
    graph = out_dir / f"{name}.onnx"
    argv = ["--model", QWEN.name, "--budget", str(budget), "--random-weights", "--out", str(graph), *flags]
    assert main(argv) == 0
    return graph


@pytest.fixture(scope="module")
def fused(out_dir) -> Path:
    """The fused graph (TorchScript, the fast exporter): also the planted faults' metadata."""
    return export(out_dir, "fused_ts", "--exporter", "torchscript")


def assert_parity_command_passes(capsys, argv, save=("--no-save",)):
    code = main(["parity", *argv, "--repeats", "1", *save])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASSED"), out
    return out


@pytest.fixture(scope="module")
def parity_records(fused) -> Path:
    """The fused graph's parity records (--save-dir): what Polygraphy's replay loads."""
    folder = fused.parent / "parity"
    assert main(["parity", "--graph", str(fused), "--repeats", "1", "--save-dir", str(folder)]) == 0
    return folder


def test_fused_torchscript_graph_returns_positions_and_passes_parity(fused, capsys):
    import onnx

    model = onnx.load(str(fused), load_external_data=False)
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert outputs == {INDICES: [1, BUDGET], VISUAL_EMBEDS: [1, BUDGET, QWEN.text_hidden], POSITIONS: [1, BUDGET, 3]}
    assert_parity_command_passes(capsys, ["--graph", str(fused)])


def test_polygraphy_replay_records_hold_the_positions_and_catch_two_exchanged(fused, parity_records):
    """The replay's verdict (parity/polygraphy_compare.py) on the shipped graph's own outputs, then with two kept
    tokens' positions exchanged: the records carry each token's (t, h, w)."""
    import onnxruntime as ort
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    from flashvlm_export.parity import polygraphy_compare

    records = parity_records / f"{fused.stem}_reference_outputs.json"
    inputs = load_json(str(parity_records / f"{fused.stem}_inputs.json"))
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    for feeds, record in zip(inputs, RunResults.load(str(records))[0][1], strict=True):
        record = dict(record.items())
        assert np.array_equal(record[polygraphy_compare.TOKEN_POSITIONS], token_positions(QWEN).numpy())
        run = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        assert polygraphy_compare.judge(run, record)[0]
        passed, lines = polygraphy_compare.judge(exchange_two_positions(run), record)
        assert not passed and any("positions are not the kept tokens' own" in line for line in lines)
        without = {name: value for name, value in run.items() if name != POSITIONS}  # a run that drops them fails too
        passed, lines = polygraphy_compare.judge(without, record)
        assert not passed and any("returns no positions" in line for line in lines), lines


@pytest.mark.parametrize(
    "name, flags",
    [
        ("fused_dynamo_bs2", ["--exporter", "dynamo", "--batch", "2"]),  # batch 2: each image's positions checked
        ("plugin", ["--plugin", "--exporter", "dynamo"]),
        ("fp16", ["--precision", "fp16", "--exporter", "torchscript"]),
    ],
)
def test_export_path_passes_parity(out_dir, capsys, name, flags):
    """Each export path end to end at K = 240 of 256: few unrolled rounds, so the dynamo exports stay fast (what each
    path must keep, positions, the plugin node, fp16's fp32 selector, does not depend on K)."""
    graph = export(out_dir, name, *flags, budget=240)
    out = assert_parity_command_passes(capsys, ["--graph", str(graph)])
    if name == "plugin":
        assert "onnxruntime[CPU, plugin op]" in out
    if name == "fp16":
        assert graph_metadata(graph)["precision"] == "fp16" and "vision_features" in out and "(reported)" in out


def test_split_export_passes_parity_per_budget(out_dir, capsys):
    argv = ["--model", QWEN.name, "--budget", "64,32", "--random-weights", "--exporter", "torchscript"]
    assert main([*argv, "--out-dir", str(out_dir / "split")]) == 0
    manifest = out_dir / "split" / f"{QWEN.name}_split" / "manifest.json"
    record = json.loads(manifest.read_text())
    assert record["model"] == QWEN.name and record["budgets"] == [64, 32]
    out = assert_parity_command_passes(capsys, ["--manifest", str(manifest)])
    assert "K=64:" in out and "K=32:" in out


# ---------------------------------------------------------------- (c) planted faults fail parity


class Remembered:
    """An honest backend that runs each case once, however many planted backends wrap it."""

    def __init__(self, backend):
        self.backend, self.name, self.last = backend, backend.name, (None, None)

    def infer(self, feeds):
        if self.last[0] is not feeds:
            self.last = (feeds, self.backend.infer(feeds))
        return self.last[1]


def request_of(graph: Path) -> ExportRequest:
    return ExportRequest(**request_fields(graph_metadata(graph), str(graph)))


def pipeline_backend(request: ExportRequest, core) -> TorchModule:
    """The graph's own pipeline in torch, with its verification outputs, on the encoder core given."""
    selector = SelectorWithEmbeds(request.selector(verification=True), token_positions(request.spec))
    return TorchModule(FlashVLMPipeline(VisionEncoder(core), selector, verification=True), request.interface())


def swap_one_token(out):
    for row in out[INDICES]:
        dropped = np.setdiff1d(np.arange(QWEN.n_tokens), row)[0]
        row[-1] = dropped  # one kept token replaced by one dropped token
        row.sort()
    return out


def exchange_two_positions(out):
    out[POSITIONS][:, [0, 1]] = out[POSITIONS][:, [1, 0]]
    return out


def overflow_one_row(out):
    """An fp16 encoder that overflowed: one row of P(X) is inf (as Qwen2.5-VL's last MLP is known to do in fp16)."""
    out[PROJECTED_FEATURES][:, 3] = np.inf
    return out


class SaliencyFromBlockBefore(QwenEncoderCore):
    """The encoder with `a` read from the second-to-last block: a wrong exporter, its X and P(X) honest."""

    def attention(self, block, h, windowed):
        out, weights = super().attention(block, h, windowed)
        if block is self.blocks[-2]:
            self.earlier = weights
        return (out, self.earlier) if block is self.blocks[-1] else (out, weights)


@pytest.fixture(scope="module")
def planted(fused, parts):
    """Parity of the honest torch pipeline and of each planted fault, in one run (one reference for all)."""
    request = request_of(fused)
    honest = Remembered(pipeline_backend(request, QwenEncoderCore(parts.visual, QWEN.image_size)))
    wrong_block = pipeline_backend(request, SaliencyFromBlockBefore(parts.visual, QWEN.image_size))
    wrong_block.name = "saliency-from-block-before"
    swapped, exchanged = (
        Planted(honest, swap_one_token, "token-swapped"),
        Planted(honest, exchange_two_positions, "positions-exchanged"),
    )
    overflowed = Planted(honest, overflow_one_row, "overflowed")
    backends = [honest, swapped, exchanged, wrong_block, overflowed]
    reports = run_parity(fused, parts, repeats=1, backends=backends, **QUIET)
    return {report.backend: report for report in reports}


def test_the_honest_pipeline_passes(planted):
    report = planted["static-torch"]
    assert report and report.decisions_checked == 3, report.lines()  # 3 cases of one image


def test_one_kept_token_swapped_fails_layer_1(planted):
    report = planted["token-swapped"]
    assert not report and not report.decisions_passed and report.arithmetic_passed  # F, G honest: the decision is wrong
    assert any("decide other indices" in f for f in report.decision_failures)


def test_positions_of_two_kept_tokens_exchanged_fail_the_positions_check(planted):
    report = planted["positions-exchanged"]
    assert not report and report.arithmetic_passed
    assert report.decision_failures and all("positions are not the kept tokens' own" in f for f in report.decision_failures)
    assert len(report.decision_failures) == report.decisions_checked == 3  # every image, and nothing else


def test_a_non_finite_encoder_output_fails_at_any_precision(planted):
    report = planted["overflowed"]
    assert not report and any("projected_features holds non-finite values" in f for f in report.decision_failures)


def test_a_checkpoint_whose_last_vision_block_is_windowed_is_refused_in_one_line(parts):
    import copy

    from flashvlm_export.errors import UsageError
    from flashvlm_export.models.qwen2_5_vl import QwenEncoderCore

    visual = copy.deepcopy(parts.visual)
    visual.config.fullatt_block_indexes = [1]  # of 4 blocks: the last one (3) windowed
    with pytest.raises(UsageError, match="last block \\(3\\) is windowed"):
        QwenEncoderCore(visual, QWEN.image_size)


def test_saliency_from_the_wrong_block_fails_layer_2(planted):
    report = planted["saliency-from-block-before"]
    assert not report and report.decisions_passed  # its own F and G decide its indices: consistent, but wrong
    failed = [name for name, entry in report.tensors.items() if not entry.passed]
    assert failed == [CLS_ATTENTION], report.lines()


# ---------------------------------------------------------------- (d) bad input: one line, exit 2


def test_unknown_model_suggests_the_nearest_name(capsys):
    expect_one_line(capsys, ["--model", "qwen2.5-vl-tiy", "--random-weights"], "did you mean --model qwen2.5-vl-tiny")


@pytest.mark.parametrize(
    "model, size, fragments",
    [
        (QWEN.name, "450", ["--image-size 450 is not a multiple of 28", "use --image-size 448 or 476"]),
        (QWEN.name, "1736", ["N=3844", "TopK limit 3840", "--image-size 1708 or less"]),  # 62 x 62 tokens
        ("llava15", "448", ["--image-size 448", "336x336"]),
    ],
    ids=["not-a-multiple-of-28", "N-over-3840", "llava-other-than-336"],
)
def test_an_image_size_the_model_cannot_take_is_refused(tmp_path, capsys, model, size, fragments):
    argv = ["--model", model, "--random-weights", "--image-size", size, "--out-dir", str(tmp_path / "g")]
    expect_one_line(capsys, argv, *fragments)
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())


def test_the_suggested_largest_side_is_the_largest_accepted():
    from flashvlm_export.errors import UsageError
    from flashvlm_export.selector.static import TOPK_LIMIT

    assert QWEN.at_image_size(1708).n_tokens <= TOPK_LIMIT  # 61 x 61 tokens
    with pytest.raises(UsageError, match="1708 or less"):
        QWEN.at_image_size(1708 + 28)


def checkpoint_of(family_model: str, folder: Path) -> Path:
    """A checkpoint folder of `family_model`'s family: its config.json as transformers writes it, a safetensors file."""
    from flashvlm_export.models.registry import adapter

    spec = get_spec(family_model)
    adapter(spec).full_config(spec).to_json_file(str(folder / "config.json"))
    (folder / "model.safetensors").write_bytes(b"")  # never read: the family is refused first
    return folder


@pytest.mark.parametrize(
    "model, other, found",
    [
        (QWEN.name, "llava15-tiny", "'llava' model, not 'qwen2_5_vl'"),
        ("llava15-tiny", QWEN.name, "'qwen2_5_vl' model, not 'llava'"),
    ],
)
def test_a_checkpoint_of_the_other_family_is_refused(tmp_path, capsys, model, other, found):
    path = checkpoint_of(other, tmp_path)
    expect_one_line(capsys, ["--model", model, "--model-path", str(path), "--out-dir", str(tmp_path / "g")], found)


# ---------------------------------------------------------------- (e) the gate and text scope recorded


def recorded_config(graph: Path) -> dict:
    return json.loads(graph_metadata(graph)["selector_config"])


def test_the_gate_defaults_to_the_models_own_and_is_recorded(fused, tmp_path):
    assert recorded_config(fused)["gate"] == QWEN.gate == "norm" and recorded_config(fused)["text_scope"] == "all"
    llava = tmp_path / "llava.onnx"
    # K = 560 of N = 576: two pruning rounds, a fast export
    argv = ["--model", "llava15-tiny", "--selector-only", "--budget", "560", "--exporter", "torchscript", "--out", str(llava)]
    assert main(argv) == 0
    assert recorded_config(llava)["gate"] == get_spec("llava15-tiny").gate == "llava"


def test_gate_and_text_scope_flags_override_and_are_recorded(tmp_path):
    graph = tmp_path / "q.onnx"
    argv = ["--model", QWEN.name, "--selector-only", "--budget", "16", "--exporter", "torchscript", "--out", str(graph)]
    assert main([*argv, "--gate", "llava", "--text-scope", "before-image"]) == 0
    config = recorded_config(graph)
    assert config["gate"] == "llava" and config["text_scope"] == "before-image"


def test_text_scope_before_image_takes_the_ports_rows_and_all_takes_the_question_too():
    """The port's T is the prompt before the image (Qwen's template puts the question after it); ours adds the rest."""
    from flashvlm_export.models.prompt import prompt_token_ids, text_token_ids
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    question = "Which cup is yellow?"
    ids = prompt_token_ids(stand_in_tokenizer(QWEN), question, QWEN)
    image = ids.index(QWEN.image_token_index)
    port = text_token_ids(ids, QWEN.image_token_index, "before-image")
    ours = text_token_ids(ids, QWEN.image_token_index, "all")
    assert port == ids[:image] and QWEN.special_tokens["<|vision_start|>"] == port[-1]
    assert ours == ids[:image] + ids[image + 1 :]
    tokenizer = stand_in_tokenizer(QWEN)
    assert question not in tokenizer.decode(port) and question in tokenizer.decode(ours)


def test_the_two_text_scopes_score_the_patches_differently():
    """Same image, same question: S_ext (steps 2-7) differs between the scopes, so the heatmaps do."""
    import torch

    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.models.prompt import prompt_token_ids, text_inputs
    from flashvlm_export.models.weights import WeightsSource
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer
    from flashvlm_export.selector.config import SelectorConfig
    from flashvlm_export.selector.reference import text_relevance

    parts = get_parts(QWEN, WeightsSource(seed=0), with_embeddings=True)
    ids = prompt_token_ids(stand_in_tokenizer(QWEN), "Which cup is yellow?", QWEN)
    _, _, projected = parts.reference_features(
        torch.randn(1, 3, QWEN.image_size, QWEN.image_size, generator=torch.Generator().manual_seed(0))
    )
    relevance = {}
    for scope in ("all", "before-image"):
        embeds, mask = text_inputs(parts.embed_tokens, ids, QWEN.t_max, QWEN.image_token_index, scope=scope)
        relevance[scope] = text_relevance(projected[0], embeds[0][mask[0]], SelectorConfig(gate="norm"))
    assert not torch.allclose(relevance["all"], relevance["before-image"])


def test_an_image_side_too_large_to_trace_names_the_image_size_and_the_largest_that_fits(capsys, monkeypatch):
    """The working set grows with the side (the window mask and scores are S x S for S patches), not with T_max: the
    fix names --image-size. The machine's memory is pinned, so the bound is the same on every CI machine."""
    from flashvlm_export import limits

    monkeypatch.setattr(limits, "memory_bytes", lambda: 16 * 2**30)
    err = expect_one_line(
        capsys,
        ["--model", "qwen2.5-vl-7b", "--image-size", "1708", "--budget", "64", "--random-weights"],
        "--image-size 1708 needs",
    )
    side = int(err.split("use --image-size ")[1].split()[0])
    spec = get_spec("qwen2.5-vl-7b").at_image_size(side)
    assert side % 28 == 0 and limits.bytes_per_image(spec, spec.n_tokens, 0, False) <= 16 * 2**30
    bigger = get_spec("qwen2.5-vl-7b").at_image_size(side + 28)
    assert limits.bytes_per_image(bigger, bigger.n_tokens, 0, False) > 16 * 2**30  # the largest that fits


def test_run_builds_t_by_the_graphs_recorded_text_scope(out_dir, capsys):
    """A graph exported with --text-scope before-image: run feeds it the port's rows (the prompt up to the image)."""
    from flashvlm_export.models.prompt import prompt_token_ids, text_token_ids
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    graph = export(out_dir, "port_scope", "--exporter", "torchscript", "--text-scope", "before-image")
    question = "Which cup is yellow?"
    image = str(out_dir / "scope-demo.png")
    assert main(["run", "--graph", str(graph), "--demo-image", image, "--question", question]) == 0
    out = capsys.readouterr().out
    ids = prompt_token_ids(stand_in_tokenizer(QWEN), question, QWEN)
    rows = len(text_token_ids(ids, QWEN.image_token_index, "before-image"))
    assert f"{rows}/{QWEN.t_max} text rows, text scope before-image" in out, out
    assert rows < len(text_token_ids(ids, QWEN.image_token_index, "all"))


def test_a_models_selector_config_takes_its_gate_unless_told_otherwise():
    """What a Python caller builds for a model: its own default gate (the port's `norm` for Qwen2.5-VL)."""
    assert QWEN.selector_config().gate == "norm" and get_spec("llava15").selector_config().gate == "llava"
    assert QWEN.selector_config(gate="llava", top_p=0.01).gate == "llava"
    assert QWEN.selector_config(top_p=0.01).top_p == 0.01


def test_fused_graph_passes_parity_on_openvino(capsys, fused):
    """OpenVINO as a third arithmetic (issue 35): the Qwen2.5-VL graph's decisions and bounds hold there too."""
    openvino_parity_passes(capsys, "--graph", fused, "--random-weights")
