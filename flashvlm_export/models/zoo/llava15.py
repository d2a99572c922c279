"""LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf) and its test-size twin: CLIP ViT-L/14-336 + 2-layer GELU projector + Llama."""

from flashvlm_export.models.spec import DecoderGeometry, ModelSpec

# Vicuna-7B v1.5, LLaVA-1.5-7B's LLM, has Llama-2-7B's geometry: the one place it is written.
LLAMA2_7B = DecoderGeometry(
    "Vicuna-7B (Llama-2-7B)", layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000
)

# LLaVA-1.5's chat prompt (system + "USER: <image>\n" + question + " ASSISTANT:") is ~45 Llama tokens
# without the question; 128 leaves room for a question of ~80 tokens.
LLAVA15 = ModelSpec(
    name="llava15",
    family="llava",
    hf_repo="llava-hf/llava-1.5-7b-hf",
    image_size=336,
    patch_size=14,
    vision_hidden=1024,
    text_hidden=LLAMA2_7B.hidden,
    vision_feature_layer=-2,
    t_max=128,
    vision=dict(
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    ),
    text=dict(
        intermediate_size=LLAMA2_7B.intermediate,
        num_hidden_layers=LLAMA2_7B.layers,
        num_attention_heads=LLAMA2_7B.heads,
        vocab_size=LLAMA2_7B.vocab + 64,  # llava-hf adds <image> and <pad>, padded to a multiple of 64
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=32001,
    ),
    decoder=LLAMA2_7B,
    description="LLaVA-1.5-7B: CLIP ViT-L/14-336 + 2-layer GELU projector into Llama-2-7B (N=576)",
)

# Same token geometry (336 px, patch 14, N = 576), tiny widths: for fast tests and smoke runs.
LLAVA15_TINY = ModelSpec(
    name="llava15-tiny",
    family="llava",
    hf_repo="",
    image_size=336,
    patch_size=14,
    vision_hidden=32,
    text_hidden=64,
    vision_feature_layer=-2,
    t_max=256,  # room for the chat prompt through `run`'s byte-level stand-in tokenizer (~180 + question)
    vision=dict(intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, projection_dim=32),
    text=dict(intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, vocab_size=1000),
    image_token_index=999,
    description="test-size LLaVA-1.5 (N=576, Dv=32, Dl=64); random weights only",
)

SPECS = (LLAVA15, LLAVA15_TINY)
