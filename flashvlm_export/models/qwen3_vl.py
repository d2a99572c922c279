"""The Qwen3-VL family adapter (models/adapter.py): the vision tower as a static graph, X, a, P(X), DeepStack rows.

docs/ALGORITHM.md "The Qwen3 generation": no authors' port exists; this is our extension of their Qwen2.5-VL rule.
- P(X) = X: the main merger's outputs in raster order (the processor's merge-group-major patch order is raster order
  of the merged tokens; no windows, so no reordering).
- a: the last vision block's post-softmax attention (every block attends over the whole image), mean over heads,
  summed over query rows, averaged over each 2x2 merge group.
- DeepStack: after each of the tower's deepstack layers, its own merger (post-shuffle LayerNorm) gives one row per
  merged token; `deepstack_features` (B, L, N, Dl). The LLM adds row l to its decoder layer l's output at the
  image positions; the graphs gather the kept tokens' rows at the same indices (`deepstack_embeds` (B, L, K, Dl)).

`Qwen3EncoderCore` is transformers' Qwen3VLVisionModel.forward (Qwen3_5VisionModel's, without DeepStack) for one
fixed image size: the position-embedding resampling (gather indices and bilinear weights) and the rotary angles are
computed once at build time by transformers' own helpers, so the graph has static shapes and no loops.
`reference_features` runs transformers' own forward and reads the last block's attention through a recording
attention function: the parity reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flashvlm_export.errors import UsageError
from flashvlm_export.models.adapter import frozen, random_embeddings
from flashvlm_export.models.qwen2_5_vl import (  # noqa: F401  (the shared processor layout, re-exported for the family)
    BOS_TOKEN,
    EOS_TOKEN,
    IMAGE_PLACEHOLDER,
    IMAGE_PROCESSOR,
    RESIZE,
    VIDEO_PLACEHOLDER,
    QwenClipEncoderCore,
    patchify,
    recorder,
    unpatchify,
    video_processor_patchify,
    vision_attention,
)
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.models.vision import VisionEncoder
from flashvlm_export.models.weights import WeightsSource, load_states, open_checkpoint

NAME = "Qwen3-VL"
MODEL_TYPE = "qwen3_vl"
# llama.cpp's architecture of its LLM (convert_hf_to_gguf.py / conversion/qwen3vl.py Qwen3VLTextModel: interleaved
# M-RoPE, n_deepstack_layers; each image row n_embd x (1 + L) wide: its DeepStack rows appended)
GGUF_ARCH = "qwen3vl"
IMAGE_MEAN = (0.5, 0.5, 0.5)  # the Qwen3-VL checkpoints' preprocessor_config.json
IMAGE_STD = (0.5, 0.5, 0.5)
VIDEO_PROCESSOR_NAME = "Qwen3VLVideoProcessor"
SPREAD_FRAMES = True  # its sample_frames: np.linspace(0, total - 1, F).round(), first and last frame included
# Qwen3-VL's chat template (no default system turn); the video placeholder replaces the image's (video_prompt)
TEMPLATE = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
RECORDING = "record_eager_qwen3"
PREFIXES = {  # checkpoint key prefixes (transformers' layout and the release's) -> part
    "visual": ("model.visual.", "visual."),
    "embed_tokens": ("model.language_model.embed_tokens.", "model.embed_tokens."),
}
FIX = "point --model-path at a complete Qwen3-VL checkpoint (config.json + *.safetensors)"


def LLM_CLASS():
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration


def CONFIG_CLASS():
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig


def VISION_CLASS():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    return Qwen3VLVisionModel


def eager_attention():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import eager_attention_forward

    return eager_attention_forward


def chat_prompt(question: str) -> str:
    return TEMPLATE.format(question=question)


def video_prompt(question: str) -> str:
    """The chat prompt of a clip: the video placeholder where an image's stands (the processor expands it into each
    frame group's timestamp and tokens: runtime/clip.py)."""
    return chat_prompt(question).replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, 1)


def processor_pixels(output, spec: ModelSpec) -> torch.Tensor:
    from flashvlm_export.models import qwen2_5_vl

    return qwen2_5_vl.processor_pixels(output, spec)


def full_config(spec: ModelSpec, config_class=None):
    from flashvlm_export.models import qwen2_5_vl

    return qwen2_5_vl.full_config(spec, config_class or CONFIG_CLASS())


def adopt_parts(model, parts) -> None:
    """A random-weight LLM_CLASS model takes the graph's vision tower and embeddings."""
    model.model.visual.load_state_dict(parts.visual.state_dict())
    model.model.language_model.embed_tokens.load_state_dict(parts.embed_tokens.state_dict())


