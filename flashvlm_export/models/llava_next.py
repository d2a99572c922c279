"""The LLaVA-NeXT family adapter (models/adapter.py): LLaVA-1.5's encoder on the base image and every crop of a grid.

docs/ALGORITHM.md "Batches and other models", LLaVA-NeXT: the photo becomes the base image (336 px) plus the crops
of one grid pinpoint (fixed at export, --grid); each crop is an image of its own with X, a, P(X) exactly as for
LLaVA-1.5. The crops run through one encoder as a batch (`CropsEncoderCore` around models/vision.py's
LlavaEncoderCore, no copy of it); the graphs take pixel_values (B, crops, 3, 336, 336) as transformers'
LlavaNextImageProcessor makes them, and give X, a, P(X) crop-major, (B, crops x 576, .). Where the kept rows go in
the LLM input (base first, the grid unpadded with image_newline rows) is models/anyres.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flashvlm_export.errors import UsageError
from flashvlm_export.models.adapter import frozen, random_embeddings
from flashvlm_export.models.llava import IMAGE_MEAN, IMAGE_STD, PREFIXES, TEMPLATE, _check_geometry  # noqa: F401 (adapter names)
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.models.vision import LlavaEncoderCore, VisionEncoder, VisionFeatures
from flashvlm_export.models.weights import WeightsSource, load_states, open_checkpoint

NAME = "LLaVA-NeXT"  # how messages name its checkpoints
MODEL_TYPE = "llava_next"
GGUF_ARCH = "llama"  # llama.cpp's (convert_hf_to_gguf.py writes Vicuna and MistralForCausalLM as llama)
RESIZE = "anyres"  # the base image and a grid of crops (runtime/image.py): LlavaNextImageProcessor's
IMAGE_PLACEHOLDER = "<image>"
BOS_TOKEN, EOS_TOKEN = "<s>", "</s>"  # Llama's and Mistral's
NEWLINE_KEYS = ("image_newline", "model.image_newline")  # the checkpoint's image_newline tensor (llava-hf, >= 4.52 layout)
FIX = "point --model-path at a complete llava-hf LLaVA-NeXT checkpoint (config.json + *.safetensors)"


def LLM_CLASS():
    from transformers import LlavaNextForConditionalGeneration

    return LlavaNextForConditionalGeneration


def chat_prompt(question: str) -> str:
    """Vicuna's template (LLaVA-1.5's); a checkpoint with another one declares it (ModelSpec.chat_template)."""
    return TEMPLATE.format(question=question)


def IMAGE_PROCESSOR():
    """The checkpoint's image processor class: LLaVA-NeXT's (the base image and the crops of the best pinpoint)."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil


def processor_pixels(output, spec: ModelSpec) -> torch.Tensor:
    """(1, crops, 3, S, S) fp32 from the processor's output: the base image, then the grid's crops row by row."""
    pixels = torch.as_tensor(output["pixel_values"], dtype=torch.float32)
    if pixels.ndim != 5 or pixels.shape[1] != spec.crops:
        got = pixels.shape[1] if pixels.ndim == 5 else 1
        raise UsageError(
            f"the image processor made {got} crops but the graph takes {spec.crops} (--grid {spec.grid[0]}x{spec.grid[1]}); "
            "use the checkpoint the graph was exported from"
        )
    return pixels


def adopt_parts(model, parts: NextParts) -> None:
    """A random-weight LlavaNextForConditionalGeneration takes the graph's vision tower, projector, newline, embeddings."""
    model.model.vision_tower.load_state_dict(parts.vision_tower.state_dict())
    model.model.multi_modal_projector.load_state_dict(parts.projector.state_dict())
    model.model.language_model.embed_tokens.load_state_dict(parts.embed_tokens.state_dict())
    with torch.no_grad():
        model.model.image_newline.copy_(parts.image_newline.row)


def text_config(spec: ModelSpec):
    """The LLM's transformers config: Llama's, or the class spec.text names by model_type (Mistral's)."""
    from transformers import AutoConfig

    text = dict(spec.text)
    kind = text.pop("model_type", "llama")
    return AutoConfig.for_model(kind, hidden_size=spec.text_hidden, **text)


def full_config(spec: ModelSpec):
    """The transformers LlavaNextConfig with this geometry and the checkpoint's pinpoints (eager vision attention)."""
    from transformers import CLIPVisionConfig, LlavaNextConfig

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden, image_size=spec.image_size, patch_size=spec.patch_size, **spec.vision
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text_config(spec),
        image_token_index=spec.image_token_index,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_grid_pinpoints=[list(p) for p in spec.pinpoints],
    )
    config.vision_config._attn_implementation = "eager"
    return config


