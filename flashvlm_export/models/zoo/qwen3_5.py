"""Qwen3.5 with its vision tower (Qwen/Qwen3.5-*): Qwen3-VL's ViT without DeepStack into a hybrid decoder, three
Gated DeltaNet (linear-attention) layers to each full-attention one; and a test-size twin.

The image side is fixed at export (--image-size, a multiple of 32; default 512: N = 256), as for Qwen3-VL.
"""

from flashvlm_export.models.spec import DecoderGeometry, ModelSpec
from flashvlm_export.models.zoo.qwen2_5_vl import decoder_text
from flashvlm_export.models.zoo.qwen3_vl import qwen3_spec, tiny_spec

# Qwen3.5's special tokens (config.json: image 248056, video 248057, vision start/end 248053/248054, eos 248044);
# <|im_start|>/<|im_end|> follow <|endoftext|> as in every Qwen tokenizer (used by the offline stand-in tokenizer only)
QWEN35_TOKENS = {
    "<|endoftext|>": 248044,
    "<|im_start|>": 248045,
    "<|im_end|>": 248046,
    "<|vision_start|>": 248053,
    "<|vision_end|>": 248054,
    "<|image_pad|>": 248056,
    "<|video_pad|>": 248057,
}
FULL_ATTENTION_INTERVAL = 4  # every fourth layer full attention, the three before it Gated DeltaNet


def _decoder(name: str, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, value_heads: int):
    return DecoderGeometry(
        name, layers=layers, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads, vocab=248320,
        head_dim=256, linear_layers=layers - layers // FULL_ATTENTION_INTERVAL, linear_key_heads=16,
        linear_value_heads=value_heads, linear_head_dim=128, linear_conv_kernel=4, attention_output_gate=True,
    )  # fmt: skip


def _text(g: DecoderGeometry) -> dict:
    return decoder_text(
        g,
        head_dim=g.head_dim,
        linear_num_key_heads=g.linear_key_heads,
        linear_num_value_heads=g.linear_value_heads,
        linear_key_head_dim=g.linear_head_dim,
        linear_value_head_dim=g.linear_head_dim,
        linear_conv_kernel_dim=g.linear_conv_kernel,
        full_attention_interval=FULL_ATTENTION_INTERVAL,
        max_position_embeddings=262144,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
        },  # fmt: skip
    )


def _qwen35(name: str, repo: str, g: DecoderGeometry, vision: dict, tied: bool, description: str) -> ModelSpec:
    return qwen3_spec(
        name, repo, "qwen3_5", g, vision, _text(g), QWEN35_TOKENS, tie_word_embeddings=tied, description=description
    )


# docs/MODELS.md "Where the Qwen3 generation's geometry comes from" cites each value; Qwen3.5-2B is left out: its
# vision tower's config was not found in any source reachable here
QWEN35_0_8B = _qwen35(
    "qwen3.5-0.8b", "Qwen/Qwen3.5-0.8B", _decoder("Qwen3.5-0.8B", 24, 1024, 3584, 8, 2, 16),
    dict(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12), True,
    "Qwen3.5-0.8B: ViT (12 x 768) + 2x2 merger into a hybrid 24-layer decoder (18 linear-attention) (N=256 at 512 px)",
)  # fmt: skip
QWEN35_4B = _qwen35(
    "qwen3.5-4b", "Qwen/Qwen3.5-4B", _decoder("Qwen3.5-4B", 32, 2560, 9216, 16, 4, 32),
    dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16), True,
    "Qwen3.5-4B: ViT (24 x 1024) + 2x2 merger into a hybrid 32-layer decoder (24 linear-attention) (N=256 at 512 px)",
)  # fmt: skip
QWEN35_9B = _qwen35(
    "qwen3.5-9b", "Qwen/Qwen3.5-9B", _decoder("Qwen3.5-9B", 32, 4096, 12288, 16, 4, 32),
    dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16), False,
    "Qwen3.5-9B: ViT (27 x 1152) + 2x2 merger into a hybrid 32-layer decoder (24 linear-attention) (N=256 at 512 px)",
)  # fmt: skip

QWEN3_5_TINY = tiny_spec(
    "qwen3.5-tiny",
    "qwen3_5",
    {},
    dict(
        num_hidden_layers=4,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        head_dim=32,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },  # fmt: skip
    ),
    "test-size Qwen3.5 (512 px: N=256, D=64; 3 linear-attention + 1 full-attention layers); random weights only",
)

SPECS = (QWEN35_0_8B, QWEN35_4B, QWEN35_9B, QWEN3_5_TINY)
