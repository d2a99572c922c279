"""Cost calculator: LLM prefill FLOPs and KV-cache size per visual-token budget, from model geometry.

Counted: every matmul of the decoder's prefill over the visual tokens (2 FLOPs per multiply-add):
q/k/v/o projections, the SwiGLU MLP, and attention (QK^T and AV over the full n x n square, as
dense FlashAttention-free kernels compute it), for all layers; the LM head for the last token
only. The vision encoder's FLOPs are a fixed cost that pruning does not change; they are shown
apart: its transformer blocks' matmuls (projections, MLP with 2 matrices for CLIP or 3 for Qwen's
SwiGLU, attention over all tokens or, in Qwen2.5-VL's windowed blocks, over each token's window),
not the patch embedding or the projector. KV cache: 2 (K, V) x layers x n x kv_heads x head_dim x
2 bytes (fp16), in MiB. Every geometry is read from the model specs (models/zoo/), never re-typed.
"""

from __future__ import annotations

from dataclasses import dataclass

from flashvlm_export.models.spec import DecoderGeometry, ModelSpec
from flashvlm_export.models.zoo.llava15 import LLAMA2_7B, LLAVA15
from flashvlm_export.models.zoo.llava_next import LLAVA_NEXT_VICUNA_7B
from flashvlm_export.models.zoo.qwen2_5_vl import QWEN25_VL_3B, QWEN25_VL_7B

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
    """A Qwen2.5-VL checkpoint's costs at its declared side (N = 256 at 448 px), from its spec."""
    return VlmCost(spec.hf_repo.split("/")[-1], spec.decoder, windowed_encoder(spec), spec.n_tokens, (192, 128, 64, 32))


QWEN25_VL_3B_COST = qwen_cost(QWEN25_VL_3B)
QWEN25_VL_7B_COST = qwen_cost(QWEN25_VL_7B)
MODELS = (LLAVA15_7B, LLAVA_NEXT_7B, QWEN25_VL_3B_COST, QWEN25_VL_7B_COST)  # what --cost-only prints

VIDEO_BUDGETS = (256, 128)
VIDEO_FRAMES = (8, 32)  # at the declared side (448 px): F / 2 temporal groups of N tokens: 1,024 and 4,096 tokens


def qwen_video_cost(spec: ModelSpec, frames: int, budgets: tuple[int, ...] = VIDEO_BUDGETS) -> VlmCost:
    """A Qwen2.5-VL clip of `frames` frames: F / 2 temporal groups of N tokens each. The tower attends within a
    group (its cu_seqlens are per temporal group, full-attention blocks included), so its cost is one image's per
    group: `crops` = groups."""
    groups = frames // spec.temporal_patch
    image = windowed_encoder(spec)
    encoder = EncoderGeometry(
        f"{image.name} x {groups} frame groups", image.layers, image.hidden, image.intermediate, image.tokens, groups,
        mlp_matrices=image.mlp_matrices, window=image.window, full_attention_layers=image.full_attention_layers,
    )  # fmt: skip
    return VlmCost(f"{qwen_cost(spec).name}, {frames} frames", spec.decoder, encoder, groups * spec.n_tokens, budgets)


VIDEO_MODELS = tuple(qwen_video_cost(QWEN25_VL_7B, f) for f in VIDEO_FRAMES)  # --cost-only's video block


def prefill_flops(g: DecoderGeometry, tokens: int) -> float:
    d, m, n = g.hidden, g.intermediate, tokens
    kv = g.kv_heads * g.head_dim
    projections = 2 * n * d * (2 * d + 2 * kv)  # q, o: d x d; k, v: d x kv
    mlp = 2 * n * 3 * d * m  # gate, up, down
    attention = 2 * 2 * n * n * d  # QK^T and AV
    return g.layers * (projections + mlp + attention) + 2 * d * g.vocab  # LM head: last token


def encoder_flops(e: EncoderGeometry) -> float:
    d, m, n = e.hidden, e.intermediate, e.tokens
    dense = 2 * n * 4 * d * d + 2 * n * e.mlp_matrices * d * m  # q, k, v, o; the MLP
    full = e.layers if e.window is None else e.full_attention_layers
    attention = full * 2 * 2 * n * n * d + (e.layers - full) * 2 * 2 * n * (e.window or 0) * d  # QK^T and AV
    return e.crops * (e.layers * dense + attention)


def kv_cache_mib(g: DecoderGeometry, tokens: int, bytes_per_value: int = 2) -> float:
    return 2 * g.layers * tokens * g.kv_heads * g.head_dim * bytes_per_value / MIB


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
