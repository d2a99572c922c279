"""Benchmarks: the cost calculator's arithmetic, the report, and a reduced smoke run (no timing targets)."""

import pytest

from flashvlm_export.bench import cost, report, suite
from flashvlm_export.bench import run as bench_run
from flashvlm_export.bench.timing import measure
from flashvlm_export.cli import main


def test_kv_cache_is_half_a_mebibyte_per_token_and_reproduces_the_published_full_size():
    g = cost.VICUNA_7B
    assert cost.kv_cache_mib(g, 1) == 2 * g.layers * g.hidden * 2 / 2**20
    full = cost.LLAVA_NEXT_7B.full_tokens
    assert cost.kv_cache_mib(g, full) == cost.LLAVA_NEXT_7B.paper[full][1]  # 2880 tokens: the paper's figure


def test_prefill_flops_grow_superlinearly_and_pruning_scales_them_down():
    g = cost.VICUNA_7B
    assert cost.prefill_flops(g, 2000) > 2 * cost.prefill_flops(g, 1000) - 2 * 2 * g.hidden * g.vocab  # attention is n^2
    rows = cost.cost_rows(cost.LLAVA15_7B)
    ratios = [r["prefill_vs_full"] for r in rows]
    assert ratios[0] == 1.0 and all(a > b for a, b in zip(ratios, ratios[1:], strict=False))
    for r in rows[1:]:  # below N, the ratio is at most the token ratio: the attention term shrinks quadratically
        assert r["prefill_vs_full"] <= r["tokens"] / 576 + 1e-9


def test_differences_text_states_both_published_and_computed_values():
    text = cost.differences_text()
    for tokens, (tflops, kv) in cost.LLAVA_NEXT_7B.paper.items():
        assert f"{tflops:.1f} T at {tokens}" in text and f"{kv:.0f} MB at {tokens}" in text


def test_measure_reports_ordered_percentiles():
    t = measure("noop", lambda: sum(range(1000)), warmup=1, repeats=15)
    assert t.p10_ms <= t.median_ms <= t.p90_ms and t.repeats == 15


def test_cost_only_command_prints_the_calculator(capsys):
    assert main(["bench", "--cost-only"]) == 0
    out = capsys.readouterr().out
    assert "LLaVA-NeXT-7B | 2880" in out and "Differences from the paper" in out


def test_reduced_bench_runs_every_cpu_backend_on_the_same_inputs(monkeypatch, tmp_path, selector_graphs):
    monkeypatch.setattr(suite, "SELECTOR_GRID", ((576, (64,)),))
    monkeypatch.setattr(suite, "FULL_GRAPH_BUDGET", 64)
    # the session's llava15 selector graph at K = 64 (the same request, exported once per run with TorchScript) in place
    # of the bench's own dynamo export: what is tested is the timing of every backend on the same inputs
    monkeypatch.setattr(suite, "export_graph", lambda request, path, exporter: selector_graphs[request.budget])
    core = suite.selector_core(suite.BenchSettings(repeats=2, warmup=1, gpu=False), log=lambda _: None)
    rows = core.rows
    assert [r["name"] for r in rows] == ["eager reference", "static torch (CPU)", suite.ONNXRUNTIME_CPU]
    assert core.full_graph_point_ms == rows[2]["median_ms"]  # the full graph's share is taken from this row
    results = {"machine": suite.machine(), "settings": {"text_len": 60}, "command": "test", "rows": rows}
    json_path, md_path = report.save(results, tmp_path)
    assert json_path.is_file() and "| 576 | 64 |" in md_path.read_text()


