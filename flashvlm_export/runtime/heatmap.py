"""See the selection: kept tokens over the preprocessed image, beside S_int, s, S_ext and F (Figure 4 of the paper).

s (step 5) is the text relevance before step 6 sharpens it: where the question (the prompt's T) points, which
S_ext then narrows to a few patches. It shows what the text scope (--text-scope) changes.

The kept tokens are the graph's (or engine's) own indices. The score panels come from the PyTorch
reference (selector/reference.py fused_scores) on the family's reference_features (the torch vision
tower and projector with the graph's weights); the picture says so.

The roles come from the graph's own selection, never from a recomputation of it: step 9 keeps the top K_imp
by F and step 11 picks the K - K_imp others from below them, so among the graph's kept tokens the important
ones are its K_imp highest in F. The graph returns its kept indices ascending and not its F, so `token_roles`
ranks the graph's kept tokens by the reference's F (ties to the lower index, as step 9): the legend counts
K_imp important and K - K_imp diverse, as the graph kept them, however the reference's own top K_imp differs
(a token the reference ranks in its top K_imp may be one the graph dropped).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.reference import fused_scores, text_relevance

IMPORTANT_RGB = (255, 80, 20)  # step 9
DIVERSE_RGB = (30, 140, 255)  # step 11
DROPPED_DIM = 0.3  # dropped cells are shown at 30% brightness
BORDER = 2  # px of a kept cell's outline
GAP = 8  # px between panels
TITLE = 18  # px of the title strip above the panels
FOOTER = 34  # px of the legend below
PANELS_SOURCE = "score panels: PyTorch reference on the torch encoder's features (the graph's weights)"
# a perceptual dark-blue -> green -> yellow ramp (viridis anchors)
RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


@dataclass
class ScoreMaps:
    s_int: np.ndarray  # (N,) step 1
    relevance: np.ndarray  # (N,) step 5, s: each patch's similarity to the text before sharpening (zeros without text)
    s_ext: np.ndarray  # (N,) step 7
    fused: np.ndarray  # (N,) step 8, F


@torch.no_grad()
def score_maps(parts, pixel_values: torch.Tensor, text_rows: torch.Tensor, config: SelectorConfig) -> ScoreMaps:
    """S_int, s, S_ext and F of one image from the reference's own steps 1-8.

    fused_scores with eta = 0 is max(S_int, 1e-6) and with eta = 1 is max(S_ext, 1e-6): the
    reference's code, not a copy of it (the 1e-6 floor is below what a picture shows).
    """
    _, a, projected, *_ = parts.reference_features(pixel_values)  # (1, N), (1, N, Dl): the family's reference X, a, P(X)

    def scores(eta: float) -> np.ndarray:
        return fused_scores(a[0], projected[0], text_rows, dataclasses.replace(config, eta=eta)).numpy()

    if len(text_rows):
        relevance = text_relevance(projected[0], text_rows, config).numpy()
    else:
        relevance = np.zeros(a.shape[1], dtype=np.float32)
    return ScoreMaps(scores(0.0), relevance, scores(1.0), scores(config.eta))


def token_roles(indices: np.ndarray, fused: np.ndarray, k_imp: int) -> tuple[np.ndarray, np.ndarray]:
    """(important, diverse) boolean masks over N of the graph's kept `indices`: the k_imp of them highest in F
    (stable: ties to the lower index), and the rest. Exactly min(k_imp, K) important, whatever F ranks first."""
    n = fused.shape[0]
    indices = np.asarray(indices, dtype=np.int64)
    ranked = indices[np.argsort(-fused[indices], kind="stable")]  # the kept tokens, highest F first
    important = np.zeros(n, dtype=bool)
    important[ranked[:k_imp]] = True
    diverse = np.zeros(n, dtype=bool)
    diverse[ranked[k_imp:]] = True
    return important, diverse


def _minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _ramp(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 along RAMP."""
    v = np.clip(values, 0.0, 1.0) * (len(RAMP) - 1)
    low = np.floor(v).astype(int).clip(0, len(RAMP) - 2)
    t = (v - low)[..., None]
    return (RAMP[low] * (1 - t) + RAMP[low + 1] * t).round().astype(np.uint8)


