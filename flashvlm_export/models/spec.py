"""Declarative model specs: the one place a model's geometry and names live."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from flashvlm_export.errors import UsageError


@dataclass(frozen=True)
class DecoderGeometry:
    """The LLM the selected visual tokens feed: what the budget saves (bench's cost calculator, prefill)."""

    name: str
    layers: int
    hidden: int  # d
    intermediate: int  # SwiGLU width m
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def llama_config(self) -> dict:
        """transformers LlamaConfig keyword arguments for this geometry."""
        return dict(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            vocab_size=self.vocab,
        )


# Vicuna-7B v1.5, LLaVA-1.5-7B's LLM, has Llama-2-7B's geometry: the one place it is written.
LLAMA2_7B = DecoderGeometry(
    "Vicuna-7B (Llama-2-7B)", layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000
)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the --model value
    hf_repo: str  # Hugging Face id, looked up in the local cache only
    image_size: int  # input pixels per side
    patch_size: int  # ViT patch side; N = (image_size / patch_size) ** 2
    vision_hidden: int  # Dv, width of the vision features X
    text_hidden: int  # Dl, width of the LLM embeddings (and of P(X))
    vision_feature_layer: int  # hidden_states index LLaVA feeds its projector
    t_max: int  # default padded text length of the static graph
    vision: dict = field(default_factory=dict)  # CLIPVisionConfig overrides
    text: dict = field(default_factory=dict)  # LlamaConfig overrides
    image_token_index: int = 32000
    description: str = ""

    @property
    def n_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def llava_config(self):
        """The transformers LlavaConfig with this geometry (eager attention in the vision tower)."""
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

        vision = CLIPVisionConfig(
            hidden_size=self.vision_hidden, image_size=self.image_size, patch_size=self.patch_size, **self.vision
        )
        text = LlamaConfig(hidden_size=self.text_hidden, **self.text)
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=self.image_token_index,
            vision_feature_layer=self.vision_feature_layer,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
        )
        config.vision_config._attn_implementation = "eager"
        return config


# LLaVA-1.5's chat prompt (system + "USER: <image>\n" + question + " ASSISTANT:") is ~45 Llama tokens
# without the question; 128 leaves room for a question of ~80 tokens.
LLAVA15 = ModelSpec(
    name="llava15",
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
    description="LLaVA-1.5-7B: CLIP ViT-L/14-336 + 2-layer GELU projector into Llama-2-7B (N=576)",
)

# Same token geometry (336 px, patch 14, N = 576), tiny widths: for fast tests and smoke runs.
LLAVA15_TINY = ModelSpec(
    name="llava15-tiny",
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

MODELS = {spec.name: spec for spec in (LLAVA15, LLAVA15_TINY)}


def get_spec(name: str) -> ModelSpec:
    if name in MODELS:
        return MODELS[name]
    close = difflib.get_close_matches(name, list(MODELS), n=1, cutoff=0.3)
    hint = f"did you mean --model {close[0]}?" if close else f"choose one of: {', '.join(MODELS)}"
    raise UsageError(f"unknown --model {name!r}; {hint}")
