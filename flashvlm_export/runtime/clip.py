"""A clip through the runtime (Qwen2.5-VL video): its prompt, T, its selection and the LLM input of its kept tokens.

The clip arrives preprocessed, (1, F, 3, H, W) at the graph's frames and side: `read_clip` (runtime/video.py, the
decoder) makes it from a file. The prompt is the model's chat prompt with the video placeholder; the kept tokens are
spliced there, each at the (t, h, w) the graph returned (models/positions.py: the clip's temporal rule), the text
after the clip at its unpruned positions. At K = N this is transformers' own video input (tests/test_qwen_video_handoff.py).

The Qwen3 generation (ModelSpec.timestamped_frames): Qwen3VLProcessor expands the video placeholder into one segment
per frame group, `<t seconds><|vision_start|>` + the group's tokens + `<|vision_end|>`, t the mean time of the group's
two frames (group_timestamps). The prompt here holds one placeholder per group (clip_prompt_ids); each group's kept
rows are spliced at its own placeholder, at (0, h, w) from the group's start, every timestamp and the text between at
its unpruned positions (timestamped_positions), as Qwen3-VL's get_rope_index places them.
"""

from __future__ import annotations

import torch

from flashvlm_export.errors import UsageError
from flashvlm_export.models.positions import image_extent, sequence_positions
from flashvlm_export.models.registry import adapter
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.runtime.answer import LLMInput, deepstack_prefill, image_position, splice, splice_rows


def video_token_index(spec: ModelSpec) -> int:
    """The id of the model's video placeholder (<|video_pad|>); a model without a video path is a one-line error."""
    family = adapter(spec)
    token = getattr(family, "VIDEO_PLACEHOLDER", None)
    if not spec.has_video or token not in spec.special_tokens:
        raise UsageError(f"--video: {spec.name} has no video path; use a Qwen2.5-VL model (qwen2.5-vl-3b, -7b, -tiny)")
    return spec.special_tokens[token]


def group_timestamps(frame_indices, source_fps: float, temporal: int = 2) -> list[float]:
    """Seconds of each frame group, as Qwen3VLProcessor._calculate_timestamps computes them: each sampled frame's index
    over the source fps, the list padded with its last index to a multiple of `temporal`, then the mean of each
    group's first and last frame."""
    indices = [int(i) for i in frame_indices]
    indices += [indices[-1]] * (-len(indices) % temporal)
    seconds = [i / source_fps for i in indices]
    return [(seconds[i] + seconds[i + temporal - 1]) / 2 for i in range(0, len(seconds), temporal)]


def timestamped_groups(timestamps) -> str:
    """The video placeholder's expansion with one placeholder per group (Qwen3VLProcessor.replace_video_token's text)."""
    return "".join(f"<{t:.1f} seconds><|vision_start|><|video_pad|><|vision_end|>" for t in timestamps)


def clip_prompt_ids(tokenizer, question: str, spec: ModelSpec, timestamps=None) -> list[int]:
    """Token ids of the clip's chat prompt: one video placeholder; for the Qwen3 generation one per frame group, each
    after its timestamp (`timestamps`: group_timestamps)."""
    video_token_index(spec)
    prompt = adapter(spec).video_prompt(question)
    if spec.timestamped_frames:
        if timestamps is None:
            raise ValueError(f"{spec.name} separates a clip's frame groups by their timestamps: pass them")
        prompt = prompt.replace(adapter(spec).VIDEO_PLACEHOLDER, timestamped_groups(timestamps), 1)
    return list(tokenizer(prompt).input_ids)


