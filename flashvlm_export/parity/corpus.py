"""The seeded parity corpus: structured scenes, random inputs and edge cases, batch-first numpy.

Selector cases feed the selection core (X, a, P(X), T, mask). Pipeline cases feed the full graph
(pixels, T, mask). Every image of a batch gets its own scene and its own text, so batch handling
is exercised by every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flashvlm_export.export.interface import (
    BUDGET,
    CLS_ATTENTION,
    DEEPSTACK_FEATURES,
    PIXEL_VALUES,
    PROJECTED_FEATURES,
    SELECTOR_INPUTS,
    TEXT_EMBEDS,
    TEXT_MASK,
    VISION_FEATURES,
)


@dataclass(frozen=True)
class Geometry:
    n_tokens: int  # N
    vision_hidden: int  # Dv
    text_hidden: int  # Dl
    t_max: int  # padded text rows
    batch: int  # static batch of the graph
    budget_range: tuple[int, int] | None = None  # a budget-range graph's (KMIN, KMAX): each case feeds a budget per image
    frames: int | None = None  # a clip graph's F: each pipeline image becomes a clip of F frames (`clip_of`)
    deepstack: int = 0  # L: a Qwen3-VL selector's DeepStack layers; selector cases then feed (B, L, N, Dl) random rows


@dataclass
class Case:
    name: str
    feeds: dict[str, np.ndarray]  # batch-first arrays, keyed by graph input name
    note: str = ""
    reference_indices: np.ndarray | None = None  # (B, K), set by the parity run
    reference_sensitivity: list[float] | None = None  # (B,) the reference's own overlap under 1e-6 noise in G, likewise


def _grid(n_tokens: int) -> int:
    side = int(round(n_tokens**0.5))
    return side if side * side == n_tokens else 0


class _SceneMaker:
    """Builds one image's selector inputs; P(X) is a fixed random map of X so V and Z agree."""

    def __init__(self, geometry: Geometry, rng: np.random.Generator):
        self.g = geometry
        self.rng = rng
        self.projection = (
            rng.standard_normal((geometry.vision_hidden, geometry.text_hidden)) / np.sqrt(geometry.vision_hidden)
        ).astype(np.float32)

    def project(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x @ self.projection).astype(np.float32)

    def text(self, rows: np.ndarray | None, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(T_max, Dl) text padded with garbage (masked rows must not matter) and (T_max,) mask."""
        g = self.g
        length = min(length, g.t_max)
        text = (self.rng.standard_normal((g.t_max, g.text_hidden)) * 50).astype(np.float32)  # garbage padding
        mask = np.zeros(g.t_max, dtype=bool)
        if length:
            body = self.rng.standard_normal((length, g.text_hidden)).astype(np.float32) * 0.02
            if rows is not None:
                body[: len(rows)] = rows[:length]
            text[:length] = body
            mask[:length] = True
        return text, mask

    def random(self) -> dict:
        g, rng = self.g, self.rng
        x = rng.standard_normal((g.n_tokens, g.vision_hidden)).astype(np.float32)
        a = rng.random(g.n_tokens).astype(np.float32) ** 2 / g.n_tokens
        text, mask = self.text(None, int(rng.integers(1, g.t_max + 1)))
        return {VISION_FEATURES: x, CLS_ATTENTION: a, PROJECTED_FEATURES: self.project(x), TEXT_EMBEDS: text, TEXT_MASK: mask}

    def scene(self) -> dict:
        """Redundant background clusters, a salient object, and a query aimed at a non-salient region."""
        g, rng = self.g, self.rng
        side = _grid(g.n_tokens) or 1
        rows, cols = np.divmod(np.arange(g.n_tokens), side)
        prototypes = rng.standard_normal((4, g.vision_hidden)).astype(np.float32)
        band = np.minimum(rows * 4 // max(side, 1), 3)  # sky / wall / floor ... bands
        x = prototypes[band] + 0.05 * rng.standard_normal((g.n_tokens, g.vision_hidden)).astype(np.float32)
        r0, c0 = rng.integers(0, max(side - 6, 1), size=2)
        salient = (rows >= r0) & (rows < r0 + 5) & (cols >= c0) & (cols < c0 + 5)
        x[salient] = rng.standard_normal((int(salient.sum()), g.vision_hidden)).astype(np.float32)
        q0, p0 = rng.integers(0, max(side - 4, 1), size=2)
        queried = (rows >= q0) & (rows < q0 + 3) & (cols >= p0) & (cols < p0 + 3) & ~salient
        x[queried] += 2.0 * rng.standard_normal(g.vision_hidden).astype(np.float32)
        a = (0.2 + 0.05 * rng.random(g.n_tokens)).astype(np.float32)
        a[salient] += 3.0
        a /= a.sum()
        p = self.project(x)
        query_rows = p[queried][:8]  # the question "is about" the queried region
        query_rows = query_rows + 0.01 * rng.standard_normal(query_rows.shape).astype(np.float32)
        text, mask = self.text(query_rows, int(rng.integers(4, 24)))
        return {VISION_FEATURES: x, CLS_ATTENTION: a, PROJECTED_FEATURES: p, TEXT_EMBEDS: text, TEXT_MASK: mask}

    def ties(self) -> dict:
        """Constant saliency, no text, features that are exact duplicates with exactly representable cosines."""
        g, rng = self.g, self.rng
        patterns = np.zeros((6, g.vision_hidden), dtype=np.float32)
        for i in range(6):  # four ones each: norm exactly 2, cosines in {0, .25, .5, .75, 1}
            patterns[i, (np.arange(4) + i) % g.vision_hidden] = 1.0
        x = patterns[rng.integers(0, 6, size=g.n_tokens)]
        a = np.full(g.n_tokens, 1.0 / g.n_tokens, dtype=np.float32)
        text, mask = self.text(None, 0)
        return {VISION_FEATURES: x, CLS_ATTENTION: a, PROJECTED_FEATURES: self.project(x), TEXT_EMBEDS: text, TEXT_MASK: mask}

    def constant_saliency(self) -> dict:
        case = self.random()
        case[CLS_ATTENTION] = np.full(self.g.n_tokens, 0.5, dtype=np.float32)
        return case

    def duplicated_features(self) -> dict:
        case = self.random()
        x = case[VISION_FEATURES]
        x[:] = x[self.rng.integers(0, 8, size=self.g.n_tokens)]  # eight distinct rows, many copies
        case[PROJECTED_FEATURES] = self.project(x)
        return case

    def empty_text(self) -> dict:
        case = self.random()
        case[TEXT_EMBEDS], case[TEXT_MASK] = self.text(None, 0)
        return case

    def padding(self) -> dict:
        """Short text and loud garbage in every masked row: the mask alone must decide."""
        case = self.random()
        case[TEXT_EMBEDS], case[TEXT_MASK] = self.text(None, 3)
        case[TEXT_EMBEDS][3:] = 1e4
        return case


def mixed_budgets(budget_range: tuple[int, int], batch: int, number: int, rng: np.random.Generator) -> np.ndarray:
    """(B,) int64 budgets for case `number` of a budget-range graph: even cases spread KMIN..KMAX evenly over the
    batch (rotated by the case, so each image sees both ends), odd ones draw each image's budget at random."""
    k_min, k_max = budget_range
    if number % 2:
        return rng.integers(k_min, k_max + 1, size=batch).astype(np.int64)
    spread = np.round(np.linspace(k_min, k_max, max(batch, 2))).astype(np.int64)
    return np.asarray([spread[(b + number // 2) % len(spread)] for b in range(batch)], dtype=np.int64)


def with_budgets(cases: list[Case], geometry: Geometry, seed: int) -> list[Case]:
    """A budget feed in every case, for a budget-range graph (none otherwise)."""
    if geometry.budget_range is None:
        return cases
    rng = np.random.default_rng([seed, 200])
    for number, case in enumerate(cases):
        case.feeds[BUDGET] = mixed_budgets(geometry.budget_range, geometry.batch, number, rng)
    return cases


SELECTOR_CASES = ("scene", "random", "ties", "constant_saliency", "duplicated_features", "empty_text", "padding")


def selector_corpus(geometry: Geometry, seed: int = 0, repeats: int = 2, names=SELECTOR_CASES) -> list[Case]:
    """repeats x each named case, each a batch of geometry.batch different images."""
    cases = []
    for name in names:
        for repeat in range(repeats):
            rng = np.random.default_rng([seed, SELECTOR_CASES.index(name), repeat])
            maker = _SceneMaker(geometry, rng)
            images = [getattr(maker, name)() for _ in range(geometry.batch)]
            feeds = {key: np.stack([im[key] for im in images]) for key in SELECTOR_INPUTS}
            if geometry.deepstack:  # rows the selector only gathers: any values prove the gather
                shape = (geometry.batch, geometry.deepstack, geometry.n_tokens, geometry.text_hidden)
                feeds[DEEPSTACK_FEATURES] = rng.standard_normal(shape).astype(np.float32)
            cases.append(Case(f"{name}#{repeat}", feeds))
    return with_budgets(cases, geometry, seed)


PIPELINE_CASES = ("noise", "blocks", "flat")
CLIP_STEP = 28  # pixels a clip pans per frame: one merged token


def clip_of(image: np.ndarray, frames: int, motion: int) -> np.ndarray:
    """(3, H, W) -> (F, 3, H, W): the image panning right by CLIP_STEP pixels a frame (motion odd), or still for the
    first half of the frames and panning after (motion even): both temporal frames of a group differ once it moves."""
    start = 0 if motion % 2 else frames // 2
    return np.stack([np.roll(image, max(0, f - start) * CLIP_STEP, axis=-1) for f in range(frames)])


def grid_crops(image: np.ndarray, grid: tuple[int, int], side: int) -> np.ndarray:
    """A (3, rows x side, cols x side) picture as LLaVA-NeXT's graphs take it: (1 + rows x cols, 3, side, side), the base
    image (the picture shrunk to side x side, each pixel the mean of its rows x cols block) then the crops row by row."""
    rows, cols = grid
    base = image.reshape(3, side, rows, side, cols).mean(axis=(2, 4))
    tiles = image.reshape(3, rows, side, cols, side).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, side, side)
    return np.concatenate([base[None], tiles]).astype(np.float32)


def pipeline_corpus(
    geometry: Geometry, image_size, seed: int = 0, repeats: int = 2, grid: tuple[int, int] | None = None
) -> list[Case]:
    """Normalised-pixel images (noise, blocks of colour, near-flat) with random text, at the graph's image_size (a side,
    or (H, W): ModelSpec.image_shape); with a grid (LLaVA-NeXT) each picture is rows x cols crops large and fed as its
    base image and crops (grid_crops)."""
    rows, cols = grid or (1, 1)
    side_h, side_w = (image_size, image_size) if isinstance(image_size, int) else image_size
    height, width = rows * side_h, cols * side_w
    cases = []
    for name in PIPELINE_CASES:
        for repeat in range(repeats):
            rng = np.random.default_rng([seed, 100 + PIPELINE_CASES.index(name), repeat])
            maker = _SceneMaker(geometry, rng)
            pixels, texts, masks = [], [], []
            for _ in range(geometry.batch):
                if name == "noise":
                    img = rng.standard_normal((3, height, width))
                elif name == "blocks":
                    img = np.repeat(np.repeat(rng.standard_normal((3, 8, 8)), height // 8 + 1, 1), width // 8 + 1, 2)
                    img = img[:, :height, :width]
                else:
                    img = 0.1 * rng.standard_normal((3, 1, 1)) + 0.01 * rng.standard_normal((3, height, width))
                if geometry.frames is not None:
                    pixels.append(clip_of(img, geometry.frames, len(pixels) + repeat).astype(np.float32))
                else:
                    pixels.append(img.astype(np.float32) if grid is None else grid_crops(img, grid, side_h))
                text, mask = maker.text(None, int(rng.integers(0 if repeat else 1, geometry.t_max + 1)))
                texts.append(text)
                masks.append(mask)
            feeds = {PIXEL_VALUES: np.stack(pixels), TEXT_EMBEDS: np.stack(texts), TEXT_MASK: np.stack(masks)}
            cases.append(Case(f"{name}#{repeat}", feeds))
    return with_budgets(cases, geometry, seed)