class Qwen3EncoderCore(nn.Module):
    """pixel_values (B, 3, H, W) -> X = P(X) (B, N, Dl), a (B, N), P(X) (B, N, Dl)[, DeepStack (B, L, N, Dl)]."""

    def __init__(self, visual: nn.Module, image_shape: tuple[int, int]):
        super().__init__()
        from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

        cfg = visual.config
        self.patch, self.merge, self.temporal = cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size
        height, width = (image_shape, image_shape) if isinstance(image_shape, int) else image_shape  # a side: square
        grid = torch.tensor([[1, height // self.patch, width // self.patch]])  # (t, h, w) patches
        indices, weights = get_vision_interpolation_indices_and_weights(
            grid,
            num_grid_per_side=visual.num_grid_per_side,
            mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners,
            spatial_merge_size=self.merge,
        )
        self.register_buffer("interp_indices", indices, persistent=False)  # (S, taps) into the learned grid
        self.register_buffer("interp_weights", weights.float(), persistent=False)
        cos, sin = visual.rotary_pos_emb(torch.empty(0), get_vision_position_ids(grid, self.merge))
        self.register_buffer("cos", cos.float(), persistent=False)  # (S, head_dim), processor order
        self.register_buffer("sin", sin.float(), persistent=False)
        self.patch_embed, self.pos_embed, self.blocks, self.merger = (
            visual.patch_embed,
            visual.pos_embed,
            visual.blocks,
            visual.merger,
        )
        self.deepstack_layers = (
            list(getattr(cfg, "deepstack_visual_indexes", None) or ()) if hasattr(visual, "deepstack_merger_list") else []
        )
        self.deepstack_mergers = visual.deepstack_merger_list if self.deepstack_layers else nn.ModuleList()
        self.heads = cfg.num_heads

    def attention(self, block, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Qwen3VLVisionAttention with eager attention over the whole image, batched: (B, S, D) -> output, weights."""
        return vision_attention(block.attn, h, self.heads, self.cos, self.sin)

    def forward(self, pixel_values: torch.Tensor):
        return self.encode(patchify(pixel_values, self.patch, self.merge, self.temporal), pixel_values.shape[0])

    def encode(self, flat: torch.Tensor, b: int):
        """The tower on the processor's flat patches of b images (or temporal groups) -> X = P(X), a, P(X)[, D]."""
        h = self.patch_embed(flat).reshape(b, -1, self.patch_embed.embed_dim)  # (B, S, D) processor order
        pos = (self.pos_embed(self.interp_indices) * self.interp_weights[:, :, None].to(h.dtype)).sum(1)
        h = h + pos.to(h.dtype)
        deepstack = []
        for i, block in enumerate(self.blocks):
            out, weights = self.attention(block, block.norm1(h))
            h = h + out
            h = h + block.mlp(block.norm2(h))
            if i in self.deepstack_layers:
                rows = self.deepstack_mergers[self.deepstack_layers.index(i)](h)  # (B * N, Dl)
                deepstack.append(rows.reshape(b, -1, rows.shape[-1]))
        received = weights.float().mean(dim=1).sum(dim=1)  # last block: attention each patch receives, (B, S)
        n = received.shape[1] // self.merge**2
        saliency = received.reshape(b, n, self.merge**2).mean(dim=-1)  # (B, N) raster order of the merged tokens
        merged = self.merger(h).reshape(b, n, -1)  # (B, N, Dl)
        if not deepstack:
            return merged, saliency, merged
        return merged, saliency, merged, torch.stack(deepstack, dim=1)  # (B, L, N, Dl)


@dataclass
class Qwen3Parts:
    spec: ModelSpec
    config: object  # Qwen3VLConfig / Qwen3_5Config
    visual: nn.Module  # Qwen3VLVisionModel / Qwen3_5VisionModel, fp32
    embed_tokens: nn.Module | None
    source: WeightsSource
    family_name: str = NAME
    eager: object = None  # the family's eager_attention_forward (the reference's recording wraps it)

    def encoder(self, dtype: torch.dtype = torch.float32) -> VisionEncoder:
        return VisionEncoder(Qwen3EncoderCore(self.visual, self.spec.image_shape), dtype)

    def clip_encoder(self, frames: int, dtype: torch.dtype = torch.float32) -> VisionEncoder:
        core = Qwen3EncoderCore(self.visual, self.spec.image_shape)
        return VisionEncoder(QwenClipEncoderCore(core, frames, self.family_name), dtype)

    @torch.no_grad()
    def _reference(self, flat: torch.Tensor, grid: torch.Tensor):
        """transformers' own tower on the processor's flat patches: P(X), a (per attention chunk), DeepStack rows."""
        from transformers import AttentionInterface

        AttentionInterface.register(RECORDING, recorder(self.eager))
        cfg = self.visual.config
        last = self.visual.blocks[-1].attn
        last.flashvlm_chunks = []
        saved = cfg._attn_implementation
        cfg._attn_implementation = RECORDING
        try:
            out = self.visual(flat, grid_thw=grid)
        finally:
            cfg._attn_implementation = saved
        m = cfg.spatial_merge_size
        received = torch.cat([w[0].mean(dim=0).sum(dim=0) for w in last.flashvlm_chunks])  # (G*S,) processor order
        deepstack = getattr(out, "deepstack_features", None) or []
        d = torch.stack(list(deepstack)) if deepstack else None  # (L, N, Dl)
        return out.pooler_output, received.view(-1, m**2).mean(dim=-1), d

    @staticmethod
    def _stack(rows):
        p = torch.stack([r[0] for r in rows])
        a = torch.stack([r[1] for r in rows])
        if rows[0][2] is None:
            return p, a, p
        return p, a, p, torch.stack([r[2] for r in rows])

    @torch.no_grad()
    def reference_features(self, pixel_values: torch.Tensor):
        """X = P(X), a, P(X)[, D] from transformers' own vision tower, one image at a time, as its processor feeds it."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        cfg = self.visual.config
        processor = Qwen2VLImageProcessorPil()
        rows = []
        for image in pixel_values:
            flat, gh, gw = processor.patchify(image.numpy(), cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size)
            rows.append(self._reference(torch.from_numpy(flat.copy()), torch.tensor([[1, gh, gw]])))
        return self._stack(rows)

    @torch.no_grad()
    def reference_clip_features(self, clips: torch.Tensor):
        """Clips (B, F, 3, H, W) through transformers' own tower as its video processor feeds it (video_grid_thw =
        (F/2, H/16, W/16)): X = P(X), a, P(X)[, D (B, L, G*n, Dl)], group-major."""
        cfg = self.visual.config
        rows = []
        for clip in clips:
            flat, gt, gh, gw = video_processor_patchify(
                clip[None], cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size
            )
            rows.append(self._reference(flat[0], torch.tensor([[gt, gh, gw]])))
        return self._stack(rows)


def build_parts(spec, config, with_embeddings, source, family) -> Qwen3Parts:
    config.vision_config._attn_implementation = "eager"
    visual = family.VISION_CLASS()._from_config(config.vision_config).float()
    embed = random_embeddings(config.text_config) if with_embeddings else None
    return Qwen3Parts(spec, config, visual, embed, source, family.NAME, family.eager_attention())


def random_parts_of(family, spec: ModelSpec, seed: int, with_embeddings: bool) -> Qwen3Parts:
    torch.manual_seed(seed)
    return frozen(build_parts(spec, family.full_config(spec), with_embeddings, WeightsSource(seed=seed), family))


def check_geometry(spec: ModelSpec, config, family) -> None:
    vision = config.vision_config
    got = (vision.patch_size, vision.spatial_merge_size, vision.out_hidden_size, config.text_config.hidden_size)
    want = (spec.patch_size, spec.merge, spec.text_hidden, spec.text_hidden)
    layers = len(getattr(vision, "deepstack_visual_indexes", None) or ())
    if got != want or layers != spec.deepstack_layers:
        raise UsageError(
            f"checkpoint geometry (patch, merge, merger width, Dl) = {got} with {layers} DeepStack layers does not match "
            f"--model {spec.name} {want} with {spec.deepstack_layers}; pick the --model that matches the checkpoint"
        )


def load_parts_of(family, spec: ModelSpec, model_path: str | None, with_embeddings: bool) -> Qwen3Parts:
    path, config = open_checkpoint(spec, model_path, family.MODEL_TYPE, family.CONFIG_CLASS(), family.NAME, family.FIX)
    check_geometry(spec, config, family)
    parts = build_parts(spec, config, with_embeddings, WeightsSource(path=str(path)), family)
    targets = {"visual": parts.visual}
    if parts.embed_tokens is not None:
        targets["embed_tokens"] = parts.embed_tokens
    load_states(Path(path), targets, family.PREFIXES, family.FIX)
    return frozen(parts)


def random_parts(spec: ModelSpec, seed: int = 0, with_embeddings: bool = False) -> Qwen3Parts:
    import sys

    return random_parts_of(sys.modules[__name__], spec, seed, with_embeddings)


def load_parts(spec: ModelSpec, model_path: str | None = None, with_embeddings: bool = False) -> Qwen3Parts:
    import sys

    return load_parts_of(sys.modules[__name__], spec, model_path, with_embeddings)
