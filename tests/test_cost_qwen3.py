"""bench --cost-only for the Qwen3 generation: Qwen3-VL's declared head_dim, Qwen3.5's hybrid decoder (linear-attention
layers cost linearly and keep a fixed state, KV cache only for the full-attention layers), the Qwen3 vision towers.
The expected values come from transformers' own modules built on the meta device (no weights, no graph export)."""

import importlib
from dataclasses import replace

import pytest
import torch
from torch import nn

from flashvlm_export.bench import cost
from flashvlm_export.cli import main
from flashvlm_export.models.registry import get_spec

HYBRID = ("qwen3.5-0.8b", "qwen3.5-4b", "qwen3.5-9b")


def full_config(spec):
    """transformers' config for a spec, as its adapter builds it (models/qwen3_vl.py, models/qwen3_5.py)."""
    return importlib.import_module(f"flashvlm_export.models.{spec.family}").full_config(spec)


def text_config(name: str):
    return full_config(get_spec(name)).text_config


def weights(module: nn.Module, kind=nn.Linear) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, kind))


def check_hybrid(g, config, n: int = 256) -> None:
    """What a hybrid decoder's costs must satisfy; the layer counts are transformers' layer_types, not the geometry's."""
    full, linear = config.layer_types.count("full_attention"), config.layer_types.count("linear_attention")
    parts, doubled = cost.prefill_parts(g, n), cost.prefill_parts(g, 2 * n)
    assert parts["linear"] > 0 and doubled["linear"] == 2 * parts["linear"]  # linear in the prompt, exactly
    assert doubled["attention"] > 2 * parts["attention"]  # softmax attention: n^2
    assert parts["attention"] == full * cost.attention_layer_flops(g, n) and parts["linear"] == linear * cost.linear_layer_flops(
        g, n
    )
    assert cost.kv_cache_mib(g, n) == 2 * full * n * config.num_key_value_heads * config.head_dim * 2 / 2**20


@pytest.mark.parametrize("name", HYBRID)
def test_linear_attention_layers_cost_linearly_and_only_full_attention_holds_a_kv_cache(name):
    g = get_spec(name).decoder
    check_hybrid(g, text_config(name))
    assert cost.linear_layer_flops(g, 1000) == 1000 * cost.linear_layer_flops(g, 1)


def test_planted_faults_counting_linear_layers_as_attention_are_caught(monkeypatch):
    spec = get_spec("qwen3.5-4b")
    config = text_config(spec.name)
    with pytest.raises(AssertionError):  # the geometry declares no linear layers: all 32 counted as attention
        check_hybrid(replace(spec.decoder, linear_layers=0), config)
    monkeypatch.setattr(cost, "linear_layer_flops", cost.attention_layer_flops)  # the code costs them as attention
    with pytest.raises(AssertionError):
        check_hybrid(spec.decoder, config)


def test_qwen35_4b_kv_cache_is_8_of_32_layers_and_its_state_is_fixed():
    model = next(m for m in cost.MODELS if m.decoder is get_spec("qwen3.5-4b").decoder)  # the zoo's, not a copy
    g = model.decoder
    assert (g.layers, g.linear_layers, g.attention_layers) == (32, 24, 8)
    assert cost.kv_cache_mib(g, 1) * 2**20 == 2 * 8 * 4 * 256 * 2  # 32 KiB per token: K and V of 8 layers, 4 x 256
    conv, recurrent = cost.linear_state_mib(g)
    assert recurrent * 2**20 == 24 * 32 * 128 * 128 * 4 and conv * 2**20 == 24 * (2 * 16 * 128 + 32 * 128) * 4 * 2
    text = cost.linear_attention_text()
    assert "Qwen3.5-4B: 24 of 32 layers are linear attention (Gated DeltaNet): their cost grows linearly" in text
    assert f"their state is fixed ({conv + recurrent:.1f} MiB" in text and "counts the 8 full-attention layers only" in text
    assert "Qwen3-VL" not in text  # Qwen3-VL's decoder is all softmax attention