def rows_cols(grid) -> tuple[int, int]:
    """A token grid as (rows, columns): a side (square) or the pair."""
    return (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))


def picture_grid(shown: np.ndarray, n: int) -> tuple[int, int]:
    """(rows, columns) of n square token cells over a picture of shown's shape (H x W: a non-square Qwen shape too)."""
    height, width = shown.shape[:2]
    cell = math.isqrt(height * width // n)
    rows, cols = height // cell, width // cell
    if rows * cols != n:
        raise ValueError(f"{n} tokens do not tile a {height}x{width} picture in square cells")
    return rows, cols


def _score_panel(values: np.ndarray, grid, shape) -> np.ndarray:
    """(H, W, 3): the values on the token grid (a side or (rows, columns)), each cell H/rows x W/columns pixels."""
    (rows, cols), (height, width) = rows_cols(grid), rows_cols(shape)
    rgb = _ramp(values.reshape(rows, cols))  # (rows, cols, 3)
    return np.repeat(np.repeat(rgb, height // rows, axis=0), width // cols, axis=1)


def kept_panel(shown: np.ndarray, important: np.ndarray, diverse: np.ndarray, grid) -> np.ndarray:
    """(H, W, 3) uint8: the picture dimmed to DROPPED_DIM, kept cells (important | diverse) bright and outlined in their
    colour; `grid` the token grid, a side or (rows, columns)."""
    rows, cols = rows_cols(grid)
    ch, cw = shown.shape[0] // rows, shown.shape[1] // cols
    out = (shown.astype(np.float64) * DROPPED_DIM).round().astype(np.uint8)
    for token in np.flatnonzero(important | diverse):
        r, c = divmod(int(token), cols)
        y, x = r * ch, c * cw
        out[y : y + ch, x : x + cw] = shown[y : y + ch, x : x + cw]
        colour = IMPORTANT_RGB if important[token] else DIVERSE_RGB
        box = out[y : y + ch, x : x + cw]
        box[:BORDER], box[-BORDER:], box[:, :BORDER], box[:, -BORDER:] = colour, colour, colour, colour
    return out


def cell_origin(token: int, grid, shape) -> tuple[int, int]:
    """(x, y) in the rendered picture of a token's cell's top-left pixel in the kept-token panel (grid and the
    picture's shape: a side each, or (rows, columns) and (H, W))."""
    (rows, cols), (height, width) = rows_cols(grid), rows_cols(shape)
    r, c = divmod(token, cols)
    return c * (width // cols), TITLE + r * (height // rows)


def render_heatmap(
    shown: np.ndarray,  # (H, W, 3) uint8, the preprocessed image
    indices: np.ndarray,  # (K,) the kept tokens
    maps: ScoreMaps,
    k_imp: int,
    kept_source: str,
):
    """The picture: kept tokens over the image, then S_int, s, S_ext, F, with titles and a legend."""
    from PIL import Image, ImageDraw

    n = maps.fused.shape[0]
    grid = picture_grid(shown, n)  # the photo as the graph sees it, unsquashed: a non-square shape's own grid
    height, side = shown.shape[:2]
    important, diverse = token_roles(indices, maps.fused, k_imp)
    panels = [
        (f"kept {len(indices)}/{n}", kept_panel(shown, important, diverse, grid)),
        ("S_int (step 1)", _score_panel(maps.s_int, grid, (height, side))),
        ("s (step 5: text relevance), min-max scaled", _score_panel(_minmax(maps.relevance), grid, (height, side))),
        ("S_ext (step 7)", _score_panel(maps.s_ext, grid, (height, side))),
        ("F (step 8), min-max scaled", _score_panel(_minmax(maps.fused), grid, (height, side))),
    ]
    width = len(panels) * side + (len(panels) - 1) * GAP
    picture = Image.new("RGB", (width, TITLE + height + FOOTER), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for i, (title, pixels) in enumerate(panels):
        x = i * (side + GAP)
        picture.paste(Image.fromarray(pixels), (x, TITLE))
        draw.text((x + 2, 3), title, fill=(0, 0, 0))
    y = TITLE + height + 4
    draw.rectangle([2, y + 1, 12, y + 11], outline=IMPORTANT_RGB, width=BORDER)
    draw.text((16, y), f"important {int(important.sum())} (step 9)", fill=(0, 0, 0))
    draw.rectangle([182, y + 1, 192, y + 11], outline=DIVERSE_RGB, width=BORDER)
    draw.text((196, y), f"diverse {int(diverse.sum())} (step 11)   kept tokens: {kept_source}", fill=(0, 0, 0))
    draw.text((2, y + 15), PANELS_SOURCE + "; colour 0 (dark) .. 1 (yellow)", fill=(0, 0, 0))
    return picture


class _OneCrop:
    """The parts of a model cut into crops, seen as one crop's: score_maps' reference_features for a single image."""

    def __init__(self, parts):
        self.core = parts.core().core  # LLaVA-1.5's encoder core on one 336 px image

    def reference_features(self, pixel_values):
        return self.core(pixel_values)


def _tile(panels: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    side = panels[0].shape[0]
    return np.concatenate([np.concatenate(panels[r * cols : (r + 1) * cols], axis=1) for r in range(rows)], axis=0).reshape(
        rows * side, cols * side, 3
    )


def render_crops_heatmap(
    shown: np.ndarray,  # (crops, S, S, 3) uint8: the base image, then the grid's crops row by row
    indices: np.ndarray,  # (K,) the kept tokens, crop-major
    parts,
    pixel_values: torch.Tensor,  # (1, crops, 3, S, S)
    text_rows: torch.Tensor,
    config: SelectorConfig,
    grid: tuple[int, int],
    k_imp: int,  # per crop
    kept_source: str,
):
    """LLaVA-NeXT: kept tokens over the base image and over the grid's crops (placed as in the photo), then F of each;
    every crop's roles from its own scores (each crop is selected as an image of its own)."""
    from PIL import Image, ImageDraw

    crops, side = shown.shape[0], shown.shape[1]
    one = _OneCrop(parts)
    kept_panels, fused_panels, counts = [], [], [0, 0]
    for c in range(crops):
        maps = score_maps(one, pixel_values[:, c], text_rows, config)
        tokens = maps.fused.shape[0]
        mine = indices[(indices >= c * tokens) & (indices < (c + 1) * tokens)] - c * tokens
        important, diverse = token_roles(mine, maps.fused, k_imp)
        counts[0] += int(important.sum())
        counts[1] += int(diverse.sum())
        kept_panels.append(kept_panel(shown[c], important, diverse, math.isqrt(tokens)))
        fused_panels.append(_score_panel(_minmax(maps.fused), math.isqrt(tokens), side))
    rows, cols = grid
    panels = [
        (f"base image: kept {int(np.sum(indices < tokens))}/{tokens}", kept_panels[0]),
        (
            f"{rows}x{cols} crops: kept {int(np.sum(indices >= tokens))}/{tokens * (crops - 1)}",
            _tile(kept_panels[1:], rows, cols),
        ),
        ("base image: F (step 8)", fused_panels[0]),
        ("crops: F (step 8), each min-max scaled", _tile(fused_panels[1:], rows, cols)),
    ]
    height = max(p.shape[0] for _, p in panels)
    width = sum(p.shape[1] for _, p in panels) + (len(panels) - 1) * GAP
    picture = Image.new("RGB", (width, TITLE + height + FOOTER), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    x = 0
    for title, pixels in panels:
        picture.paste(Image.fromarray(pixels), (x, TITLE))
        draw.text((x + 2, 3), title, fill=(0, 0, 0))
        x += pixels.shape[1] + GAP
    y = TITLE + height + 4
    draw.rectangle([2, y + 1, 12, y + 11], outline=IMPORTANT_RGB, width=BORDER)
    draw.text((16, y), f"important {counts[0]} (step 9)", fill=(0, 0, 0))
    draw.rectangle([182, y + 1, 192, y + 11], outline=DIVERSE_RGB, width=BORDER)
    draw.text((196, y), f"diverse {counts[1]} (step 11)   kept tokens: {kept_source}", fill=(0, 0, 0))
    draw.text((2, y + 15), PANELS_SOURCE + "; each crop selected with K / crops", fill=(0, 0, 0))
    return picture
