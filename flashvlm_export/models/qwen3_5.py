"""The Qwen3.5 family adapter (models/adapter.py): Qwen3-VL's vision tower without DeepStack, into a hybrid decoder
(Gated DeltaNet linear-attention layers between full-attention ones).

The image side is Qwen3-VL's (models/qwen3_vl.py): 16 px patches, 2x2 merger, learned position embeddings resampled to
the grid, full attention in every block; X = P(X), a from the last block. The LLM takes the kept rows and their
(t, h, w) positions as Qwen3-VL's does; its linear-attention layers use no rotary positions but read the sequence in
order, so the kept rows stay in raster order (ascending indices), as in the unpruned sequence.
"""

from __future__ import annotations

import sys

from flashvlm_export.models.qwen3_vl import (  # noqa: F401  (the shared image side, re-exported for the family)
    BOS_TOKEN,
    EOS_TOKEN,
    IMAGE_MEAN,
    IMAGE_PLACEHOLDER,
    IMAGE_PROCESSOR,
    IMAGE_STD,
    RESIZE,
    SPREAD_FRAMES,
    VIDEO_PLACEHOLDER,
    VIDEO_PROCESSOR_NAME,
    adopt_parts,
    load_parts_of,
    processor_pixels,
    random_parts_of,
)
from flashvlm_export.models.qwen3_vl import full_config as _full_config
from flashvlm_export.models.spec import ModelSpec

NAME = "Qwen3.5"
MODEL_TYPE = "qwen3_5"
# llama.cpp's architecture of its LLM (conversion/qwen.py Qwen3_5TextModel: Gated DeltaNet + gated full attention, interleaved M-RoPE)
GGUF_ARCH = "qwen35"
# Qwen3.5's chat template with thinking off (its generation prompt then opens and closes an empty think block)
TEMPLATE = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
PREFIXES = {
    "visual": ("model.visual.", "visual."),
    "embed_tokens": ("model.language_model.embed_tokens.", "model.embed_tokens."),
}
FIX = "point --model-path at a complete Qwen3.5 checkpoint (config.json + *.safetensors)"


def LLM_CLASS():
    from transformers import Qwen3_5ForConditionalGeneration

    return Qwen3_5ForConditionalGeneration


def CONFIG_CLASS():
    from transformers import Qwen3_5Config

    return Qwen3_5Config


def VISION_CLASS():
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

    return Qwen3_5VisionModel


def eager_attention():
    from transformers.models.qwen3_5.modeling_qwen3_5 import eager_attention_forward

    return eager_attention_forward


def chat_prompt(question: str) -> str:
    return TEMPLATE.format(question=question)


def video_prompt(question: str) -> str:
    return chat_prompt(question).replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, 1)


def full_config(spec: ModelSpec):
    return _full_config(spec, CONFIG_CLASS())


def random_parts(spec: ModelSpec, seed: int = 0, with_embeddings: bool = False):
    return random_parts_of(sys.modules[__name__], spec, seed, with_embeddings)


def load_parts(spec: ModelSpec, model_path: str | None = None, with_embeddings: bool = False):
    return load_parts_of(sys.modules[__name__], spec, model_path, with_embeddings)