def placeholder_positions(token_ids: list[int], spec: ModelSpec, groups: int) -> list[int]:
    """Where the clip's placeholders stand: one (Qwen2.5-VL) or one per frame group (the Qwen3 generation); a question
    that adds or removes one is a one-line error."""
    index = video_token_index(spec)
    found = [i for i, t in enumerate(token_ids) if t == index]
    want = groups if spec.timestamped_frames else 1
    if len(found) != want:
        raise UsageError(
            f"the clip's prompt holds {len(found)} video placeholders where {want} belong; remove "
            f"{adapter(spec).VIDEO_PLACEHOLDER!r} from --question"
        )
    return found


def timestamped_positions(token_ids: list[int], spec: ModelSpec, group_of, positions) -> tuple[torch.Tensor, int]:
    """(3, L) position ids of a timestamped clip's prompt (one placeholder per group) with group g's placeholder
    replaced by its kept rows (group_of[i]: the group of kept row i, ascending), each at the running text position +
    its (0, h, w); and the first generated token's position.
    Qwen3-VL's get_rope_index: text advances one per token, a group by max(rows, columns)."""
    index = video_token_index(spec)
    group_of = torch.as_tensor(group_of)
    positions = torch.as_tensor(positions)
    extent = image_extent(spec)
    columns, cursor, g = [], 0, 0
    for token in token_ids:
        if token != index:
            columns.append(torch.full((3, 1), cursor, dtype=torch.int64))
            cursor += 1
            continue
        columns.append(positions[group_of == g].to(torch.int64).T + cursor)
        cursor += extent
        g += 1
    return torch.cat(columns, dim=1), cursor


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
    embed_tokens,
    token_ids: list[int],
    spec: ModelSpec,
    visual_embeds: torch.Tensor,
    positions,
    *,
    last_t: int,
    indices=None,
    deepstack=None,
) -> LLMInput:
    """visual_embeds (K, Dl) spliced at the video placeholder, at the graph's `positions` (K, 3), the text around them
    where the unpruned sequence puts it (after the clip: its start + max(rows, columns), as after an image).
    `last_t`: clip_position_ids'. The Qwen3 generation: `indices` (K,), the kept tokens (group g: g*n .. (g+1)*n - 1),
    put each row at its own group's placeholder (timestamped_positions); Qwen3-VL's `deepstack` (L, K, Dl) rows go
    with them (answer.deepstack_prefill)."""
    index = video_token_index(spec)
    if not spec.timestamped_frames:
        embeds = splice(embed_tokens, token_ids, index, visual_embeds)
        ids, next_position = clip_position_ids(token_ids, spec, positions, visual_embeds.shape[0], last_t=last_t)
        return LLMInput(embeds, ids[:, None].to(embeds.device), next_position)
    if indices is None or len(indices) != visual_embeds.shape[0]:
        raise ValueError(f"{spec.name} needs the K kept indices to place each row in its frame group")
    group_of = torch.as_tensor(indices) // spec.n_tokens
    ids, next_position = timestamped_positions(token_ids, spec, group_of, positions)
    counts = torch.bincount(group_of, minlength=token_ids.count(index)).tolist()
    embeds, visual = splice_rows(embed_tokens, token_ids, index, counts, visual_embeds)
    device = embeds.device
    prefill = None
    if spec.deepstack_layers:
        embeds, prefill = deepstack_prefill(embed_tokens, embeds, visual, index, visual_embeds, deepstack, spec, video=True)
    return LLMInput(embeds, ids[:, None].to(device), next_position, prefill)


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
    """The clip at the graph's F frames and shape (spec.image_shape), through runtime/video.py's decoder (imported on
    first use): a PreparedClip, its pixel_values (1, F, 3, S, S) fp32; `model_dir`: the checkpoint's processor config."""
    try:
        from flashvlm_export.runtime.video import read_clip as decode
    except ModuleNotFoundError as exc:
        if exc.name != "flashvlm_export.runtime.video":
            raise
        raise UsageError("--video needs the clip decoder (flashvlm_export/runtime/video.py), absent from this install") from None
    return decode(path, frames, spec.image_shape, fps=fps, model_dir=model_dir, family=adapter(spec))
