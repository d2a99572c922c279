"""A photo -> pixel_values (1, 3, H, W), as the checkpoint's own image processor makes them for the graph's shape.

runtime/photo.py reads the file as an image viewer shows it (EXIF orientation, 16-bit and float samples scaled to
8 bits, transparency on white, a pixel limit). The family adapter names the processor class and how it resizes
(models/adapter.py). With a model directory that has preprocessor_config.json, that config drives it (its mean,
std, rescale factor); otherwise the adapter's defaults. LLaVA-1.5 (RESIZE "shortest-edge-crop"): CLIP's processor
resizes the shortest side to S, center-crops, rescales 1/255 and normalises with CLIP's mean and std. Qwen2.5-VL
(RESIZE "stretch"): the graph is static, so the photo is resized to the graph's H x W (bicubic, PIL, the
processor's resample), then Qwen2VLImageProcessorPil rescales, normalises and patchifies it without resizing again,
and the adapter unpatchifies its flat patches. For a photo of the graph's aspect this is the processor's own output
with its pixels pinned to H x W (tests/test_qwen_handoff.py); a photo of another aspect is stretched, which the
processor would not do, and `note` says so in one line with the aspect error (a split of several shapes picks the
nearest: models/shapes.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.errors import UsageError
from flashvlm_export.models.registry import adapter
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.runtime.photo import read_image

STRETCH = "stretch"
ANYRES = "anyres"  # LLaVA-NeXT: the base image and the crops of the graph's grid pinpoint


@dataclass
class PreparedImage:
    pixel_values: torch.Tensor  # (1, 3, H, W) fp32, normalised; LLaVA-NeXT: (1, crops, 3, S, S)
    shown: np.ndarray  # (H, W, 3) uint8: what the model sees, de-normalised, for the heatmap; LLaVA-NeXT: (crops, S, S, 3)
    processor: str  # which processor config made it
    image_hw: tuple[int, int] | None = None  # LLaVA-NeXT: the photo's (height, width), which unpadding reads
    note: str = ""  # a line when the photo's shape is not the graph's: LLaVA-NeXT's grid, Qwen2.5-VL's stretch


def _defaults(spec: ModelSpec, family) -> dict:
    """The processor's settings without a checkpoint: the adapter's mean and std, sized to the graph's side."""
    side = spec.image_size
    height, width = spec.image_shape
    common = dict(image_mean=list(family.IMAGE_MEAN), image_std=list(family.IMAGE_STD), do_convert_rgb=True)
    if family.RESIZE == STRETCH:  # H x W pixels exactly (smart_resize keeps an H x W photo's shape, both multiples of 28)
        pinned = {"shortest_edge": height * width, "longest_edge": height * width}
        return dict(common, size=pinned, patch_size=spec.patch_size, merge_size=spec.merge)  # Qwen3: 16 px patches
    if family.RESIZE == ANYRES:
        return dict(
            common, size={"shortest_edge": side}, crop_size={"height": side, "width": side}, image_grid_pinpoints=_pinpoint(spec)
        )
    return dict(common, size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_center_crop=True)


def image_processor(spec: ModelSpec, model_dir: Path | None):
    family = adapter(spec)
    cls = family.IMAGE_PROCESSOR()
    if model_dir is not None and (Path(model_dir) / "preprocessor_config.json").is_file():
        return cls.from_pretrained(str(model_dir), local_files_only=True), f"{model_dir}/preprocessor_config.json"
    name = cls.__name__.removesuffix("Pil").removesuffix("ImageProcessor")  # "CLIP", "Qwen2VL"
    return cls(**_defaults(spec, family)), f"{name} defaults for {spec.name} ({spec.shape_text} px)"


def _pinpoint(spec: ModelSpec) -> list[list[int]]:
    """The graph's grid as the processor's only pinpoint, (height, width) px: it then makes that grid's crops."""
    return [[spec.grid[0] * spec.image_size, spec.grid[1] * spec.image_size]]


def grid_note(spec: ModelSpec, image_hw: tuple[int, int]) -> str:
    """One line when the checkpoint's processor would pick another pinpoint for this photo than the graph's grid."""
    from transformers.image_processing_utils import select_best_resolution

    from flashvlm_export.models.anyres import unpadded_window

    best = tuple(select_best_resolution(image_hw, [list(p) for p in spec.pinpoints]))
    grid = tuple(_pinpoint(spec)[0])
    if best == grid:
        return ""
    top, bottom, left, right = unpadded_window(spec, image_hw)
    padding = spec.n_tokens - spec.crop_tokens - (bottom - top) * (right - left)
    rows, cols = spec.grid
    return (
        f"the photo is {image_hw[1]}x{image_hw[0]} px; the checkpoint's processor would pick the "
        f"{best[0] // spec.image_size}x{best[1] // spec.image_size} grid ({best[1]}x{best[0]} px), this graph takes "
        f"{rows}x{cols} ({grid[1]}x{grid[0]} px): the photo is fitted into it with padding, {padding} of its "
        f"{spec.n_tokens - spec.crop_tokens} grid tokens cover padding (unpadding drops them from the LLM input); "
        f"export --grid {best[0] // spec.image_size}x{best[1] // spec.image_size} for photos of this shape"
    )


