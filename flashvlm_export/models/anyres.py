"""Where LLaVA-NeXT's kept visual rows go in the LLM input: one home for the layout (docs/MODELS.md, LLaVA-NeXT).

transformers' LlavaNextModel.pack_image_features lays one photo's N = crops x n projected rows out as
1. the base image's n rows, in raster order;
2. the grid: the crops' token grids side by side (crop (r, c) of the grid covers rows r*s..r*s+s-1 and columns
   c*s..c*s+s-1 of one (rows*s) x (cols*s) grid, s = tokens per side), cut to the photo's own aspect ratio
   (unpad_image: the rows or columns that only the grid's padding covers are dropped), then row by row, each row
   followed by the image_newline row.

Pruning keeps that order for what it keeps: the base image's kept rows first (ascending); then the grid's kept
rows in the unpadded grid's raster order, each run of kept rows of one grid row followed by one image_newline row
(a grid row with no kept token adds nothing). A kept token in the grid's padding is dropped as unpad_image drops
it. With K = N this is exactly pack_image_features (tests/test_llava_next.py proves it through the logits).
"""

from __future__ import annotations

import torch

from flashvlm_export.models.spec import ModelSpec

NEWLINE = -1  # a slot of the layout that holds the image_newline row


def unpadded_window(spec: ModelSpec, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the grid's token rows and columns that the photo covers: transformers' unpad_image
    on the (rows*s) x (cols*s) grid for a photo of image_hw = (height, width) pixels."""
    side = spec.grid_side
    height, width = spec.grid[0] * side, spec.grid[1] * side
    photo_h, photo_w = image_hw
    if photo_w / photo_h > width / height:
        new_height = int(round(photo_h * (width / photo_w), 7))
        pad = (height - new_height) // 2
        return pad, height - pad, 0, width
    new_width = int(round(photo_w * (height / photo_h), 7))
    pad = (width - new_width) // 2
    return 0, height, pad, width - pad


def layout(indices, spec: ModelSpec, image_hw: tuple[int, int]) -> torch.Tensor:
    """(L,) int64: for each slot of the LLM's image span, the position in `indices` (the graph's kept tokens, crop-major
    ascending) of the row that goes there, or NEWLINE."""
    indices = torch.as_tensor(indices, dtype=torch.int64)
    n, side, cols = spec.crop_tokens, spec.grid_side, spec.grid[1]
    crop, local = indices // n, indices % n
    grid_row = (crop - 1) // cols * side + local // side
    grid_col = (crop - 1) % cols * side + local % side
    top, bottom, left, right = unpadded_window(spec, image_hw)
    inside = (crop > 0) & (grid_row >= top) & (grid_row < bottom) & (grid_col >= left) & (grid_col < right)
    base = torch.nonzero(crop == 0).flatten().tolist()
    grid = torch.nonzero(inside).flatten()
    grid = grid[torch.argsort(grid_row[grid] * cols * side + grid_col[grid])].tolist()  # the grid's raster order
    slots = list(base)
    for i, position in enumerate(grid):
        slots.append(position)
        if i + 1 == len(grid) or grid_row[grid[i + 1]] != grid_row[position]:
            slots.append(NEWLINE)
    return torch.tensor(slots, dtype=torch.int64)


def llm_rows(visual_embeds: torch.Tensor, indices, newline: torch.Tensor, spec: ModelSpec, image_hw: tuple[int, int]):
    """(L, Dl): the rows the LLM takes where the prompt's image token stands, from the graph's kept rows (K, Dl)."""
    slots = layout(indices, spec, image_hw)
    rows = torch.cat([visual_embeds, newline.to(visual_embeds.dtype)[None]])  # the newline as row K
    return rows[torch.where(slots == NEWLINE, visual_embeds.shape[0], slots)]


def dropped_by_unpadding(indices, spec: ModelSpec, image_hw: tuple[int, int]) -> int:
    """Kept tokens the layout drops: grid tokens over the padding of a photo whose aspect ratio is not the grid's."""
    slots = layout(indices, spec, image_hw)
    return len(torch.as_tensor(indices)) - int((slots != NEWLINE).sum())
