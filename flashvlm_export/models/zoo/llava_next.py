"""LLaVA-NeXT (LLaVA-1.6) 7B checkpoints (llava-hf/llava-v1.6-*-hf) and a test-size twin: CLIP ViT-L/14-336 on the base
image and each crop of a grid pinpoint, the LLaVA-1.5 kind of projector, and Vicuna-7B or Mistral-7B.

The grid is fixed at export (--grid, default 2x2: 1 + 4 crops of 576 tokens = N = 2880); the checkpoints' other
pinpoints on request. Geometry from the checkpoints' config.json.
"""

from dataclasses import replace

from flashvlm_export.models.spec import DecoderGeometry, ModelSpec
from flashvlm_export.models.zoo.llava15 import LLAMA2_7B, LLAVA15

MISTRAL_7B = DecoderGeometry(
    "Mistral-7B-Instruct-v0.2", layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=32000
)

# the llava-hf LLaVA-NeXT checkpoints' image_grid_pinpoints, (height, width) px
PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
DEFAULT_GRID = (2, 2)  # 672 x 672: the paper's 2,880 tokens

# llava-hf's chat templates: Vicuna's is LLaVA-1.5's (the family adapter's); Mistral's is [INST] ... [/INST]
MISTRAL_TEMPLATE = "[INST] <image>\n{question} [/INST]"


def _next(name: str, repo: str, geometry: DecoderGeometry, text: dict, **extra) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="llava_next",
        hf_repo=repo,
        image_size=336,
        patch_size=14,
        vision_hidden=1024,
        text_hidden=geometry.hidden,
        vision_feature_layer=-2,
        t_max=128,
        vision=dict(LLAVA15.vision),
        text=text,
        pinpoints=PINPOINTS,
        grid=DEFAULT_GRID,
        decoder=geometry,
        **extra,
    )


LLAVA_NEXT_VICUNA_7B = _next(
    "llava-next-vicuna-7b",
    "llava-hf/llava-v1.6-vicuna-7b-hf",
    LLAMA2_7B,
    dict(LLAVA15.text),  # Vicuna-7B v1.5, vocabulary 32000 + <image> and <pad>, padded to 32064
    description="LLaVA-NeXT-Vicuna-7B: CLIP ViT-L/14-336 on the base image + a grid of crops (2x2: N=2880) into Vicuna-7B",
)
LLAVA_NEXT_MISTRAL_7B = _next(
    "llava-next-mistral-7b",
    "llava-hf/llava-v1.6-mistral-7b-hf",
    MISTRAL_7B,
    dict(
        model_type="mistral",
        intermediate_size=MISTRAL_7B.intermediate,
        num_hidden_layers=MISTRAL_7B.layers,
        num_attention_heads=MISTRAL_7B.heads,
        num_key_value_heads=MISTRAL_7B.kv_heads,
        vocab_size=MISTRAL_7B.vocab + 64,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        sliding_window=None,
    ),
    chat_template=MISTRAL_TEMPLATE,
    description="LLaVA-NeXT-Mistral-7B: CLIP ViT-L/14-336 on the base image + a grid of crops (2x2: N=2880) into Mistral-7B",
)

# Same token geometry (336 px crops, 576 tokens each, the same pinpoints), tiny widths: for fast tests and smoke runs.
LLAVA_NEXT_TINY = ModelSpec(
    name="llava-next-tiny",
    family="llava_next",
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
    pinpoints=PINPOINTS,
    grid=DEFAULT_GRID,
    description="test-size LLaVA-NeXT (2x2 grid: 5 crops x 576 = N=2880, Dv=32, Dl=64); random weights only",
)

# The tiny twin with Mistral's decoder kind (MistralConfig: grouped KV heads, its rope base) and chat template.
LLAVA_NEXT_MISTRAL_TINY = replace(
    LLAVA_NEXT_TINY,
    name="llava-next-mistral-tiny",
    text=dict(
        model_type="mistral",
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        sliding_window=None,
    ),
    chat_template=MISTRAL_TEMPLATE,
    description="test-size LLaVA-NeXT-Mistral (2x2 grid: N=2880, Dv=32, Dl=64, a Mistral decoder, 2 KV heads); random weights only",
)

SPECS = (LLAVA_NEXT_VICUNA_7B, LLAVA_NEXT_MISTRAL_7B, LLAVA_NEXT_TINY, LLAVA_NEXT_MISTRAL_TINY)
