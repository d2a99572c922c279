"""Qwen2.5-VL-3B/7B-Instruct (Qwen/Qwen2.5-VL-*-Instruct) and a test-size twin: a windowed ViT with 2x2 patch merger.

The image side is fixed at export (--image-size, a multiple of 28; default 448: N = 16 x 16 = 256 merged tokens).
Geometry from the checkpoints' config.json (vision tower shared by 3B and 7B; out_hidden_size is the LLM width).
"""

from flashvlm_export.models.spec import DecoderGeometry, ModelSpec

QWEN25_3B = DecoderGeometry("Qwen2.5-3B", layers=36, hidden=2048, intermediate=11008, heads=16, kv_heads=2, vocab=151936)
QWEN25_7B = DecoderGeometry("Qwen2.5-7B", layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064)

# Qwen's special tokens at the checkpoints' ids; the chat template is the adapter's (models/qwen2_5_vl.py).
QWEN_TOKENS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}

# --budget's default per image (per frame group of a clip): a quarter of N=256 at 448 px, near LLaVA's 128 of 576;
# docs/MODELS.md's examples (K=64; 8 frames: 256)
QWEN_IMAGE_BUDGET = 64

VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    fullatt_block_indexes=[7, 15, 23, 31],
    window_size=112,
    temporal_patch_size=2,
    hidden_act="silu",
    tokens_per_second=2,
)


def decoder_text(geometry: DecoderGeometry, **family) -> dict:
    """The text config keyword arguments every Qwen decoder takes from its DecoderGeometry, plus the family's own
    (`family`: rotary parameters, context length, head width, linear-attention layers)."""
    return dict(
        hidden_size=geometry.hidden,
        intermediate_size=geometry.intermediate,
        num_hidden_layers=geometry.layers,
        num_attention_heads=geometry.heads,
        num_key_value_heads=geometry.kv_heads,
        vocab_size=geometry.vocab,
        rms_norm_eps=1e-6,
        **family,
    )


def _text(geometry: DecoderGeometry) -> dict:
    return decoder_text(
        geometry,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    )


def _qwen(name: str, repo: str, geometry: DecoderGeometry, **extra) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="qwen2_5_vl",
        hf_repo=repo,
        image_size=448,
        image_size_step=28,
        patch_size=14,
        merge=2,
        vision_hidden=geometry.hidden,  # X is the merger's output: Gram on P(X) (docs/ALGORITHM.md)
        text_hidden=geometry.hidden,
        t_max=128,  # the chat prompt is ~20 Qwen tokens without the question
        vision=dict(VISION, out_hidden_size=geometry.hidden),
        text=_text(geometry),
        image_token_index=QWEN_TOKENS["<|image_pad|>"],
        special_tokens=QWEN_TOKENS,
        gate="norm",
        image_budget=QWEN_IMAGE_BUDGET,
        decoder=geometry,
        **extra,
    )


QWEN25_VL_3B = _qwen(
    "qwen2.5-vl-3b",
    "Qwen/Qwen2.5-VL-3B-Instruct",
    QWEN25_3B,
    tie_word_embeddings=True,  # the 3B checkpoint ties lm_head to embed_tokens
    description="Qwen2.5-VL-3B-Instruct: windowed ViT (675M) + 2x2 merger into Qwen2.5-3B (N=256 at 448 px)",
)
QWEN25_VL_7B = _qwen(
    "qwen2.5-vl-7b",
    "Qwen/Qwen2.5-VL-7B-Instruct",
    QWEN25_7B,
    description="Qwen2.5-VL-7B-Instruct: windowed ViT (675M) + 2x2 merger into Qwen2.5-7B (N=256 at 448 px)",
)

# The test-size Qwen models' tokens (ids at the top of a 1,000-word vocabulary, above the stand-in tokenizer's bytes) and
# decoder widths, shared by qwen2.5-vl-tiny and the Qwen3 generation's test models (models/zoo/qwen3_vl.py)
TINY_TOKENS = {
    "<|endoftext|>": 994,
    "<|im_start|>": 995,
    "<|im_end|>": 996,
    "<|vision_start|>": 997,
    "<|vision_end|>": 998,
    "<|image_pad|>": 999,
    "<|video_pad|>": 993,
}
TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1000,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
)

# Same token geometry (448 px, N = 256; windows of 8x8 patches, full attention in blocks 1 and 3), tiny widths.
QWEN25_VL_TINY = ModelSpec(
    name="qwen2.5-vl-tiny",
    family="qwen2_5_vl",
    hf_repo="",
    image_size=448,
    image_size_step=28,
    patch_size=14,
    merge=2,
    vision_hidden=64,
    text_hidden=64,
    t_max=256,  # room for the chat prompt through the byte-level stand-in tokenizer (~110 + question)
    vision=dict(
        depth=4,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        fullatt_block_indexes=[1, 3],
        window_size=112,
        temporal_patch_size=2,
        hidden_act="silu",
        tokens_per_second=2,
        out_hidden_size=64,
    ),
    text=dict(
        TINY_TEXT,
        num_hidden_layers=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    ),
    image_token_index=TINY_TOKENS["<|image_pad|>"],
    special_tokens=TINY_TOKENS,
    gate="norm",
    image_budget=QWEN_IMAGE_BUDGET,
    description="test-size Qwen2.5-VL (448 px: N=256, D=64); random weights only",
)

SPECS = (QWEN25_VL_3B, QWEN25_VL_7B, QWEN25_VL_TINY)
