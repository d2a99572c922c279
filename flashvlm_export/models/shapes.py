"""The shapes one split holds (--aspects) and the one a photo goes through: Qwen's native aspect ratios, LLaVA-NeXT's
grid pinpoints.

A static graph takes one input shape, so a split of several shapes serves photos as they come: each shape is a spec
(ModelSpec.at_image_size for the Qwen towers, ModelSpec.at_grid for LLaVA-NeXT), named by its `shape_key` ("448",
"364x504": height x width in pixels; "2x2": rows x columns of crops).

Default shapes (`--aspects` alone): Qwen: the common photo and document aspects DEFAULT_ASPECTS (width:height) at the
square's pixel budget, each the token grid smart_resize (the processor's own rule) gives a photo of exactly that
aspect: rows = floor(sqrt(N * h / w)), columns = floor(sqrt(N * w / h)) for the square's N tokens, in exact integer
arithmetic (smart_resize's floating point could land a hair under an exact boundary). 448 px (16 x 16 tokens):
4:3 -> 13 x 18 = 364x504, 16:9 -> 12 x 21 = 336x588. LLaVA-NeXT: every grid its checkpoint's pinpoints list.

The choice per photo (`choose_shape`) is the model's own processor's: Qwen: for each shape, the size smart_resize makes
of the photo with min and max pixels pinned to the shape's; the shape it comes closest to (token rows and columns
apart, then aspect error, then the order listed). LLaVA-NeXT: transformers' select_best_resolution over the split's
pinpoints, as LlavaNextImageProcessor picks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flashvlm_export.errors import UsageError
from flashvlm_export.models.spec import ModelSpec

DEFAULT_ASPECTS = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16))  # width:height: photos, landscape and portrait, documents
NAMED_ASPECTS = ((1, 1), (5, 4), (4, 3), (3, 2), (16, 10), (16, 9), (2, 1), (21, 9))  # and each portrait twin


def shape_key(spec: ModelSpec) -> str:
    """What names a spec's shape in a split: its grid ("2x2") for a model cut into crops, else its image shape."""
    return f"{spec.grid[0]}x{spec.grid[1]}" if spec.grid is not None else spec.shape_text


def aspect_error(photo_hw: tuple[int, int], shape_hw: tuple[int, int]) -> float:
    """How far the shape's aspect ratio is from the photo's, in percent: |(W / H) / (w / h) - 1| x 100."""
    (h, w), (rows, cols) = photo_hw, shape_hw
    return abs((cols / rows) / (w / h) - 1) * 100


def aspect_name(height: int, width: int) -> str:
    """The shape's aspect, width:height, by its common name where one is within 5% (588 x 336: "about 16:9")."""
    named = [*NAMED_ASPECTS, *[(h, w) for w, h in NAMED_ASPECTS]]
    w, h = min(named, key=lambda a: abs(math.log((a[0] / a[1]) / (width / height))))
    if abs((w / h) / (width / height) - 1) > 0.05:
        g = math.gcd(width, height)
        return f"{width // g}:{height // g}"
    return f"{w}:{h}" if w * height == h * width else f"about {w}:{h}"


