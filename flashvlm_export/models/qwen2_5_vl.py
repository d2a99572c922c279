"""The Qwen2.5-VL family adapter (models/adapter.py): the vision tower as a static graph, X, a, P(X) and positions.

docs/ALGORITHM.md "Batches and other models", Qwen2.5-VL, from the authors' port (CaiKaitong/FlashVLM,
Qwen2_5VL/flashvlm_qwen_2_5_VL.py):
- P(X): the patch merger's output rows in raster order (the merger runs in window order; the reverse window
  index restores raster order). X = P(X): step 10's Gram is taken on the merger's outputs.
- a: the last vision block's post-softmax attention, mean over heads, summed over query rows (the attention each
  patch receives), averaged over each 2x2 merge group, in raster order.

`QwenEncoderCore` is transformers' Qwen2_5_VisionTransformerPretrainedModel.forward for one fixed image size,
with every data-dependent index (window order, cumulative window lengths, rotary angles) computed once at build
time: the window attention becomes a constant block-diagonal mask, so the graph has static shapes and no loops.
`reference_features` runs transformers' own forward (its processor's patchify, its window attention) and reads
the last block's attention through a recording attention function: the parity reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flashvlm_export.errors import UsageError
from flashvlm_export.models.adapter import frozen, random_embeddings
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.models.vision import VisionEncoder
from flashvlm_export.models.weights import WeightsSource, load_states, open_checkpoint

NAME = "Qwen2.5-VL"  # how messages name its checkpoints
MODEL_TYPE = "qwen2_5_vl"
GGUF_ARCH = "qwen2vl"  # llama.cpp's architecture of its LLM (M-RoPE with rope sections)
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Qwen2VLImageProcessor's (OpenAI CLIP's)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_PROCESSOR_NAME = "Qwen2VLVideoProcessor"  # how messages name the clip settings' source (runtime/video.py)
RESIZE = "stretch"  # bicubic to the exported side, as Qwen's processor resizes (no crop)
TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
)
IMAGE_PLACEHOLDER = "<|image_pad|>"
VIDEO_PLACEHOLDER = "<|video_pad|>"  # a clip's tokens go where the processor puts <|video_pad|> (runtime/clip.py)
BOS_TOKEN, EOS_TOKEN = None, "<|im_end|>"  # Qwen's tokenizer adds no BOS; a chat turn ends at <|im_end|>
RECORDING = "record_eager"  # keeps the attention weights (reference only); a name with "flash" would pick the flash path

PREFIXES = {  # checkpoint key prefixes (Qwen's release layout, transformers >= 4.52 layout) -> part
    "visual": ("visual.", "model.visual."),
    "embed_tokens": ("model.embed_tokens.", "model.language_model.embed_tokens."),
}
FIX = "point --model-path at a complete Qwen2.5-VL checkpoint (config.json + *.safetensors)"


def LLM_CLASS():
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration


def chat_prompt(question: str) -> str:
    return TEMPLATE.format(question=question)


def video_prompt(question: str) -> str:
    """The chat prompt of a clip: Qwen's template with the video placeholder where an image's stands."""
    return chat_prompt(question).replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, 1)


def IMAGE_PROCESSOR():
    """The checkpoint's image processor class: Qwen2VLImageProcessorPil (runtime/image.py stretches to the side first)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil


def processor_pixels(output, spec: ModelSpec) -> torch.Tensor:
    """(1, 3, H, W) fp32 from the processor's flat patches of one H x W image (unpatchify)."""
    flat = torch.as_tensor(output["pixel_values"], dtype=torch.float32)
    grid = [int(x) for x in output["image_grid_thw"][0]]
    height, width = spec.image_shape
    rows, cols = height // spec.patch_size, width // spec.patch_size
    if grid != [1, rows, cols]:
        raise UsageError(
            f"the image processor made a {grid[1]}x{grid[2]} patch grid but {spec.name} takes {rows}x{cols} "
            f"({height}x{width} px); use the checkpoint the graph was exported from"
        )
    return unpatchify(flat, spec.image_shape, spec.patch_size, spec.merge)


