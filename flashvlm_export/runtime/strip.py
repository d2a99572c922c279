"""See a clip's selection: one panel per temporal group, its kept tokens outlined over the group's first frame.

Qwen2.5-VL encodes frames 2g and 2g+1 together (temporal_patch_size 2), so temporal group g has one grid of
merged tokens (grid_side x grid_side) shared by both frames; a panel shows frame 2g. Colours, the dimming of
dropped cells and the panel spacing are the image heatmap's (runtime/heatmap.py): kept cells keep their pixels
and get a border, dropped ones are shown at DROPPED_DIM brightness. Panels wrap into rows of `columns`.
"""

from __future__ import annotations

import math

import numpy as np

from flashvlm_export.runtime.heatmap import BORDER, DROPPED_DIM, FOOTER, GAP, IMPORTANT_RGB, TITLE, kept_panel, rows_cols
from flashvlm_export.runtime.video import TEMPORAL_PATCH

KEPT_RGB = IMPORTANT_RGB  # a strip has no roles: every kept token is outlined in one colour


def _layout(groups: int, columns: int) -> tuple[int, int]:
    cols = max(1, min(columns, groups))
    return cols, math.ceil(groups / cols)


def strip_cell_origin(group: int, token: int, grid_side, side, groups: int, columns: int = 4) -> tuple[int, int]:
    """(x, y) in the strip of the top-left pixel of `token`'s cell (raster index in its group's grid) in `group`'s panel
    (grid_side and side: a side each, or (rows, columns) and (H, W) for a non-square graph)."""
    cols, _ = _layout(groups, columns)
    row, col = divmod(group, cols)
    (grid_rows, grid_cols), (height, width) = rows_cols(grid_side), rows_cols(side)
    r, c = divmod(token, grid_cols)
    return col * (width + GAP) + c * (width // grid_cols), row * (TITLE + height + GAP) + TITLE + r * (height // grid_rows)


def clip_strip(
    frames: np.ndarray,  # (F, S, S, 3) uint8: the frames the model sees (PreparedClip.shown)
    kept: list[list[int]],  # per temporal group: kept tokens, raster indices within the group's grid
    grid_side,  # merged tokens per side of one group's grid (S / 28 for Qwen2.5-VL), or (rows, columns)
    timestamps: list[float] | None = None,  # (F,) seconds, for the panel titles
    columns: int = 4,  # panels per row
    footer: str = "",  # a line under the legend (the rule and the budget, say)
):
    """The picture (PIL.Image): a panel per temporal group titled with its index, time and kept count; a legend below."""
    from PIL import Image, ImageDraw

    groups = len(kept)
    if groups == 0 or frames.shape[0] != groups * TEMPORAL_PATCH:
        raise ValueError(f"{frames.shape[0]} frames do not make {groups} temporal groups of {TEMPORAL_PATCH}")
    panel_h, side = frames.shape[1], frames.shape[2]
    grid_rows, grid_cols = rows_cols(grid_side)
    n = grid_rows * grid_cols
    cols, rows = _layout(groups, columns)
    width = max(cols * side + (cols - 1) * GAP, 420)
    height = rows * (TITLE + panel_h) + (rows - 1) * GAP + FOOTER + (14 if footer else 0)
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for g, tokens in enumerate(kept):
        if any(not 0 <= t < n for t in tokens):
            raise ValueError(f"group {g}: kept tokens must lie in [0, {n}), got {sorted(tokens)}")
        mask = np.zeros(n, dtype=bool)
        mask[list(tokens)] = True
        row, col = divmod(g, cols)
        x, y = col * (side + GAP), row * (TITLE + panel_h + GAP)
        first = g * TEMPORAL_PATCH
        picture.paste(
            Image.fromarray(kept_panel(frames[first], mask, np.zeros(n, dtype=bool), (grid_rows, grid_cols))), (x, y + TITLE)
        )
        when = f" t={timestamps[first]:.2f}s" if timestamps is not None else ""
        draw.text((x + 2, y + 3), f"group {g}{when} kept {int(mask.sum())}/{n}", fill=(0, 0, 0))
    total = sum(len(set(tokens)) for tokens in kept)
    y = rows * (TITLE + panel_h) + (rows - 1) * GAP + 4
    draw.rectangle([2, y + 1, 12, y + 11], outline=KEPT_RGB, width=BORDER)
    draw.text(
        (16, y),
        f"kept {total}/{groups * n} tokens over {groups} groups; dropped cells at {DROPPED_DIM:.0%} brightness",
        fill=(0, 0, 0),
    )
    draw.text(
        (2, y + 15),
        f"a panel shows frame {TEMPORAL_PATCH}g of the frames {TEMPORAL_PATCH}g, {TEMPORAL_PATCH}g+1 that group g encodes",
        fill=(0, 0, 0),
    )
    if footer:
        draw.text((2, y + 29), footer, fill=(0, 0, 0))
    return picture
