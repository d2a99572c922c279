"""Cost calculator: LLM prefill FLOPs and KV-cache size per visual-token budget, from model geometry.

Counted: every matmul of the decoder's prefill over the visual tokens (2 FLOPs per multiply-add), for all layers,
and the LM head for the last token only. A full-attention layer: the q/k/v/o projections at the declared head_dim
(heads x head_dim wide, which need not be the hidden size: Qwen3-4B's 32 x 128 = 4096 against 2560; q twice as
wide with Qwen3.5's output gate), the SwiGLU MLP, and attention (QK^T and AV over the full n x n square, as dense
FlashAttention-free kernels compute it). Qwen3's per-head q/k RMSNorms and every elementwise op are not counted.
A linear-attention layer (Qwen3.5's Gated DeltaNet, transformers' Qwen3_5GatedDeltaNet) costs linearly in n:
its projections (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj), its depthwise causal convolution (2 x
kernel FLOPs per channel per token, over the q, k and v channels), the gated delta rule at 7 x dk x dv FLOPs per
token per value head, counted on its recurrent form (torch_recurrent_gated_delta_rule: decay the state, dk x dv;
kv_mem = k^T S, the rank-one update S += k delta^T and the readout q^T S, 2 x dk x dv each; the chunked form that
prefill runs regroups the same recurrence in 64-token chunks and adds intra-chunk work, still linear in n), and the
same SwiGLU MLP. The vision encoder's FLOPs are a fixed cost that pruning does not change; they are shown apart: its
transformer blocks' matmuls (projections, MLP with 2 matrices for CLIP and Qwen3's tower or 3 for Qwen2.5-VL's
SwiGLU, attention over all tokens or, in Qwen2.5-VL's windowed blocks, over each token's window) and Qwen3-VL's
DeepStack mergers, not the patch embedding or the projector (the main merger). KV cache: 2 (K, V) x full-attention
layers x n x kv_heads x head_dim x 2 bytes (fp16), in MiB; a linear-attention layer holds a fixed state instead
(linear_state_mib). Every geometry is read from the model specs (models/zoo/), never re-typed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flashvlm_export.models.spec import DecoderGeometry, ModelSpec
from flashvlm_export.models.zoo.llava15 import LLAMA2_7B, LLAVA15
from flashvlm_export.models.zoo.llava_next import LLAVA_NEXT_VICUNA_7B
from flashvlm_export.models.zoo.qwen2_5_vl import QWEN25_VL_3B, QWEN25_VL_7B
from flashvlm_export.models.zoo.qwen3_5 import QWEN35_0_8B, QWEN35_4B, QWEN35_9B
from flashvlm_export.models.zoo.qwen3_vl import QWEN3_VL_2B, QWEN3_VL_4B, QWEN3_VL_8B

MIB = 1 << 20


@dataclass(frozen=True)
class EncoderGeometry:
    name: str
    layers: int
    hidden: int
    intermediate: int
    tokens: int  # per crop, CLS included (where the tower has one)
    crops: int
    mlp_matrices: int = 2  # CLIP's fc1, fc2; a SwiGLU MLP has 3 (gate, up, down)
    window: int | None = None  # tokens each token attends to in the windowed blocks; None: every block attends to all
    full_attention_layers: int | None = None  # blocks that attend over all tokens when windowed (the rest: windows)
    merge: int = 1  # patches per side of a merged token (the mergers run on tokens / merge^2 rows)
    mergers: int = 0  # merger MLPs counted beside the blocks: Qwen3-VL's DeepStack ones (the main merger is the projector)
    merger_out: int = 0  # their output width (the LLM's hidden size)


VICUNA_7B = LLAMA2_7B
CLIP_L336 = EncoderGeometry(
    "CLIP ViT-L/14-336",
    LLAVA15.vision["num_hidden_layers"],
    LLAVA15.vision_hidden,
    LLAVA15.vision["intermediate_size"],
    LLAVA15.n_tokens + 1,  # CLS
    1,
)


def windowed_encoder(spec: ModelSpec) -> EncoderGeometry:
    """Qwen2.5-VL's vision tower at the spec's declared side: blocks on merge x merge patches per visual token,
    window attention (window_size px squared) except in the full-attention blocks, a SwiGLU MLP."""
    v = spec.vision
    return EncoderGeometry(
        f"Qwen2.5-VL ViT ({v['depth']} blocks, {v['hidden_size']} wide)",
        v["depth"],
        v["hidden_size"],
        v["intermediate_size"],
        spec.n_tokens * spec.merge**2,  # patches: no CLS
        1,
        mlp_matrices=3,
        window=(v["window_size"] // spec.patch_size) ** 2,
        full_attention_layers=len(v["fullatt_block_indexes"]),
    )


def full_attention_encoder(spec: ModelSpec) -> EncoderGeometry:
    """The Qwen3 generation's vision tower at the spec's side: blocks on merge x merge patches (16 px) per visual token,
    every block attending over the whole image (no windows), a two-matrix MLP (linear_fc1, linear_fc2), and for
    Qwen3-VL its DeepStack mergers (each merge^2 x hidden -> the same -> the LLM's width, on the merged tokens)."""
    v = spec.vision
    deepstack = spec.deepstack_layers
    return EncoderGeometry(
        f"Qwen3 ViT ({v['depth']} blocks, {v['hidden_size']} wide" + (f", {deepstack} DeepStack mergers)" if deepstack else ")"),
        v["depth"],
        v["hidden_size"],
        v["intermediate_size"],
        spec.n_tokens * spec.merge**2,  # patches: no CLS
        1,
        merge=spec.merge,
        mergers=deepstack,
        merger_out=v["out_hidden_size"],
    )


def encoder_geometry(spec: ModelSpec) -> EncoderGeometry:
    """A Qwen spec's vision tower: Qwen2.5-VL's windowed one, or the Qwen3 generation's full-attention one."""
    return windowed_encoder(spec) if spec.family == "qwen2_5_vl" else full_attention_encoder(spec)


@dataclass(frozen=True)
class VlmCost:
    name: str
    decoder: DecoderGeometry
    encoder: EncoderGeometry
    full_tokens: int
    budgets: tuple[int, ...]
    paper: dict[int, tuple[float, float]] | None = None  # tokens -> (TFLOPs, KV MB) as published


LLAVA15_7B = VlmCost("LLaVA-1.5-7B", VICUNA_7B, CLIP_L336, LLAVA15.n_tokens, (192, 128, 64, 32))
_NEXT = LLAVA_NEXT_VICUNA_7B  # llava-next-vicuna-7b at its default 2x2 grid: 5 crops, N = 2880
LLAVA_NEXT_7B = VlmCost(
    "LLaVA-NeXT-7B",
    _NEXT.decoder,
    EncoderGeometry(
        f"CLIP ViT-L/14-336 x {_NEXT.crops} crops",
        _NEXT.vision["num_hidden_layers"],
        _NEXT.vision_hidden,
        _NEXT.vision["intermediate_size"],
        _NEXT.crop_tokens + 1,  # CLS
        _NEXT.crops,
    ),
    _NEXT.n_tokens,
    (640, 320, 160),
    paper={2880: (43.6, 1440.0), 640: (11.3, 356.0), 160: (3.6, 78.0)},  # FlashVLM paper, Table 4
)


def qwen_cost(spec: ModelSpec) -> VlmCost:
    """A Qwen checkpoint's costs at its declared side (N = 256: 448 px for Qwen2.5-VL, 512 px for Qwen3-VL and
    Qwen3.5), from its spec."""
    return VlmCost(spec.hf_repo.split("/")[-1], spec.decoder, encoder_geometry(spec), spec.n_tokens, (192, 128, 64, 32))


QWEN25_VL_3B_COST = qwen_cost(QWEN25_VL_3B)
QWEN25_VL_7B_COST = qwen_cost(QWEN25_VL_7B)
QWEN3_MODELS = tuple(qwen_cost(s) for s in (QWEN3_VL_2B, QWEN3_VL_4B, QWEN3_VL_8B, QWEN35_0_8B, QWEN35_4B, QWEN35_9B))
MODELS = (LLAVA15_7B, LLAVA_NEXT_7B, QWEN25_VL_3B_COST, QWEN25_VL_7B_COST, *QWEN3_MODELS)  # what --cost-only prints

VIDEO_BUDGETS = (256, 128)
VIDEO_FRAMES = (8, 32)  # at the declared side (448 px): F / 2 temporal groups of N tokens: 1,024 and 4,096 tokens


def qwen_video_cost(spec: ModelSpec, frames: int, budgets: tuple[int, ...] = VIDEO_BUDGETS) -> VlmCost:
    """A Qwen2.5-VL clip of `frames` frames: F / 2 temporal groups of N tokens each. The tower attends within a
    group (its cu_seqlens are per temporal group, full-attention blocks included), so its cost is one image's per
    group: `crops` = groups."""
    groups = frames // spec.temporal_patch
    image = encoder_geometry(spec)
    encoder = replace(image, name=f"{image.name} x {groups} frame groups", crops=groups)
    return VlmCost(f"{qwen_cost(spec).name}, {frames} frames", spec.decoder, encoder, groups * spec.n_tokens, budgets)


VIDEO_MODELS = tuple(qwen_video_cost(QWEN25_VL_7B, f) for f in VIDEO_FRAMES)  # --cost-only's video block


def mlp_flops(g: DecoderGeometry, tokens: int) -> float:
    return 2 * tokens * 3 * g.hidden * g.intermediate  # SwiGLU: gate, up, down


def attention_projection_flops(g: DecoderGeometry, tokens: int) -> float:
    """q (twice as wide with an output gate), k, v: d -> heads x head_dim, 2 x kv_heads x head_dim; o: back to d."""
    q, kv = g.heads * g.head_dim, g.kv_heads * g.head_dim
    return 2 * tokens * g.hidden * (q * (2 if g.attention_output_gate else 1) + 2 * kv + q)


def attention_layer_flops(g: DecoderGeometry, tokens: int) -> float:
    """One full-attention layer: its projections, QK^T and AV over the n x n square, the MLP."""
    scores = 2 * 2 * tokens * tokens * g.heads * g.head_dim  # QK^T and AV
    return attention_projection_flops(g, tokens) + scores + mlp_flops(g, tokens)


def conv_channels(g: DecoderGeometry) -> int:
    """Gated DeltaNet's q, k and v channels (its conv_dim): 2 x key heads x dk + value heads x dv."""
    return (2 * g.linear_key_heads + g.linear_value_heads) * g.linear_head_dim


def linear_projection_flops(g: DecoderGeometry, tokens: int) -> float:
    """Gated DeltaNet's matmuls: in_proj_qkv (d -> q, k, v channels), in_proj_z (d -> value_dim), in_proj_b and
    in_proj_a (d -> one per value head), out_proj (value_dim -> d)."""
    value_dim = g.linear_value_heads * g.linear_head_dim
    qkv, z, b_and_a, out = conv_channels(g), value_dim, 2 * g.linear_value_heads, value_dim
    return 2 * tokens * g.hidden * (qkv + z + b_and_a + out)


def delta_rule_flops(g: DecoderGeometry, tokens: int) -> float:
    """The depthwise causal convolution over the q, k, v channels (2 x kernel per channel per token) and the gated
    delta rule on a dk x dv state per value head: 7 x dk x dv per token (decay dk x dv; k^T S, S += k delta^T and the
    readout q^T S, 2 x dk x dv each: torch_recurrent_gated_delta_rule in transformers' modeling_qwen3_5.py)."""
    conv = 2 * tokens * conv_channels(g) * g.linear_conv_kernel
    return conv + tokens * g.linear_value_heads * 7 * g.linear_head_dim * g.linear_head_dim


def linear_layer_flops(g: DecoderGeometry, tokens: int) -> float:
    """One linear-attention (Gated DeltaNet) layer: every term is proportional to the tokens."""
    return linear_projection_flops(g, tokens) + delta_rule_flops(g, tokens) + mlp_flops(g, tokens)


def prefill_parts(g: DecoderGeometry, tokens: int) -> dict[str, float]:
    """The prefill's FLOPs by kind: the full-attention layers, the linear-attention layers, the LM head (last token)."""
    return {
        "attention": g.attention_layers * attention_layer_flops(g, tokens),
        "linear": g.linear_layers * linear_layer_flops(g, tokens) if g.linear_layers else 0.0,
        "head": 2 * g.hidden * g.vocab,
    }


def prefill_flops(g: DecoderGeometry, tokens: int) -> float:
    return sum(prefill_parts(g, tokens).values())


def encoder_flops(e: EncoderGeometry) -> float:
    d, m, n = e.hidden, e.intermediate, e.tokens
    dense = 2 * n * 4 * d * d + 2 * n * e.mlp_matrices * d * m  # q, k, v, o; the MLP
    full = e.layers if e.window is None else e.full_attention_layers
    attention = full * 2 * 2 * n * n * d + (e.layers - full) * 2 * 2 * n * (e.window or 0) * d  # QK^T and AV
    wide = d * e.merge**2  # a merger's input: merge x merge patches concatenated
    mergers = e.mergers * 2 * (n // e.merge**2) * (wide * wide + wide * e.merger_out)  # linear_fc1, linear_fc2
    return e.crops * (e.layers * dense + attention + mergers)


def kv_cache_mib(g: DecoderGeometry, tokens: int, bytes_per_value: int = 2) -> float:
    """K and V of the full-attention layers only: a linear-attention layer keeps no per-token cache."""
    return 2 * g.attention_layers * tokens * g.kv_heads * g.head_dim * bytes_per_value / MIB


def linear_state_mib(g: DecoderGeometry, conv_bytes: int = 2, state_bytes: int = 4) -> tuple[float, float]:
    """The fixed state of the linear-attention layers, whatever the prompt's length, in MiB: (conv, recurrent). Per
    layer transformers keeps the last `kernel` q/k/v channel columns in the model's 16-bit dtype (cache_utils.py
    LinearAttentionLayer) and one dk x dv matrix per value head, computed and kept in float32 (the checkpoints'
    mamba_ssm_dtype)."""
    conv = g.linear_layers * conv_channels(g) * g.linear_conv_kernel * conv_bytes
    recurrent = g.linear_layers * g.linear_value_heads * g.linear_head_dim**2 * state_bytes
    return conv / MIB, recurrent / MIB


def linear_attention_text(models=MODELS) -> str:
    """One line per hybrid decoder: how many layers are linear attention, that they cost linearly, their fixed state."""
    lines = []
    for model in models:
        g, n = model.decoder, model.full_tokens
        if not g.linear_layers:
            continue
        conv, recurrent = linear_state_mib(g)
        parts = prefill_parts(g, n)
        lines.append(
            f"{model.name}: {g.linear_layers} of {g.layers} layers are linear attention (Gated DeltaNet): their cost "
            f"grows linearly with the prompt ({parts['linear'] / 1e12:.2f} of the {prefill_flops(g, n) / 1e12:.2f} "
            f"TFLOPs at {n} tokens), their state is fixed ({conv + recurrent:.1f} MiB: recurrent {recurrent:.1f} in "
            f"fp32, conv {conv:.1f} in 16-bit) at any prompt length; the KV cache column counts the "
            f"{g.attention_layers} full-attention layers only."
        )
    return "\n".join(lines)


def cost_rows(model: VlmCost) -> list[dict]:
    rows = []
    full = prefill_flops(model.decoder, model.full_tokens)
    for tokens in (model.full_tokens, *model.budgets):
        flops = prefill_flops(model.decoder, tokens)
        row = {
            "model": model.name,
            "tokens": tokens,
            "prefill_tflops": flops / 1e12,
            "prefill_vs_full": flops / full,
            "kv_cache_mib": kv_cache_mib(model.decoder, tokens),
            "encoder_tflops": encoder_flops(model.encoder) / 1e12,
        }
        if model.paper and tokens in model.paper:
            row["paper_tflops"], row["paper_kv_mb"] = model.paper[tokens]
        rows.append(row)
    return rows


def cost_markdown(models=MODELS) -> str:
    lines = [
        "| model | visual tokens | LLM prefill TFLOPs | vs full | KV cache MiB (fp16) | paper TFLOPs | paper KV MB | encoder TFLOPs (fixed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for r in cost_rows(model):
            paper_f = f"{r['paper_tflops']:.1f}" if "paper_tflops" in r else ""
            paper_kv = f"{r['paper_kv_mb']:.0f}" if "paper_kv_mb" in r else ""
            kv = f"{r['kv_cache_mib']:.1f}" if r["kv_cache_mib"] < 10 else f"{r['kv_cache_mib']:.0f}"  # GQA: a few MiB
            lines.append(
                f"| {r['model']} | {r['tokens']} | {r['prefill_tflops']:.2f} | {r['prefill_vs_full']:.3f} | "
                f"{kv} | {paper_f} | {paper_kv} | {r['encoder_tflops']:.2f} |"
            )
    return "\n".join(lines)


def differences_text(model: VlmCost = LLAVA_NEXT_7B) -> str:
    """Where and why the computed costs differ from the published ones, with the numbers computed."""
    if not model.paper:
        return ""
    g = model.decoder
    per_token = kv_cache_mib(g, 1)
    tokens = sorted(model.paper, reverse=True)
    ours = {n: prefill_flops(g, n) / 1e12 for n in tokens}
    kv_lines = ", ".join(f"{model.paper[n][1]:.0f} MB at {n} (0.5 MiB x {n} = {kv_cache_mib(g, n):.0f})" for n in tokens)
    flop_lines = "; ".join(f"{ours[n]:.1f} T here vs {model.paper[n][0]:.1f} T at {n}" for n in tokens)
    marginal = [(model.paper[a][0] - model.paper[b][0]) * 1e3 / (a - b) for a, b in zip(tokens, tokens[1:], strict=False)]
    ours_marginal = [(ours[a] - ours[b]) * 1e3 / (a - b) for a, b in zip(tokens, tokens[1:], strict=False)]
    return (
        f"Differences from the paper's Table 4 ({model.name}):\n"
        f"- KV cache: geometry gives {per_token:.2f} MiB per token ({2}x{g.layers} layers x {g.kv_heads * g.head_dim} x 2 bytes). "
        f"Published: {kv_lines}, i.e. {', '.join(f'{(model.paper[n][1] - kv_cache_mib(g, n)) / per_token:+.0f}' for n in tokens)} "
        "tokens beyond the budget: measured values (prompt tokens, allocator effects) that differ per budget.\n"
        f"- FLOPs: {flop_lines}. The published marginal cost per visual token is "
        f"{' then '.join(f'{m:.1f}' for m in marginal)} GFLOPs (between the budgets, high to low), where the "
        f"geometry gives {' then '.join(f'{m:.1f}' for m in ours_marginal)} (attention makes it grow with n), so no "
        "a*n + b*n^2 model fits the published values: they include costs that do not scale with the visual "
        f"tokens (the prompt's text tokens, and plausibly part of the {encoder_flops(model.encoder) / 1e12:.1f} T vision "
        "encoder). This table counts the decoder's prefill over the visual tokens alone, which is what the budget "
        "buys; the encoder column is the fixed part."
    )
