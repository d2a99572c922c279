"""`run --manifest` on a split of several shapes (export/shapes.py): the shape the model's own processor would pick for
this photo (models/shapes.py choose_shape), said in one line, and that shape's manifest."""

from __future__ import annotations

from pathlib import Path


def photo_hw(image: str | None, demo_image: str | None, max_pixels: int | None) -> tuple[int, int]:
    """(height, width) of the photo as a viewer shows it (runtime/photo.py), or of the demo picture to be written."""
    if image is None:
        from flashvlm_export.runtime.image import demo_picture

        width, height = demo_picture().size
        return height, width
    from flashvlm_export.runtime.photo import read_image

    picture = read_image(image, max_pixels)
    return picture.height, picture.width


def clip_hw(video: str | None) -> tuple[int, int] | None:
    """(height, width) of a clip's frames from its stream header; None for the demo clip (written at a shape's own)."""
    if video is None:
        return None
    from flashvlm_export.runtime.video import frame_size

    width, height = frame_size(Path(video))
    return height, width


def chosen_manifest(manifest: str | None, hw_of, log=print, what: str = "photo") -> tuple[str | None, str | None]:
    """`run`'s manifest as given, or for a split of several shapes the manifest of the shape chosen for the picture
    whose (height, width) `hw_of()` reads (only then); and the chosen shape's key (None for one shape)."""
    from flashvlm_export.export.shapes import is_shape_set

    if manifest is None or not is_shape_set(manifest):
        return manifest, None
    return choose_manifest(manifest, hw_of(), log, what)


def choose_manifest(manifest: str, hw: tuple[int, int] | None, log=print, what: str = "photo") -> tuple[str, str]:
    """(the chosen shape's manifest path, its key) for a picture of `hw` pixels; None (the demo clip): the first shape."""
    from flashvlm_export.export.shapes import read_shape_set
    from flashvlm_export.models.shapes import choose_shape

    shape_set = read_shape_set(Path(manifest))
    if hw is None:
        key = shape_set.keys[0]
        log(f"Shape: the demo {what} is written at the split's first shape, {key} (of {shape_set.listing})")
        return str(shape_set.manifests[0]), key
    choice = choose_shape(hw, list(shape_set.specs))
    line = choice.line(hw, shape_set.specs[choice.index]).replace("the photo", f"the {what}", 1)
    log(f"Shape: {line} (shapes height x width: {shape_set.listing})")
    return str(shape_set.manifests[choice.index]), choice.key
