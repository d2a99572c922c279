"""3-axis rotary positions (t, h, w) of Qwen2.5-VL's visual tokens and of the text around them: one home.

Qwen2.5-VL's get_rope_index places the text before the image at 0..p-1 on all three axes, the image's
token at row h, column w at (p, p + h, p + w) (a still image has t = 0), and the text after the image at
p + max(rows, columns) onwards. Pruning keeps each kept token's position and the text's unpruned positions
(docs/ALGORITHM.md "Batches and other models"): the graphs return `token_positions(spec)[indices]`, relative to
the image's start p, and `sequence_positions` lays out the LLM's whole (3, L) position ids from them.

A clip (video) of F frames is G = F / 2 temporal groups: group g's tokens sit at t = floor(g * tokens_per_second *
second_per_grid_t) (second_per_grid_t = temporal_patch_size / fps, the processor's), h and w as an image's; the text
after the clip advances by max(rows, columns) as after an image (transformers 5.x get_rope_index: the temporal extent
does not move the text).

The Qwen3 generation (ModelSpec.timestamped_frames) separates a clip's groups by timestamp text (`<t seconds>` then
the group's vision_start): its get_rope_index places each group as an image of its own, at the running text
position, so a clip token's position is (0, h, w) relative to its group's start (clip_token_positions), and the
runtime lays the groups out between their timestamps (runtime/clip.py).
"""

from __future__ import annotations

import torch

from flashvlm_export.models.spec import ModelSpec


def token_positions(spec: ModelSpec) -> torch.Tensor:
    """(N, 3) int64: each visual token's (t, h, w) relative to the image's start, raster order (t = 0: a still image)."""
    height, width = spec.token_grid
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1)


def image_extent(spec: ModelSpec) -> int:
    """How far the image advances the text's position: max(rows, columns) of the token grid (Qwen's get_rope_index)."""
    return max(spec.token_grid)


def sequence_positions(before: int, kept: torch.Tensor, after: int, extent: int) -> torch.Tensor:
    """(3, before + K + after) int64 position ids: text 0..before-1, the kept tokens at before + (t, h, w)
    (kept: (K, 3)), the text after the image at before + extent onwards, as in the unpruned sequence."""
    head = torch.arange(before).expand(3, -1)
    image = kept.to(torch.int64).T + before
    tail = torch.arange(after).expand(3, -1) + before + extent
    return torch.cat([head, image, tail], dim=1)


def second_per_grid(spec: ModelSpec, fps: float) -> float:
    """Seconds one temporal group spans for frames sampled at `fps`: temporal_patch_size / fps (Qwen's processor)."""
    return spec.temporal_patch / fps


def temporal_positions(spec: ModelSpec, groups: int, second_per_grid_t: float) -> torch.Tensor:
    """(G,) int64: each temporal group's t, as get_rope_index computes it (time interval in float32, truncated)."""
    interval = spec.vision["tokens_per_second"] * torch.tensor(second_per_grid_t, dtype=torch.float32)
    return (torch.arange(groups) * interval).long()


def clip_token_positions(spec: ModelSpec, frames: int, second_per_grid_t: float) -> torch.Tensor:
    """(G * N, 3) int64: each token of a clip of `frames` frames, group-major raster order, at its (t, h, w): from the
    clip's start (Qwen2.5-VL), or from its own group's start (the Qwen3 generation: t = 0, whatever the fps)."""
    groups = frames // spec.temporal_patch
    table = token_positions(spec).repeat(groups, 1)
    if not spec.timestamped_frames:
        table[:, 0] = temporal_positions(spec, groups, second_per_grid_t).repeat_interleave(spec.n_tokens)
    return table
