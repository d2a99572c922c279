"""A photo -> pixel_values, exactly as the checkpoint's own image processor makes them.

With a model directory that has preprocessor_config.json, that config drives transformers'
CLIP image processor; otherwise the spec's CLIP defaults (resize the shortest side, center crop,
rescale 1/255, normalise with CLIP's mean and std), which is what LLaVA-1.5's processor does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.errors import UsageError, arg
from flashvlm_export.models.spec import ModelSpec

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PreparedImage:
    pixel_values: torch.Tensor  # (1, 3, H, W) fp32, normalised
    shown: np.ndarray  # (H, W, 3) uint8: what the model sees, de-normalised, for the heatmap
    processor: str  # which processor config made it


def _processor_class():
    try:  # transformers >= 5: the PIL backend, no torchvision needed
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def image_processor(spec: ModelSpec, model_dir: Path | None):
    cls = _processor_class()
    if model_dir is not None and (Path(model_dir) / "preprocessor_config.json").is_file():
        return cls.from_pretrained(str(model_dir), local_files_only=True), f"{model_dir}/preprocessor_config.json"
    side = spec.image_size
    processor = cls(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        do_center_crop=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )
    return processor, f"CLIP defaults for {spec.name} ({side} px)"


def read_image(path: str | Path):
    """Any file Pillow reads, as RGB; a missing or unreadable file is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{arg('image', str(path))} does not exist; pass a photo Pillow can read (JPEG, PNG, ...)")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(
            f"{arg('image', str(path))} is not an image Pillow can read ({type(exc).__name__}); pass a JPEG, PNG, ..."
        ) from None


def prepare_image(path: str | Path, spec: ModelSpec, model_dir: Path | None = None) -> PreparedImage:
    image = read_image(path)
    processor, name = image_processor(spec, model_dir)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"].to(torch.float32)  # (1, 3, H, W)
    if tuple(pixels.shape[-2:]) != (spec.image_size, spec.image_size):
        raise UsageError(
            f"the image processor ({name}) makes {tuple(pixels.shape[-2:])} pixels but {spec.name} takes "
            f"{spec.image_size}x{spec.image_size}; use the checkpoint the graph was exported from"
        )
    mean = torch.tensor(processor.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(processor.image_std, dtype=torch.float32)[:, None, None]
    shown = ((pixels[0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return PreparedImage(pixels, shown, name)


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