def _prepare_crops(image, spec: ModelSpec, processor, name: str) -> PreparedImage:
    """LLaVA-NeXT: the processor with the graph's grid as its only pinpoint (the base image, then the crops)."""
    family = adapter(spec)
    image_hw = (image.height, image.width)
    output = processor(images=image, return_tensors="pt", image_grid_pinpoints=_pinpoint(spec))
    pixels = family.processor_pixels(output, spec)  # (1, crops, 3, S, S)
    mean = torch.tensor(processor.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(processor.image_std, dtype=torch.float32)[:, None, None]
    shown = ((pixels[0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return PreparedImage(pixels, shown, name, image_hw, grid_note(spec, image_hw))


def stretch_note(spec: ModelSpec, width: int, height: int, what: str = "photo") -> str:
    """One line when a photo (or a clip) of another aspect than the graph's shape is stretched to it (Qwen's static
    shape), as LLaVA-NeXT's grid_note says when a photo does not fit the graph's grid; empty for one of its aspect."""
    from flashvlm_export.models.shapes import aspect_error

    rows, cols = spec.image_shape
    if width * rows == height * cols:
        return ""
    from math import gcd

    fix = "to a square" if rows == cols else f"to {cols // gcd(rows, cols)}:{rows // gcd(rows, cols)}"
    own = f"{width // gcd(width, height)}:{height // gcd(width, height)}"
    return (
        f"the {what} is {width}x{height} px (width x height); this graph takes {cols}x{rows}, so the {what} is stretched "
        f"(aspect ratio {width / height:.2f} -> {cols / rows:.2f}, {aspect_error((height, width), spec.image_shape):.1f}% "
        f"off; the checkpoint's processor would keep it): export a shape of its aspect (--aspects {own}), or crop the "
        f"{what} {fix} to keep its proportions"
    )


def prepare_image(
    path: str | Path | bytes, spec: ModelSpec, model_dir: Path | None = None, max_pixels: int | None = None, **reading
) -> PreparedImage:
    """The photo at `path` (runtime/photo.py reads it as a viewer shows it; bytes: the encoded picture) as the graph's
    pixel_values; `reading`: read_image's label and fix for its one-line errors."""
    image = read_image(path, max_pixels, **reading)
    processor, name = image_processor(spec, model_dir)
    family = adapter(spec)
    if family.RESIZE == ANYRES:
        return _prepare_crops(image, spec, processor, name)
    options, note = {}, ""
    if family.RESIZE == STRETCH:  # to the graph's side as the processor resizes (bicubic), then no resize of its own
        height, width = spec.image_shape
        note = stretch_note(spec, image.width, image.height)
        image = image.resize((width, height), resample=int(processor.resample))
        options["do_resize"] = False
    pixels = family.processor_pixels(processor(images=image, return_tensors="pt", **options), spec)  # (1, 3, H, W)
    if tuple(pixels.shape[-2:]) != spec.image_shape:
        raise UsageError(
            f"the image processor ({name}) makes {tuple(pixels.shape[-2:])} pixels but {spec.name} takes "
            f"{spec.image_shape[0]}x{spec.image_shape[1]} (height x width); use the checkpoint the graph was exported from"
        )
    mean = torch.tensor(processor.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(processor.image_std, dtype=torch.float32)[:, None, None]
    shown = ((pixels[0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return PreparedImage(pixels, shown, name, note=note)


def demo_picture(size: int = 448):
    """A synthetic still life (sky, table, red ball, green box, yellow cup): a picture the repository makes."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, int(size * 0.75)), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for y in range(h):  # sky gradient above the table edge
        t = y / h
        draw.line([(0, y), (w, y)], fill=(int(120 + 90 * t), int(170 + 60 * t), 235))
    draw.rectangle([0, int(h * 0.6), w, h], fill=(150, 100, 60))  # table
    draw.ellipse([int(w * 0.12), int(h * 0.38), int(w * 0.34), int(h * 0.68)], fill=(210, 30, 40))  # ball
    draw.rectangle([int(w * 0.45), int(h * 0.35), int(w * 0.66), int(h * 0.66)], fill=(40, 160, 70))  # box
    draw.rectangle([int(w * 0.74), int(h * 0.47), int(w * 0.86), int(h * 0.66)], fill=(235, 200, 40))  # cup
    draw.ellipse([int(w * 0.80), int(h * 0.06), int(w * 0.92), int(h * 0.22)], fill=(255, 245, 200))  # sun
    return image
