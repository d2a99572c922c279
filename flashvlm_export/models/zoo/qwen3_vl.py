"""Qwen3-VL-2B/4B/8B-Instruct (Qwen/Qwen3-VL-*-Instruct) and a test-size twin: a ViT of 16 px patches, 2x2 merger,
learned position embeddings interpolated to the grid, and DeepStack (three intermediate layers, each through a merger
of its own, added to the LLM's first three decoder layers).

The image side is fixed at export (--image-size, a multiple of 32; default 512: N = 16 x 16 = 256 merged tokens, the
token count of Qwen2.5-VL at 448 px). Geometry from the checkpoints' config.json (docs/MODELS.md cites where each
value was read).
"""

from flashvlm_export.models.spec import DecoderGeometry, ModelSpec
from flashvlm_export.models.zoo.qwen2_5_vl import QWEN_IMAGE_BUDGET, QWEN_TOKENS, TINY_TEXT, TINY_TOKENS, decoder_text

QWEN3_SIDE = 512  # 16 x 16 merged tokens of 32 px
QWEN3_STEP = 32  # patch 16 x merge 2

QWEN3_1_7B = DecoderGeometry(
    "Qwen3-1.7B", layers=28, hidden=2048, intermediate=6144, heads=16, kv_heads=8, vocab=151936, head_dim=128
)
QWEN3_4B = DecoderGeometry(
    "Qwen3-4B", layers=36, hidden=2560, intermediate=9728, heads=32, kv_heads=8, vocab=151936, head_dim=128
)
QWEN3_8B = DecoderGeometry(
    "Qwen3-8B", layers=36, hidden=4096, intermediate=12288, heads=32, kv_heads=8, vocab=151936, head_dim=128
)

# The 2B and 4B towers (SigLIP-2 so400m-like, 24 blocks of 1024) and the 8B's (27 blocks of 1152), DeepStack taps
VISION_SMALL = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, deepstack_visual_indexes=[5, 11, 17])
VISION_LARGE = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, deepstack_visual_indexes=[8, 16, 24])
VISION_COMMON = dict(
    hidden_act="gelu_pytorch_tanh",
    temporal_patch_size=2,
    num_position_embeddings=2304,  # a 48 x 48 learned grid, bilinearly resampled to each image's patch grid
)


def qwen3_text(geometry: DecoderGeometry) -> dict:
    """Qwen3VLTextConfig keyword arguments: interleaved M-RoPE over (t, h, w) of a 128-wide head."""
    return decoder_text(
        geometry,
        head_dim=geometry.head_dim,
        max_position_embeddings=262144,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    )


def qwen3_spec(name: str, repo: str, family: str, geometry: DecoderGeometry, vision: dict, text: dict, tokens: dict, **extra):
    """A full-size model of the Qwen3 generation (Qwen3-VL, Qwen3.5): its tower at 512 px, its decoder's geometry."""
    return ModelSpec(
        name=name,
        family=family,
        hf_repo=repo,
        image_size=QWEN3_SIDE,
        image_size_step=QWEN3_STEP,
        patch_size=16,
        merge=2,
        vision_hidden=geometry.hidden,  # X is the merger's output: Gram on P(X), as for Qwen2.5-VL
        text_hidden=geometry.hidden,
        t_max=128,
        vision=dict(VISION_COMMON, **vision, out_hidden_size=geometry.hidden),
        text=text,
        image_token_index=tokens["<|image_pad|>"],
        special_tokens=tokens,
        gate="norm",
        image_budget=QWEN_IMAGE_BUDGET,
        decoder=geometry,
        **extra,
    )


def _qwen3(name: str, repo: str, geometry: DecoderGeometry, vision: dict, **extra) -> ModelSpec:
    return qwen3_spec(name, repo, "qwen3_vl", geometry, vision, qwen3_text(geometry), QWEN_TOKENS, **extra)


QWEN3_VL_2B = _qwen3(
    "qwen3-vl-2b",
    "Qwen/Qwen3-VL-2B-Instruct",
    QWEN3_1_7B,
    VISION_SMALL,
    tie_word_embeddings=True,
    description="Qwen3-VL-2B-Instruct: ViT (24 x 1024) + 2x2 merger + DeepStack into Qwen3-1.7B (N=256 at 512 px)",
)
QWEN3_VL_4B = _qwen3(
    "qwen3-vl-4b",
    "Qwen/Qwen3-VL-4B-Instruct",
    QWEN3_4B,
    VISION_SMALL,
    tie_word_embeddings=True,
    description="Qwen3-VL-4B-Instruct: ViT (24 x 1024) + 2x2 merger + DeepStack into Qwen3-4B (N=256 at 512 px)",
)
QWEN3_VL_8B = _qwen3(
    "qwen3-vl-8b",
    "Qwen/Qwen3-VL-8B-Instruct",
    QWEN3_8B,
    VISION_LARGE,
    description="Qwen3-VL-8B-Instruct: ViT (27 x 1152) + 2x2 merger + DeepStack into Qwen3-8B (N=256 at 512 px)",
)

# Test size: the same token geometry (512 px, N = 256 of 1,024 patches), a 24 x 24 learned position grid (so the
# resampling to 32 x 32 patches is exercised), 4 blocks with DeepStack taps after blocks 0, 1, 2 into a 3-layer LLM.
QWEN3_TINY_VISION = dict(
    depth=4,
    hidden_size=32,
    intermediate_size=64,
    num_heads=4,
    hidden_act="gelu_pytorch_tanh",
    temporal_patch_size=2,
    num_position_embeddings=576,
    out_hidden_size=64,
)


def tiny_spec(name: str, family: str, vision: dict, text: dict, description: str) -> ModelSpec:
    """A test-size model of the Qwen3 generation (qwen3-vl-tiny, qwen3.5-tiny): the tiny tower's geometry and tokens,
    the family's own text config and vision extras."""
    return ModelSpec(
        name=name,
        family=family,
        hf_repo="",
        image_size=QWEN3_SIDE,
        image_size_step=QWEN3_STEP,
        patch_size=16,
        merge=2,
        vision_hidden=64,
        text_hidden=64,
        t_max=256,  # room for the chat prompt through the byte-level stand-in tokenizer
        vision=dict(QWEN3_TINY_VISION, **vision),
        text=dict(TINY_TEXT, **text),
        image_token_index=TINY_TOKENS["<|image_pad|>"],
        special_tokens=TINY_TOKENS,
        gate="norm",
        image_budget=QWEN_IMAGE_BUDGET,
        description=description,
    )


QWEN3_VL_TINY = tiny_spec(
    "qwen3-vl-tiny",
    "qwen3_vl",
    dict(deepstack_visual_indexes=[0, 1, 2]),
    dict(
        num_hidden_layers=3,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    ),
    "test-size Qwen3-VL with DeepStack (512 px: N=256, D=64, 3 DeepStack layers); random weights only",
)

SPECS = (QWEN3_VL_2B, QWEN3_VL_4B, QWEN3_VL_8B, QWEN3_VL_TINY)