@pytest.mark.parametrize("name", HYBRID)
def test_qwen35_layer_flops_match_transformers_own_layers(name):
    """2 x weights x tokens for every matmul of transformers' Qwen3_5DecoderLayer of each type, built on meta: the
    Gated DeltaNet's in_proj_qkv/z/b/a and out_proj, the full attention's gated q_proj (2x wide), the MLP."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer

    g, config, n = get_spec(name).decoder, text_config(name), 300
    linear_index, full_index = config.layer_types.index("linear_attention"), config.layer_types.index("full_attention")
    with torch.device("meta"):
        linear, full = Qwen3_5DecoderLayer(config, linear_index), Qwen3_5DecoderLayer(config, full_index)
    delta = linear.linear_attn
    assert cost.linear_projection_flops(g, n) == 2 * weights(delta) * n
    assert cost.mlp_flops(g, n) == 2 * weights(linear.mlp) * n == 2 * weights(full.mlp) * n
    state = delta.num_v_heads * 7 * delta.head_k_dim * delta.head_v_dim  # the recurrent rule's count, per token
    assert cost.delta_rule_flops(g, n) == (2 * weights(delta, nn.Conv1d) + state) * n  # conv: kernel x channels
    assert cost.attention_projection_flops(g, n) == 2 * weights(full.self_attn) * n
    assert full.self_attn.q_proj.out_features == 2 * config.num_attention_heads * config.head_dim  # the output gate
    scores = 2 * 2 * n * n * config.num_attention_heads * config.head_dim
    assert cost.attention_layer_flops(g, n) == 2 * weights(full) * n + scores


@pytest.mark.parametrize("name", ["qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b"])
def test_qwen3_vl_counts_its_declared_head_dim(name):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextDecoderLayer

    g, config, n = get_spec(name).decoder, text_config(name), 300
    assert g.head_dim == config.head_dim == 128 and g.linear_layers == 0
    with torch.device("meta"):
        layer = Qwen3VLTextDecoderLayer(config, 0)
    scores = 2 * 2 * n * n * g.heads * 128
    assert cost.attention_layer_flops(g, n) == 2 * weights(layer) * n + scores
    assert cost.kv_cache_mib(g, 1) * 2**20 == 2 * g.layers * g.kv_heads * 128 * 2
    assert cost.prefill_flops(g, n) == g.layers * cost.attention_layer_flops(g, n) + 2 * g.hidden * g.vocab


def test_qwen3_vl_4b_head_dim_is_not_hidden_over_heads():
    g = get_spec("qwen3-vl-4b").decoder
    assert g.hidden // g.heads == 80 and g.heads * g.head_dim == 4096  # 32 x 128 against a hidden size of 2560
    assert cost.attention_projection_flops(g, 1) == 2 * 2560 * (4096 + 2 * 8 * 128 + 4096)


@pytest.mark.parametrize("name", ["qwen3-vl-4b", "qwen3-vl-8b", "qwen3.5-0.8b", "qwen3.5-9b"])
def test_qwen3_encoder_flops_match_transformers_tower(name):
    """Every block's matmuls over 4N = 1,024 patches, full attention in each (no windows), and Qwen3-VL's DeepStack
    mergers over the N merged tokens; the patch embedding and the main merger (the projector) are not counted."""
    spec = get_spec(name)
    if spec.family == "qwen3_vl":
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel as Tower
    else:
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel as Tower
    with torch.device("meta"):
        tower = Tower(full_config(spec).vision_config)
    model = next(m for m in cost.MODELS if m.decoder is spec.decoder)
    e, n = model.encoder, 4 * spec.n_tokens
    assert e.tokens == n == 1024 and e.window is None and model.full_tokens == 256
    blocks = sum(weights(b) for b in tower.blocks)
    deepstack = sum(weights(m) for m in getattr(tower, "deepstack_merger_list", ()))
    assert (deepstack > 0) == (spec.family == "qwen3_vl") and e.mergers == spec.deepstack_layers
    attention = len(tower.blocks) * 2 * 2 * n * n * e.hidden
    assert cost.encoder_flops(e) == 2 * n * blocks + attention + 2 * spec.n_tokens * deepstack


def test_cost_only_prints_the_qwen3_generation(capsys):
    assert main(["bench", "--cost-only"]) == 0
    out = capsys.readouterr().out
    for name in (
        "Qwen3-VL-2B-Instruct",
        "Qwen3-VL-4B-Instruct",
        "Qwen3-VL-8B-Instruct",
        "Qwen3.5-0.8B",
        "Qwen3.5-4B",
        "Qwen3.5-9B",
    ):
        assert f"| {name} | 256 |" in out and f"| {name} | 64 |" in out
    assert "Qwen3.5-4B: 24 of 32 layers are linear attention" in out
    assert out.index("Qwen3.5-0.8B: 18 of 24 layers") < out.index("Differences from the paper")