def aspect_grid(spec: ModelSpec, width: int, height: int) -> tuple[int, int]:
    """(rows, columns) of tokens smart_resize gives a photo of aspect width:height at the square spec's N tokens."""
    n = spec.n_tokens
    return max(2, math.isqrt(n * height // width)), max(2, math.isqrt(n * width // height))


def default_shapes(spec: ModelSpec) -> list[ModelSpec]:
    """`--aspects` alone: Qwen's DEFAULT_ASPECTS at this (square) spec's token count; LLaVA-NeXT's every pinpoint."""
    if spec.pinpoints:
        grids = [spec.pinpoint_grid(i) for i in range(len(spec.pinpoints))]
        return [spec.at_grid(f"{r}x{c}", "--aspects") for r, c in dict.fromkeys(grids)]
    stride = spec.token_stride
    shapes = []
    for width, height in DEFAULT_ASPECTS:
        rows, cols = aspect_grid(spec, width, height)
        shapes.append(spec.at_image_size((rows * stride, cols * stride), "--aspects"))
    return list({shape_key(s): s for s in shapes}.values())


def parse_aspects(text: str | None, spec: ModelSpec) -> list[ModelSpec]:
    """--aspects: None or "" for the defaults, else a comma list of shapes (Qwen: 448, 364x504 height x width, or a
    W:H aspect at the square's token count; LLaVA-NeXT: grids 2x2, 1x3). Each once; each one the model can take."""
    if not spec.pinpoints and spec.image_size_step is None:
        raise UsageError(
            f"--aspects: {spec.name} takes one {spec.image_size} px shape; use a Qwen model (native aspect ratios) or "
            "LLaVA-NeXT (grid pinpoints), or drop --aspects"
        )
    if not text:
        return default_shapes(spec)
    shapes, keys = [], {}
    for item in text.split(","):
        entry = item.strip()
        if spec.pinpoints:
            shape = spec.at_grid(entry, "--aspects entry")
        elif ":" in entry:
            width, _, height = entry.partition(":")
            if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
                raise UsageError(f"--aspects entry {entry!r} is not an aspect W:H; pass e.g. --aspects 4:3,16:9")
            rows, cols = aspect_grid(spec, int(width), int(height))
            shape = spec.at_image_size((rows * spec.token_stride, cols * spec.token_stride), "--aspects entry")
        else:
            shape = spec.at_image_size(entry, "--aspects entry")
        key = shape_key(shape)
        if key in keys:
            raise UsageError(f"--aspects {text} lists the shape {key} twice ({keys[key]!r} and {entry!r}); list each once")
        keys[key] = entry
        shapes.append(shape)
    if len(shapes) < 2:
        raise UsageError(f"--aspects {text} lists one shape; for one shape pass --image-size {shape_key(shapes[0])}")
    return shapes


@dataclass(frozen=True)
class Choice:
    index: int  # into the shapes offered
    key: str  # its shape_key
    processor_hw: tuple[int, int]  # what the processor would resize the photo to (Qwen) or its pinpoint (LLaVA-NeXT)
    aspect_error: float  # percent, the distortion the chosen shape leaves

    def line(self, photo_hw: tuple[int, int], spec: ModelSpec) -> str:
        """The one line `run` prints."""
        h, w = photo_hw
        if spec.grid is not None:
            what = (
                f"grid {self.key} ({self.processor_hw[1]}x{self.processor_hw[0]} px pinpoint, as LlavaNextImageProcessor "
                "picks; the photo is fitted into it with padding, not stretched)"
            )
            return f"the photo is {w} wide x {h} high: {what}, the pinpoint's aspect {self.aspect_error:.1f}% off the photo's"
        rows, cols = spec.image_shape
        made_h, made_w = self.processor_hw
        return (
            f"the photo is {w} wide x {h} high ({aspect_name(h, w)}): shape {self.key} ({cols} wide x {rows} high, "
            f"{aspect_name(rows, cols)}, {spec.n_tokens} tokens), the nearest to the processor's {made_w} x {made_h}; "
            f"aspect error {self.aspect_error:.1f}%"
        )


def choose_shape(photo_hw: tuple[int, int], shapes: list[ModelSpec]) -> Choice:
    """The shape the model's own processor comes closest to for a photo of (height, width) pixels."""
    h, w = photo_hw
    if shapes[0].grid is not None:  # LLaVA-NeXT: the processor's pinpoint among the split's grids
        from transformers.image_processing_utils import select_best_resolution

        pins = [[s.grid[0] * s.image_size, s.grid[1] * s.image_size] for s in shapes]
        best = tuple(select_best_resolution((h, w), pins))
        index = [tuple(p) for p in pins].index(best)
        return Choice(index, shape_key(shapes[index]), best, aspect_error(photo_hw, best))
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if max(h, w) > 200 * min(h, w):  # smart_resize's own limit (a ValueError there)
        raise UsageError(f"the photo is {w}x{h} px: its aspect ratio is over 200, more than Qwen's processor takes; crop it")
    ranked = []
    for i, spec in enumerate(shapes):
        rows, cols = spec.image_shape
        stride = spec.token_stride
        made = smart_resize(h, w, factor=stride, min_pixels=rows * cols, max_pixels=rows * cols)
        apart = abs(made[0] - rows) // stride + abs(made[1] - cols) // stride
        ranked.append((apart, aspect_error(photo_hw, spec.image_shape), i, made))
    _, error, index, made = min(ranked)
    return Choice(index, shape_key(shapes[index]), made, error)