@pytest.mark.parametrize("argv", [["bench", "--repeats", "0"], ["bench", "--repeats", "100000"], ["bench", "--text-len", "500"]])
def test_bad_bench_settings_are_one_line_errors(capsys, argv):
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bench_refuses_an_unwritable_out_dir_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    assert main(["bench", "--out-dir", str(blocker / "results")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot create output directory" in err
    assert blocker.read_text() == "mine"


def test_bench_estimate_names_each_section():
    text = bench_run.estimate_text(suite.BenchSettings())
    assert text.startswith("about ") and "export" in text and "selector" in text and "full_graph" in text


def test_llama_geometry_has_one_home():
    from flashvlm_export.models.zoo.llava15 import LLAMA2_7B, LLAVA15

    assert cost.VICUNA_7B is LLAMA2_7B and LLAVA15.text_hidden == LLAMA2_7B.hidden
    assert LLAVA15.text["num_hidden_layers"] == LLAMA2_7B.layers and cost.CLIP_L336.tokens == LLAVA15.n_tokens + 1


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_qwen_geometries_are_read_from_their_specs(name):
    from flashvlm_export.models.registry import get_spec

    spec = get_spec(name)
    model = next(m for m in cost.MODELS if m.decoder is spec.decoder)  # the zoo's DecoderGeometry itself, not a copy
    e = model.encoder
    assert model.full_tokens == spec.n_tokens == 256 and e.tokens == spec.merge**2 * spec.n_tokens == 1024  # 4N patches
    assert (e.layers, e.hidden, e.intermediate) == (
        spec.vision["depth"],
        spec.vision["hidden_size"],
        spec.vision["intermediate_size"],
    )
    assert e.full_attention_layers == len(spec.vision["fullatt_block_indexes"]) and e.window == 8 * 8  # 112 px of 14 px patches


def test_qwen_encoder_flops_follow_the_windowed_formula():
    e = cost.QWEN25_VL_7B_COST.encoder
    n, d, m, w = e.tokens, e.hidden, e.intermediate, e.window
    dense = 2 * n * 4 * d * d + 2 * n * 3 * d * m  # q, k, v, o and the SwiGLU's gate, up, down
    full, windowed = 2 * 2 * n * n * d, 2 * 2 * n * w * d  # QK^T and AV over all tokens / over the token's window
    expected = e.layers * dense + e.full_attention_layers * full + (e.layers - e.full_attention_layers) * windowed
    assert cost.encoder_flops(e) == expected
    from dataclasses import replace

    assert cost.encoder_flops(replace(e, window=None)) == e.layers * (dense + full)  # no windows: every block full
    c = cost.CLIP_L336  # unchanged: two MLP matrices, full attention in every layer
    n, d, m = c.tokens, c.hidden, c.intermediate
    assert cost.encoder_flops(c) == c.layers * (2 * n * 4 * d * d + 2 * n * 2 * d * m + 2 * 2 * n * n * d)


def test_qwen_kv_cache_counts_grouped_query_heads():
    for model in (cost.QWEN25_VL_3B_COST, cost.QWEN25_VL_7B_COST):
        g = model.decoder
        assert cost.kv_cache_mib(g, 1) == 2 * g.layers * g.kv_heads * g.head_dim * 2 / 2**20
        assert cost.kv_cache_mib(g, 1) < 2 * g.layers * g.hidden * 2 / 2**20 / 4  # GQA: several query heads per KV head
        rows = cost.cost_rows(model)
        assert [r["tokens"] for r in rows] == [256, 192, 128, 64, 32]
        for r in rows[1:]:
            assert r["prefill_vs_full"] <= r["tokens"] / 256 + 1e-9


def test_cost_only_prints_both_qwen_models(capsys):
    assert main(["bench", "--cost-only"]) == 0
    out = capsys.readouterr().out
    assert "| Qwen2.5-VL-3B-Instruct | 256 |" in out and "| Qwen2.5-VL-7B-Instruct | 64 |" in out


def test_video_rows_cost_1024_and_4096_tokens_against_256_and_128():
    image = cost.QWEN25_VL_7B_COST
    for model, frames in zip(cost.VIDEO_MODELS, (8, 32), strict=True):
        groups = frames // 2
        rows = cost.cost_rows(model)
        assert [r["tokens"] for r in rows] == [groups * 256, 256, 128]
        assert model.decoder is image.decoder
        assert cost.encoder_flops(model.encoder) == groups * cost.encoder_flops(image.encoder)  # per-group attention
        assert rows[1]["kv_cache_mib"] == cost.kv_cache_mib(image.decoder, 256)
        assert rows[0]["prefill_tflops"] > groups * rows[1]["prefill_tflops"]  # attention: more than linear in n


def test_cost_only_prints_the_video_block_after_the_image_table(capsys):
    assert main(["bench", "--cost-only"]) == 0
    out = capsys.readouterr().out
    assert out.index("Differences from the paper") < out.index("Video (Qwen2.5-VL-7B")
    assert "| Qwen2.5-VL-7B-Instruct, 8 frames | 1024 |" in out and "| Qwen2.5-VL-7B-Instruct, 32 frames | 128 |" in out