def adopt_parts(model, parts: QwenParts) -> None:
    """A random-weight Qwen2_5_VLForConditionalGeneration takes the graph's vision tower and embeddings."""
    model.model.visual.load_state_dict(parts.visual.state_dict())
    model.model.language_model.embed_tokens.load_state_dict(parts.embed_tokens.state_dict())


def full_config(spec: ModelSpec, config_class=None):
    """The whole model's config, of `config_class` (default Qwen2_5_VLConfig; the Qwen3 generation passes its own,
    which takes the same keys)."""
    from transformers import Qwen2_5_VLConfig

    tokens = spec.special_tokens
    vision = dict(spec.vision, patch_size=spec.patch_size, spatial_merge_size=spec.merge, in_channels=3)
    text = dict(spec.text, eos_token_id=tokens["<|im_end|>"], bos_token_id=tokens["<|endoftext|>"])
    config = (config_class or Qwen2_5_VLConfig)(
        vision_config=vision,
        text_config=text,
        image_token_id=spec.image_token_index,
        vision_start_token_id=tokens["<|vision_start|>"],
        vision_end_token_id=tokens["<|vision_end|>"],
        video_token_id=tokens["<|video_pad|>"],
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    return config


def patchify(pixel_values: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B * H/patch * W/patch, 3 * temporal * patch * patch): Qwen2VLImageProcessor's flat layout.

    Patches in merge-group-major order (gh/m, gw/m, m, m), each flattened as (C, T, ph, pw) with the still image
    repeated over the T temporal frames, exactly as the processor's patchify; at most 8 dimensions (TensorRT's).
    """
    x = frame_patches(pixel_values, patch, merge)
    x = torch.cat([x] * temporal, dim=2)  # a Concat: TorchScript exports an expand with a data-dependent shape
    return x.reshape(x.shape[0], -1)


def frame_patches(pixel_values: torch.Tensor, patch: int, merge: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B * H/patch * W/patch, 3, 1, patch, patch): one frame's patches in merge-group-major order."""
    b, c, h, w = pixel_values.shape
    gh, gw = h // patch, w // patch
    x = pixel_values.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, mh, mw, C, ph, pw)
    return x.reshape(b * gh * gw, c, 1, patch, patch)


