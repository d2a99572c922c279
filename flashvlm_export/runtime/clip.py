"""A clip through the runtime (Qwen2.5-VL video): its prompt, T, its selection and the LLM input of its kept tokens.

The clip arrives preprocessed, (1, F, 3, H, W) at the graph's frames and side: `read_clip` (runtime/video.py, the
decoder) makes it from a file. The prompt is the model's chat prompt with the video placeholder; the kept tokens are
spliced there, each at the (t, h, w) the graph returned (models/positions.py: the clip's temporal rule), the text
after the clip at its unpruned positions. At K = N this is transformers' own video input (tests/test_qwen_video_handoff.py).
"""

from __future__ import annotations

import torch

from flashvlm_export.errors import UsageError
from flashvlm_export.models.positions import image_extent, sequence_positions
from flashvlm_export.models.registry import adapter
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.runtime.answer import LLMInput, image_position, splice


def video_token_index(spec: ModelSpec) -> int:
    """The id of the model's video placeholder (<|video_pad|>); a model without a video path is a one-line error."""
    family = adapter(spec)
    token = getattr(family, "VIDEO_PLACEHOLDER", None)
    if not spec.has_video or token not in spec.special_tokens:
        raise UsageError(f"--video: {spec.name} has no video path; use a Qwen2.5-VL model (qwen2.5-vl-3b, -7b, -tiny)")
    return spec.special_tokens[token]


def clip_prompt_ids(tokenizer, question: str, spec: ModelSpec) -> list[int]:
    """Token ids of the clip's chat prompt: one video placeholder."""
    video_token_index(spec)
    return list(tokenizer(adapter(spec).video_prompt(question)).input_ids)


def clip_text_inputs(embed_tokens, token_ids: list[int], spec: ModelSpec, t_max: int, scope: str = "all"):
    """T and its mask for a clip's prompt: every token but the video placeholder (or those before it)."""
    from flashvlm_export.models.prompt import text_inputs

    return text_inputs(embed_tokens, token_ids, t_max, video_token_index(spec), scope=scope)


def expand_video_token(token_ids: list[int], spec: ModelSpec, n: int) -> list[int]:
    """What the model's processor feeds it: the video placeholder repeated n (the clip's tokens) times."""
    index = video_token_index(spec)
    p = image_position(token_ids, index, adapter(spec).VIDEO_PLACEHOLDER)
    return token_ids[:p] + [index] * n + token_ids[p + 1 :]


def clip_llm_input(
    embed_tokens, token_ids: list[int], spec: ModelSpec, visual_embeds: torch.Tensor, positions, *, last_t: int
) -> LLMInput:
    """visual_embeds (K, Dl) spliced at the video placeholder, at the graph's `positions` (K, 3), the text around them
    where the unpruned sequence puts it (after the clip: its start + max(rows, columns), as after an image).
    `last_t`: clip_position_ids'."""
    embeds = splice(embed_tokens, token_ids, video_token_index(spec), visual_embeds)
    ids, next_position = clip_position_ids(token_ids, spec, positions, visual_embeds.shape[0], last_t=last_t)
    return LLMInput(embeds, ids[:, None].to(embeds.device), next_position)


def clip_position_ids(token_ids: list[int], spec: ModelSpec, positions, k: int, *, last_t: int) -> tuple[torch.Tensor, int]:
    """(3, L) int64 position ids of the clip's prompt with its K kept rows at `positions` (K, 3), L = len(token_ids)
    - 1 + K, and the first generated token's position: the one rule both LLM runtimes use (runtime/llama_cpp.py).

    `last_t`: the unpruned clip's largest temporal position (its last group's t; clip_token_positions). The first
    generated token goes where transformers puts it, one past every unpruned position (its rope delta): past the
    text's end, or past the clip's last t when a long clip's t outruns the text (32 frames at 2 fps: t = 30)."""
    if positions is None or tuple(positions.shape) != (k, 3):
        raise ValueError(f"{spec.name} needs (K, 3) positions for its K = {k} visual rows")
    before = image_position(token_ids, video_token_index(spec), adapter(spec).VIDEO_PLACEHOLDER)
    after = len(token_ids) - before - 1
    extent = image_extent(spec)
    return sequence_positions(before, torch.as_tensor(positions), after, extent), before + max(extent + after, last_t + 1)


def read_clip(path, spec: ModelSpec, frames: int, fps: float | None = None, model_dir=None):
    """The clip at the graph's F frames and side S (spec.image_size), through runtime/video.py's decoder (imported on
    first use): a PreparedClip, its pixel_values (1, F, 3, S, S) fp32; `model_dir`: the checkpoint's processor config."""
    try:
        from flashvlm_export.runtime.video import read_clip as decode
    except ModuleNotFoundError as exc:
        if exc.name != "flashvlm_export.runtime.video":
            raise
        raise UsageError("--video needs the clip decoder (flashvlm_export/runtime/video.py), absent from this install") from None
    return decode(path, frames, spec.image_size, fps=fps, model_dir=model_dir)
