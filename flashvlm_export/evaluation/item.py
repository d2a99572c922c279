"""A question as the graph and the LLM take it: its picture (runtime/image.py, as `run` prepares a photo) or its clip
(runtime/clip.py, as `run --video` prepares one), the prompt's token ids and text rows, and the positions the LLM
gives the rows of each budget (a clip's rebuilt at its own sampled fps, as `run --video` does)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.errors import UsageError


@dataclass
class Item:
    pixel_values: torch.Tensor  # (1, 3, H, W), (1, crops, 3, H, W) or a clip's (1, F, 3, H, W)
    token_ids: list[int]
    text_embeds: torch.Tensor
    text_mask: torch.Tensor
    input_ms: float  # decoding the picture or clip, the processor, the text rows
    prepared: object | None = None  # runtime/image.PreparedImage (LLaVA-NeXT lays its rows out with it)
    clip: object | None = None  # runtime/video.PreparedClip
    table: torch.Tensor | None = None  # (N, 3) every token's position for the LLM (3-axis rotary models), else None
    last_t: int | None = None  # a clip: the unpruned clip's last t (the text after it starts past it)


ROW_FIX = "fix or remove that row of the data, or stop before it with --limit N"


def _ask(q, message: str) -> UsageError:
    return UsageError(f"question {q.qid}: {message}")


def picture_label(q) -> str:
    """How a one-line error names a question's picture."""
    where = q.image if isinstance(q.image, Path) else f"{len(q.image):,} bytes embedded in the data"
    return f"question {q.qid}'s picture ({where})"


def check_pictures(dataset, max_pixels: int | None = None) -> None:
    """Every picture decoded as the run will decode it (runtime/photo.read_image, the pixel limit included), before
    anything runs: a damaged or oversized one is one line naming its question, not a stop half-way through (where
    --resume would stop at it again). Pillow's verify() alone passes a JPEG cut short: its data is not decoded."""
    from flashvlm_export.runtime.photo import read_image

    for q in dataset.questions:
        if q.image is not None:
            read_image(q.image, max_pixels, label=picture_label(q), fix=ROW_FIX)


def prompt_ids(q, rule, tokenizer, spec, groups: int = 1, timestamps=None) -> list[int]:
    """The prompt's token ids with its one placeholder (a clip's: one per frame group for the Qwen3 generation, each after
    its timestamp; `groups` of them); a question that adds a placeholder is one line naming it."""
    from flashvlm_export.models.prompt import prompt_token_ids
    from flashvlm_export.models.registry import adapter
    from flashvlm_export.runtime.answer import image_position

    family = adapter(spec)
    try:
        if q.video is not None:
            from flashvlm_export.runtime.clip import clip_prompt_ids, placeholder_positions

            ids = clip_prompt_ids(tokenizer, rule.prompt(q), spec, timestamps)
            placeholder_positions(ids, spec, groups)
            return ids
        ids = prompt_token_ids(tokenizer, rule.prompt(q), spec)
        image_position(ids, spec.image_token_index, family.IMAGE_PLACEHOLDER)
        return ids
    except UsageError:
        token = family.VIDEO_PLACEHOLDER if q.video is not None else family.IMAGE_PLACEHOLDER
        raise _ask(
            q,
            f"its text holds {token!r}, the placeholder eval puts where the {'clip' if q.video is not None else 'picture'} "
            f"goes (once); {ROW_FIX}",
        ) from None


def check_text_rows(q, ids: list[int], spec, request, source: str) -> None:
    """The prompt's text rows fit the graph's T_max (text_inputs would refuse it later, in the middle of a run)."""
    from flashvlm_export.models.prompt import text_token_ids

    placeholder = spec.image_token_index
    if q.video is not None:
        from flashvlm_export.runtime.clip import video_token_index

        placeholder = video_token_index(spec)
    rows = len(text_token_ids(ids, placeholder, request.config.text_scope))
    if rows > request.t_max:
        raise _ask(
            q,
            f"its prompt has {rows} text tokens but {source} takes T_max={request.t_max}; re-export with a larger --t-max, "
            "or leave the question out",
        )


def needs_clip_first(q, spec) -> bool:
    """A Qwen3-generation clip's prompt holds each frame group's timestamp: known once the clip is read."""
    return q.video is not None and spec.timestamped_frames


def prepare(q, ids: list[int] | None, info, parts, tokenizer, rule, max_pixels: int | None = None) -> Item:
    """The question's picture or clip through the processor, and its text rows."""
    spec, request = info.spec, info.request
    checkpoint = None if info.weights.random else Path(info.weights.path)
    start = time.perf_counter()
    scope = request.config.text_scope
    if q.video is None:
        from flashvlm_export.models.positions import token_positions
        from flashvlm_export.models.prompt import text_inputs
        from flashvlm_export.runtime.image import prepare_image

        prepared = prepare_image(q.image, spec, checkpoint, max_pixels, label=picture_label(q), fix=ROW_FIX)
        embeds, mask = text_inputs(parts.embed_tokens, ids, request.t_max, spec.image_token_index, scope=scope)
        table = token_positions(spec) if spec.has_positions else None
        ms = (time.perf_counter() - start) * 1e3
        return Item(prepared.pixel_values, ids, embeds, mask, ms, prepared=prepared, table=table)
    from flashvlm_export.models.positions import clip_token_positions, second_per_grid
    from flashvlm_export.runtime.clip import clip_text_inputs, group_timestamps, read_clip

    try:
        clip = read_clip(str(q.video), spec, request.frames, None, checkpoint)
    except UsageError as exc:
        raise _ask(q, str(exc)) from None
    if ids is None:  # the Qwen3 generation: the timestamps are the clip's
        stamps = group_timestamps(clip.indices, clip.source_fps, spec.temporal_patch)
        ids = prompt_ids(q, rule, tokenizer, spec, request.clip.groups, stamps)
        check_text_rows(q, ids, spec, request, info.source)
    embeds, mask = clip_text_inputs(parts.embed_tokens, ids, spec, request.t_max, scope=scope)
    table = clip_token_positions(spec, request.frames, second_per_grid(spec, clip.effective_fps))
    ms = (time.perf_counter() - start) * 1e3
    return Item(clip.pixel_values, ids, embeds, mask, ms, clip=clip, table=table, last_t=int(table[:, 0].max()))


def kept_positions(item: Item, selection, info):
    """The LLM's positions of a budget's kept rows: the graph's (checked against the model's table, as `run` checks
    them), a clip's rebuilt at its own fps; None for a model with 1-D positions."""
    spec, request = info.spec, info.request
    if item.clip is not None:
        from flashvlm_export.runtime.clip_run import clip_positions

        return clip_positions(selection, request, item.clip.effective_fps, info.source, lambda _: None)
    if not spec.has_positions:
        return None
    from flashvlm_export.runtime.run_steps import check_positions

    check_positions(selection, spec, info.source)
    return selection.positions


def full_indices(item: Item, n: int) -> np.ndarray | None:
    """Every token, in order: what a Qwen3-generation clip places by frame group."""
    return np.arange(n) if item.clip is not None else None