class CropsEncoderCore(nn.Module):
    """pixel_values (B, crops, 3, S, S) -> X (B, crops x n, Dv), a (B, crops x n), P(X) (B, crops x n, Dl), crop-major.

    One batch of B x crops images through LLaVA-1.5's encoder core: a crop's rows are exactly what that crop alone
    gives (the tower attends within each image)."""

    def __init__(self, core: LlavaEncoderCore, crops: int):
        super().__init__()
        self.core = core
        self.crops = crops

    def forward(self, pixel_values):
        b = pixel_values.shape[0]
        flat = pixel_values.reshape(b * self.crops, *pixel_values.shape[2:])  # (B * crops, 3, S, S)
        x, a, p = self.core(flat)
        return x.reshape(b, -1, x.shape[-1]), a.reshape(b, -1), p.reshape(b, -1, p.shape[-1])


class Newline(nn.Module):
    """LlavaNextModel's image_newline (Dl,), a module so that the parts freeze and move like the others."""

    def __init__(self, row: torch.Tensor):
        super().__init__()
        self.row = nn.Parameter(row.to(torch.float32), requires_grad=False)


@dataclass
class NextParts:
    spec: ModelSpec
    config: object  # transformers LlavaNextConfig
    vision_tower: nn.Module  # CLIPVisionModel, eager attention
    projector: nn.Module  # LlavaNextMultiModalProjector
    image_newline: Newline  # .row (Dl,): the row after each row of the grid in the LLM input (models/anyres.py)
    embed_tokens: nn.Module | None  # the LLM's embed_tokens, when asked for
    source: WeightsSource

    def core(self) -> CropsEncoderCore:
        vision = VisionFeatures(self.vision_tower, self.config.vision_feature_layer)
        return CropsEncoderCore(LlavaEncoderCore(vision, self.projector), self.spec.crops)

    def encoder(self, dtype: torch.dtype = torch.float32) -> VisionEncoder:
        return VisionEncoder(self.core(), dtype)

    @torch.no_grad()
    def reference_features(self, pixel_values: torch.Tensor):
        """X, a, P(X) of every crop, crop by crop through LLaVA-1.5's reference (one image at a time), crop-major."""
        b, crops = pixel_values.shape[:2]
        core = self.core().core
        each = [core(pixel_values[i, c : c + 1]) for i in range(b) for c in range(crops)]  # (1, n, .) each
        x, a, p = (torch.cat([f[j] for f in each]) for j in range(3))  # (B * crops, n, .)
        return x.reshape(b, -1, x.shape[-1]), a.reshape(b, -1), p.reshape(b, -1, p.shape[-1])


def _build(config, with_embeddings: bool):
    from transformers import AutoModel
    from transformers.models.llava_next.modeling_llava_next import LlavaNextMultiModalProjector

    config.vision_config._attn_implementation = "eager"
    vision_tower = AutoModel.from_config(config.vision_config, attn_implementation="eager")
    projector = LlavaNextMultiModalProjector(config)
    hidden = config.text_config.hidden_size
    newline = torch.randn(hidden) / hidden**0.5  # transformers' init: normal, std 1/sqrt(Dl)
    embed = random_embeddings(config.text_config) if with_embeddings else None
    return vision_tower, projector, newline, embed


def random_parts(spec: ModelSpec, seed: int = 0, with_embeddings: bool = False) -> NextParts:
    """The exact architecture with weights from torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    config = full_config(spec)
    vision_tower, projector, newline, embed = _build(config, with_embeddings)
    return frozen(NextParts(spec, config, vision_tower, projector, Newline(newline), embed, WeightsSource(seed=seed)))


def _load_newline(path: Path, hidden: int) -> torch.Tensor:
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in NEWLINE_KEYS:
                if key in f.keys():
                    newline = f.get_tensor(key).to(torch.float32)
                    if tuple(newline.shape) != (hidden,):
                        raise UsageError(
                            f"checkpoint {path} has an image_newline of shape {tuple(newline.shape)}, not ({hidden},); {FIX}"
                        )
                    return newline
    raise UsageError(f"checkpoint {path} has no image_newline; {FIX}")


def load_parts(spec: ModelSpec, model_path: str | None = None, with_embeddings: bool = False) -> NextParts:
    """Real weights from a local directory or the HF cache, fp32; the checkpoint must list the export's grid."""
    from transformers import LlavaNextConfig

    path, config = open_checkpoint(spec, model_path, MODEL_TYPE, LlavaNextConfig, "LLaVA-NeXT", FIX)
    _check_geometry(spec, config)
    pinpoint = [spec.grid[0] * spec.image_size, spec.grid[1] * spec.image_size]
    if pinpoint not in [list(p) for p in config.image_grid_pinpoints]:
        raise UsageError(
            f"--grid {spec.grid[0]}x{spec.grid[1]} ({pinpoint[0]}x{pinpoint[1]} px) is not a pinpoint of {path} "
            f"({config.image_grid_pinpoints}); pick one of those"
        )
    vision_tower, projector, _, embed = _build(config, with_embeddings)
    targets = {"vision_tower": vision_tower, "projector": projector}
    if embed is not None:
        targets["embed_tokens"] = embed
    load_states(Path(path), targets, PREFIXES, FIX)
    newline = _load_newline(Path(path), config.text_config.hidden_size)
    return frozen(NextParts(spec, config, vision_tower, projector, Newline(newline), embed, WeightsSource(path=str(path))))
