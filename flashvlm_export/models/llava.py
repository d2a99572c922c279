"""The LLaVA family adapter (models/adapter.py): LLaVA-1.5 parts as LlavaModel composes them.

Vision tower (CLIP, eager attention), projector, text embeddings. Only the parts the export needs are
materialised, so a 7B checkpoint costs ~1.3 GB of RAM, not ~28 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flashvlm_export.errors import UsageError
from flashvlm_export.models.adapter import frozen, random_embeddings
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.models.vision import LlavaEncoderCore, VisionEncoder, VisionFeatures
from flashvlm_export.models.weights import WeightsSource, load_states, open_checkpoint

NAME = "LLaVA-1.5"  # how messages name its checkpoints
MODEL_TYPE = "llava"
GGUF_ARCH = "llama"  # llama.cpp's architecture of its LLM (convert_hf_to_gguf.py: LlamaForCausalLM)
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE = "shortest-edge-crop"  # resize the shortest side, center crop: CLIP's processor
TEMPLATE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: <image>\n{question} ASSISTANT:"
)
IMAGE_PLACEHOLDER = "<image>"
BOS_TOKEN, EOS_TOKEN = "<s>", "</s>"  # Llama's; the stand-in tokenizer (runtime/tokenizer.py) adds BOS as Llama's does

# checkpoint key prefixes (llava-hf original layout, transformers >= 4.52 layout, and save_pretrained of 5.x) -> part
PREFIXES = {
    "vision_tower": ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.", "vision_tower."),
    "projector": ("model.multi_modal_projector.", "multi_modal_projector."),
    "embed_tokens": ("model.language_model.embed_tokens.", "language_model.model.embed_tokens.", "model.embed_tokens."),
}
FIX = "point --model-path at a complete llava-hf LLaVA-1.5 checkpoint (config.json + *.safetensors)"


def LLM_CLASS():
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration


def chat_prompt(question: str) -> str:
    return TEMPLATE.format(question=question)


def IMAGE_PROCESSOR():
    """The checkpoint's image processor class: CLIP's (resize the shortest side, center crop)."""
    try:  # transformers >= 5: the PIL backend, no torchvision needed
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def processor_pixels(output, spec: ModelSpec) -> torch.Tensor:
    """(1, 3, H, W) fp32 from the processor's output: CLIP's pixel_values are that already."""
    return output["pixel_values"].to(torch.float32)


def adopt_parts(model, parts: LlavaParts) -> None:
    """A random-weight LlavaForConditionalGeneration takes the graph's vision tower, projector and embeddings."""
    model.model.vision_tower.load_state_dict(parts.vision_tower.state_dict())
    model.model.multi_modal_projector.load_state_dict(parts.projector.state_dict())
    model.model.language_model.embed_tokens.load_state_dict(parts.embed_tokens.state_dict())


def full_config(spec: ModelSpec):
    """The transformers LlavaConfig with this geometry (eager attention in the vision tower)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden, image_size=spec.image_size, patch_size=spec.patch_size, **spec.vision
    )
    text = LlamaConfig(hidden_size=spec.text_hidden, **spec.text)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=spec.image_token_index,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config.vision_config._attn_implementation = "eager"
    return config


@dataclass
class LlavaParts:
    spec: ModelSpec
    config: object  # transformers LlavaConfig
    vision_tower: nn.Module  # CLIPVisionModel, eager attention
    projector: nn.Module  # LlavaMultiModalProjector
    embed_tokens: nn.Module | None  # Llama embed_tokens, when asked for
    source: WeightsSource  # where the weights came from, for metadata

    def vision_features(self) -> VisionFeatures:
        return VisionFeatures(self.vision_tower, self.config.vision_feature_layer)

    def encoder(self, dtype: torch.dtype = torch.float32) -> VisionEncoder:
        """pixel_values -> X, a, P(X); fp16/bf16 as copies behind casts (the fp32 parts stay for the reference)."""
        core = LlavaEncoderCore(self.vision_features(), self.projector)
        return VisionEncoder(core, dtype)

    @torch.no_grad()
    def reference_features(self, pixel_values: torch.Tensor):
        """X = hidden_states[-2] without CLS, a = its CLS attention row, P(X): the features LLaVA's projector takes."""
        return LlavaEncoderCore(self.vision_features(), self.projector)(pixel_values)


def _build(config, with_embeddings: bool):
    from transformers import AutoModel
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config.vision_config._attn_implementation = "eager"
    vision_tower = AutoModel.from_config(config.vision_config, attn_implementation="eager")
    projector = LlavaMultiModalProjector(config)
    embed = random_embeddings(config.text_config) if with_embeddings else None
    return vision_tower, projector, embed


def random_parts(spec: ModelSpec, seed: int = 0, with_embeddings: bool = False) -> LlavaParts:
    """The exact architecture with weights from torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    config = full_config(spec)
    vision_tower, projector, embed = _build(config, with_embeddings)
    return frozen(LlavaParts(spec, config, vision_tower, projector, embed, WeightsSource(seed=seed)))


def _check_geometry(spec: ModelSpec, config) -> None:
    vision = config.vision_config
    got = (vision.image_size, vision.patch_size, vision.hidden_size, config.text_config.hidden_size)
    want = (spec.image_size, spec.patch_size, spec.vision_hidden, spec.text_hidden)
    if got != want:
        raise UsageError(
            f"checkpoint geometry (image, patch, Dv, Dl) = {got} does not match --model {spec.name} {want}; "
            "pick the --model that matches the checkpoint"
        )


def load_parts(spec: ModelSpec, model_path: str | None = None, with_embeddings: bool = False) -> LlavaParts:
    """Real weights from a local directory or the HF cache, fp32."""
    from transformers import LlavaConfig

    path, config = open_checkpoint(spec, model_path, MODEL_TYPE, LlavaConfig, "LLaVA", FIX)
    _check_geometry(spec, config)
    vision_tower, projector, embed = _build(config, with_embeddings)
    targets = {"vision_tower": vision_tower, "projector": projector}
    if embed is not None:
        targets["embed_tokens"] = embed
    load_states(Path(path), targets, PREFIXES, FIX)
    return frozen(LlavaParts(spec, config, vision_tower, projector, embed, WeightsSource(path=str(path))))