def patchify_clip(frames: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """(B, F, 3, H, W) -> (B * F/temporal * H/patch * W/patch, 3 * temporal * patch * patch): Qwen2VLVideoProcessor's
    flat layout of a clip whose F is a multiple of `temporal`: temporal group by group, each as an image's patches
    whose `temporal` frames are the group's consecutive frames (an image repeats one frame)."""
    b, f, c, h, w = frames.shape
    groups = frames.reshape(b * (f // temporal), temporal, c, h, w)
    x = torch.cat([frame_patches(groups[:, t], patch, merge) for t in range(temporal)], dim=2)  # (B*G*S, C, T, ph, pw)
    return x.reshape(x.shape[0], -1)


def unpatchify(flat: torch.Tensor, shape: tuple[int, int], patch: int, merge: int) -> torch.Tensor:
    """patchify's inverse for one image: (H/patch) x (W/patch) flat patches -> (1, 3, H, W), from the first temporal
    frame."""
    (height, width), c = shape, 3
    gh, gw = height // patch, width // patch
    x = flat.reshape(gh // merge, gw // merge, merge, merge, c, -1, patch, patch)[:, :, :, :, :, 0]
    x = x.permute(4, 0, 2, 5, 1, 3, 6)  # (C, gh/m, mh, ph, gw/m, mw, pw)
    return x.reshape(1, c, height, width).contiguous()


def check_last_block(vision_config) -> None:
    """`a` is read from the last vision block, which must attend over the whole image (3B and 7B: block 31 of 32);
    a windowed last block would give each patch only its window's attention, and transformers' eager path would
    hand the reference one window's weights."""
    last = vision_config.depth - 1
    if last not in set(vision_config.fullatt_block_indexes):
        raise UsageError(
            f"the vision tower's last block ({last}) is windowed (full attention in blocks {list(vision_config.fullatt_block_indexes)}); "
            "FlashVLM's saliency needs a full-attention last block: use a Qwen2.5-VL checkpoint whose last block attends over the image"
        )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def vision_attention(attn, h: torch.Tensor, heads: int, cos, sin, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A Qwen vision block's attention (Qwen2.5-VL's and the Qwen3 generation's alike: fused qkv, rotary in fp32,
    eager softmax), batched: (B, S, D) -> output, weights (B, heads, S, S); `mask` (S, S) additive, or None for
    attention over the whole image."""
    b, s, d = h.shape
    qkv = attn.qkv(h).reshape(b, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # (3, B, H, S, hd)
    q, k, v = qkv[0], qkv[1], qkv[2]
    qf, kf = q.float(), k.float()  # apply_rotary_pos_emb_vision rotates in fp32
    q = (qf * cos + rotate_half(qf) * sin).to(v.dtype)
    k = (kf * cos + rotate_half(kf) * sin).to(v.dtype)
    scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    out = torch.matmul(weights, v).transpose(1, 2).reshape(b, s, d)
    return attn.proj(out), weights


class QwenEncoderCore(nn.Module):
    """pixel_values (B, 3, H, W) -> X = P(X) (B, N, Dl), a (B, N), P(X) (B, N, Dl) for one fixed (H, W)."""

    def __init__(self, visual: nn.Module, image_shape: tuple[int, int]):
        super().__init__()
        from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

        cfg = visual.config
        check_last_block(cfg)
        self.patch, self.merge, self.temporal = cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size
        height, width = (image_shape, image_shape) if isinstance(image_shape, int) else image_shape  # a side: square
        grid = torch.tensor([[1, height // self.patch, width // self.patch]])  # (t, h, w) patches
        window_index, cu_windows = get_vision_window_index(grid, self.merge, cfg.window_size, self.patch)
        unit = self.merge**2
        patch_order = (window_index[:, None] * unit + torch.arange(unit)).reshape(-1)  # window order of the patches
        cos, sin = visual.rotary_pos_emb(torch.empty(0), get_vision_position_ids(grid, self.merge))
        self.register_buffer("patch_order", patch_order, persistent=False)
        self.register_buffer("token_order", torch.argsort(window_index), persistent=False)  # raster <- window order
        self.register_buffer("cos", cos[patch_order].float(), persistent=False)  # (S, head_dim)
        self.register_buffer("sin", sin[patch_order].float(), persistent=False)
        lengths = (cu_windows[1:] - cu_windows[:-1]).tolist()
        window = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))  # (S,) window of each patch
        blocked = torch.where(window[:, None] == window[None, :], 0.0, torch.finfo(torch.float32).min)
        self.register_buffer("window_mask", blocked, persistent=False)  # (S, S) additive: 0 inside a window
        self.patch_embed, self.blocks, self.merger = visual.patch_embed, visual.blocks, visual.merger
        self.full_attention = set(cfg.fullatt_block_indexes)
        self.heads = cfg.num_heads

    def attention(self, block, h: torch.Tensor, windowed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Qwen2_5_VLVisionAttention with eager attention, batched: (B, S, D) -> output, weights (B, heads, S, S)."""
        return vision_attention(block.attn, h, self.heads, self.cos, self.sin, self.window_mask if windowed else None)

    def forward(self, pixel_values: torch.Tensor):
        return self.encode(patchify(pixel_values, self.patch, self.merge, self.temporal), pixel_values.shape[0])

    def encode(self, flat: torch.Tensor, b: int):
        """The tower on the processor's flat patches of b images (or temporal groups) -> X = P(X), a, P(X)."""
        h = self.patch_embed(flat).reshape(b, -1, self.patch_embed.embed_dim)  # (B, S, D) processor order
        h = h.index_select(1, self.patch_order)  # window order
        for i, block in enumerate(self.blocks):
            out, weights = self.attention(block, block.norm1(h), i not in self.full_attention)
            h = h + out
            h = h + block.mlp(block.norm2(h))
        received = weights.float().mean(dim=1).sum(dim=1)  # last block: attention each patch receives, (B, S)
        n = received.shape[1] // self.merge**2
        saliency = received.reshape(b, n, self.merge**2).mean(dim=-1).index_select(1, self.token_order)  # (B, N)
        merged = self.merger(h).reshape(b, n, -1).index_select(1, self.token_order)  # (B, N, Dl) raster order
        return merged, saliency, merged


def video_processor_patchify(videos: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int):
    """Qwen2VLVideoProcessor.patchify (transformers 5.x), line for line: its module needs torchvision, which the
    reference does not otherwise need (tests/test_qwen_video.py checks this copy against the installed source)."""
    batch_size, num_frames, channel, resized_height, resized_width = videos.shape
    if pad := -num_frames % temporal_patch_size:
        repeats = videos[:, -1:].expand(-1, pad, -1, -1, -1)
        videos = torch.cat((videos, repeats), dim=1)
        num_frames += pad
    grid_t = num_frames // temporal_patch_size
    grid_h, grid_w = resized_height // patch_size, resized_width // patch_size
    patches = videos.view(
        batch_size, grid_t, temporal_patch_size, channel, grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
    )  # fmt: skip
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    flatten_patches = patches.reshape(
        batch_size, grid_t * grid_h * grid_w, channel * temporal_patch_size * patch_size * patch_size
    )
    return flatten_patches, grid_t, grid_h, grid_w


class QwenClipEncoderCore(nn.Module):
    """A clip (B, F, 3, H, W), F a multiple of the temporal patch (2) -> X = P(X) (B, G*n, Dl), a (B, G*n), P(X)[, the
    Qwen3-VL tower's DeepStack rows (B, L, G*n, Dl)], in the clip's token order (temporal group by group, raster within
    each): the G = F/2 temporal groups are a batch of images through the family's encoder core (`core.encode`), as
    transformers' tower attends within each group (cu_seqlens per group). `name`: the family, for messages."""

    def __init__(self, core: nn.Module, frames: int, name: str = NAME):
        super().__init__()
        if frames % core.temporal:
            raise UsageError(
                f"--frames {frames} is not a multiple of {core.temporal} ({name}'s temporal patch); use --frames {frames + 1}"
            )
        self.core, self.groups = core, frames // core.temporal

    def forward(self, frames: torch.Tensor):
        b = frames.shape[0]
        c = self.core
        x, a, p, *deepstack = c.encode(patchify_clip(frames, c.patch, c.merge, c.temporal), b * self.groups)  # (B*G, n, Dl), ...
        out = (x.reshape(b, -1, x.shape[-1]), a.reshape(b, -1), p.reshape(b, -1, p.shape[-1]))
        if not deepstack:
            return out
        d = deepstack[0]  # (B*G, L, n, Dl) -> (B, L, G*n, Dl)
        d = d.reshape(b, self.groups, *d.shape[1:]).transpose(1, 2)
        return (*out, d.reshape(b, d.shape[1], -1, d.shape[-1]))


def qwen25_recorder():
    """recorder on Qwen2.5-VL's eager attention (imported when the reference first runs)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

    return recorder(eager_attention_forward)


def recorder(eager):
    """transformers' eager attention `eager`, keeping the weights on the module: how the references read `a`. The eager
    path calls it once per attention chunk (per image, per temporal group of a clip): `flashvlm_weights` holds the
    last, `flashvlm_chunks` all of them."""

    def record(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        out, weights = eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        module.flashvlm_weights = weights
        module.__dict__.setdefault("flashvlm_chunks", []).append(weights)
        return out, weights

    return record


@dataclass
class QwenParts:
    spec: ModelSpec
    config: object  # transformers Qwen2_5_VLConfig
    visual: nn.Module  # Qwen2_5_VisionTransformerPretrainedModel, fp32
    embed_tokens: nn.Module | None  # the LLM's embed_tokens, when asked for
    source: WeightsSource

    def encoder(self, dtype: torch.dtype = torch.float32) -> VisionEncoder:
        return VisionEncoder(QwenEncoderCore(self.visual, self.spec.image_shape), dtype)

    @torch.no_grad()
    def reference_features(self, pixel_values: torch.Tensor):
        """X = P(X), a, P(X) from transformers' own vision tower, one image at a time (the authors' rule for a)."""
        from transformers import AttentionInterface
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.vision_utils import get_vision_window_index

        AttentionInterface.register(RECORDING, qwen25_recorder())
        cfg = self.visual.config
        processor = Qwen2VLImageProcessorPil()
        last = self.visual.blocks[-1].attn
        merged, saliency = [], []
        saved = cfg._attn_implementation
        cfg._attn_implementation = RECORDING
        try:
            for image in pixel_values:
                flat, gh, gw = processor.patchify(image.numpy(), cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size)
                grid = torch.tensor([[1, gh, gw]])
                out = self.visual(torch.from_numpy(flat.copy()), grid_thw=grid)
                window_index, _ = get_vision_window_index(grid, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)
                received = last.flashvlm_weights[0].mean(dim=0).sum(dim=0)  # (S,) window order
                a = received.view(-1, cfg.spatial_merge_size**2).mean(dim=-1)[torch.argsort(window_index)]
                merged.append(out.pooler_output)
                saliency.append(a)
        finally:
            cfg._attn_implementation = saved
        p = torch.stack(merged)
        return p, torch.stack(saliency), p

    def clip_encoder(self, frames: int, dtype: torch.dtype = torch.float32) -> VisionEncoder:
        return VisionEncoder(QwenClipEncoderCore(QwenEncoderCore(self.visual, self.spec.image_shape), frames), dtype)

    @torch.no_grad()
    def reference_clip_features(self, clips: torch.Tensor):
        """X = P(X), a, P(X) of clips (B, F, 3, H, W) from transformers' own tower, one clip at a time, fed as Qwen's
        video processor feeds it: its patchify (pixel_values_videos) and video_grid_thw = (F/2, H/14, W/14)."""
        from transformers import AttentionInterface
        from transformers.vision_utils import get_vision_window_index

        AttentionInterface.register(RECORDING, qwen25_recorder())
        cfg = self.visual.config
        m = cfg.spatial_merge_size
        last = self.visual.blocks[-1].attn
        merged, saliency = [], []
        saved = cfg._attn_implementation
        cfg._attn_implementation = RECORDING
        try:
            for clip in clips:
                flat, gt, gh, gw = video_processor_patchify(clip[None], cfg.patch_size, m, cfg.temporal_patch_size)
                grid = torch.tensor([[gt, gh, gw]])
                last.flashvlm_chunks = []
                out = self.visual(flat[0], grid_thw=grid)
                window_index, _ = get_vision_window_index(grid, m, cfg.window_size, cfg.patch_size)
                received = torch.cat([w[0].mean(dim=0).sum(dim=0) for w in last.flashvlm_chunks])  # (G*S,) window order
                merged.append(out.pooler_output)
                saliency.append(received.view(-1, m**2).mean(dim=-1)[torch.argsort(window_index)])
        finally:
            cfg._attn_implementation = saved
        p = torch.stack(merged)
        return p, torch.stack(saliency), p


def _build(config, with_embeddings: bool):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    config.vision_config._attn_implementation = "eager"
    visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config)
    embed = random_embeddings(config.text_config) if with_embeddings else None
    return visual.float(), embed


def random_parts(spec: ModelSpec, seed: int = 0, with_embeddings: bool = False) -> QwenParts:
    torch.manual_seed(seed)
    config = full_config(spec)
    visual, embed = _build(config, with_embeddings)
    return frozen(QwenParts(spec, config, visual, embed, WeightsSource(seed=seed)))


def _check_geometry(spec: ModelSpec, config) -> None:
    vision = config.vision_config
    check_last_block(vision)
    got = (vision.patch_size, vision.spatial_merge_size, vision.out_hidden_size, config.text_config.hidden_size)
    want = (spec.patch_size, spec.merge, spec.text_hidden, spec.text_hidden)
    if got != want:
        raise UsageError(
            f"checkpoint geometry (patch, merge, merger width, Dl) = {got} does not match --model {spec.name} {want}; "
            "pick the --model that matches the checkpoint"
        )


def load_parts(spec: ModelSpec, model_path: str | None = None, with_embeddings: bool = False) -> QwenParts:
    from transformers import Qwen2_5_VLConfig

    path, config = open_checkpoint(spec, model_path, MODEL_TYPE, Qwen2_5_VLConfig, "Qwen2.5-VL", FIX)
    _check_geometry(spec, config)
    visual, embed = _build(config, with_embeddings)
    targets = {"visual": visual}
    if embed is not None:
        targets["embed_tokens"] = embed
    load_states(Path(path), targets, PREFIXES, FIX)
    return frozen(QwenParts(spec, config, visual, embed, WeightsSource(path=str(path))))
