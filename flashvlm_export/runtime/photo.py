"""A picture file -> the 8-bit RGB picture a person sees in an image viewer. Every photo `run` reads comes through
read_image (runtime/image.py prepares it for the model); docs/RUN.md "Reading pictures".

Pillow opens the file; this module decides what its samples mean:
- EXIF orientation (tag 274) is applied first, as viewers do (ImageOps.exif_transpose).
- 16-bit samples (modes I;16, I;16L, I;16B, I;16N, and mode I holding 0..65535, as Pillow keeps 16-bit data) keep
  their high byte, v >> 8: 0..65535 -> 0..255, and 257 * k -> k exactly. Pillow reduces 48-bit RGB and 64-bit RGBA
  PNGs to 8 bits the same way, so every 16-bit picture maps alike. Pillow's convert("RGB"), and transformers'
  convert_to_rgb which calls it, clip these samples at 255 instead: a 16-bit photo turns white. A TIFF's own tags
  say more, which Pillow's I;16 drops: a 12-bit TIFF (BitsPerSample 12, held as 0..4095) keeps its high 8 bits,
  v >> 4, and a WhiteIsZero one (PhotometricInterpretation 0) is inverted, as Pillow does for its 8-bit kin.
- Mode F within [0, 1] is scaled by 255 and rounded (the float convention: 0 black, 1 white). Mode F outside [0, 1]
  and mode I outside 0..65535 are stretched min..max to 0..255 (an image viewer's auto-contrast, ImageJ's default
  for 32-bit data); a flat one is black, and a non-finite float is black.
- Transparency (an alpha band, or a palette's or a grey level's tRNS) is composited on white, as transformers'
  convert_to_rgb does; every other mode (1, L, P, RGB, CMYK, YCbCr, LAB, HSV, ...) is Pillow's convert("RGB").
- A picture of more than max_pixels pixels is refused in one line before it is decoded. The default is Pillow's
  own decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS, 89,478,485); `--max-image-pixels` raises it, and then
  Pillow's own warning (above the limit) and error (above twice it) do not fire.
"""

from __future__ import annotations

import contextlib
import operator
import struct
import threading
from pathlib import Path

import numpy as np

from flashvlm_export.artifact_paths import input_file
from flashvlm_export.errors import UsageError, arg

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
HINT = "pass a picture file Pillow can read (JPEG, PNG, TIFF, ...)"
_BOMB_CHECK = threading.Lock()  # PIL.Image.MAX_IMAGE_PIXELS is a module global


def pillow_limit() -> int | None:
    """Pillow's decompression-bomb limit: the default of max_pixels; None where a program has turned Pillow's check
    off (PIL.Image.MAX_IMAGE_PIXELS = None, Pillow's documented switch)."""
    from PIL import Image

    return None if Image.MAX_IMAGE_PIXELS is None else int(Image.MAX_IMAGE_PIXELS)


def check_max_pixels(max_pixels: int | None) -> int | None:
    """The limit to apply: Pillow's without one (None: no limit); a value below 1 is a one-line error."""
    if max_pixels is None:
        return pillow_limit()
    try:
        count = operator.index(max_pixels)  # an int or a numpy integer; not a bool, a float or a string
    except TypeError:
        count = 0
    if isinstance(max_pixels, bool) or count < 1:
        raise UsageError(f"{arg('max_image_pixels', max_pixels)} is not a pixel count; pass a whole number >= 1, e.g. 400000000")
    return count


@contextlib.contextmanager
def _own_limit():
    """Pillow's bomb check off while this module, which checks the pixel count itself, opens a picture."""
    from PIL import Image

    with _BOMB_CHECK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_image(
    path: str | Path | bytes, max_pixels: int | None = None, name: str = "image", label: str | None = None, fix: str = HINT
):
    """The picture at `path` as a viewer shows it, a PIL RGB image; bad input is one line naming `name`'s flag (or
    `label`, where no flag named it: `eval`'s "question 3's picture") and `fix`. `path` may be the encoded picture itself
    (bytes: a benchmark that embeds its pictures)."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(path, bytes):
        given = label or f"the embedded picture ({len(path):,} bytes)"
        path = io.BytesIO(path)
    else:
        given = label or arg(name, str(path))
        path = input_file(Path(path), given, fix)  # a folder or a FIFO is named as one
    limit = check_max_pixels(max_pixels)
    whose = "Pillow's guard against decompression bombs" if max_pixels is None else f"the {arg('max_image_pixels')} given"
    try:
        with _own_limit(), Image.open(path) as image:
            pixels = image.width * image.height
            if limit is not None and pixels > limit:
                raise UsageError(
                    f"{given} is {image.width}x{image.height} = {pixels:,} pixels, over the limit of {limit:,} "
                    f"({whose}); if you trust the file, pass "
                    f"{arg('max_image_pixels', pixels)}, or shrink the picture"
                )
            return viewer_rgb(ImageOps.exif_transpose(image), *_tiff_grey(image))  # tags read before the turn
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise UsageError(f"{given} is not an image Pillow can read ({pillow_reason(exc)}); {fix}") from None


def pillow_reason(exc: Exception) -> str:
    """Pillow's reason, on one line: a truncated or damaged file says which ('image file is truncated ...')."""
    from PIL import UnidentifiedImageError

    reason = "" if isinstance(exc, UnidentifiedImageError) else " ".join(str(exc).split())[:160]  # it names the path
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _tiff_grey(image) -> tuple[int, bool]:
    """(bits per sample, white is zero) of a one-band TIFF, from its tags (BitsPerSample 258, Photometric 262);
    (16, False) for any other picture."""
    tags = getattr(image, "tag_v2", None)
    if tags is None or image.mode not in SIXTEEN_BIT:
        return 16, False
    bits = tags.get(258, (16,))
    bits = bits[0] if isinstance(bits, tuple) else bits
    return min(max(int(bits), 8), 16), tags.get(262) == 0


def _eight_bit(image, bits: int = 16, white_is_zero: bool = False):
    """An I;16*, I or F picture as mode L (or LA where a grey level is transparent), by the rules above; `bits` and
    `white_is_zero` are a 16-bit TIFF's own (_tiff_grey)."""
    from PIL import Image

    raw = np.asarray(image)
    if image.mode in SIXTEEN_BIT or (image.mode == "I" and raw.min() >= 0 and raw.max() <= 65535):
        samples = np.minimum(raw.astype(np.uint32), (1 << bits) - 1)
        if white_is_zero:
            samples = (1 << bits) - 1 - samples
        grey = (samples >> (bits - 8)).astype(np.uint8)
    else:
        values = raw.astype(np.float64)
        finite = np.isfinite(values)
        values = np.where(finite, values, 0.0)
        low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
        if image.mode == "F" and low >= 0.0 and high <= 1.0:
            grey = np.round(values * 255)
        elif high > low:
            grey = np.round((values - low) / (high - low) * 255)
        else:
            grey = np.zeros_like(values)
        grey = np.where(finite, grey, 0).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and not isinstance(transparent, bool):  # a tRNS grey level
        alpha = np.where(raw == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=-1), "LA")
    return Image.fromarray(grey, "L")


def viewer_rgb(image, bits: int = 16, white_is_zero: bool = False):
    """Any PIL picture as 8-bit RGB: 16-bit and float samples scaled, transparency composited on white; `bits` and
    `white_is_zero` describe a 16-bit TIFF's samples (_tiff_grey)."""
    from PIL import Image

    if image.mode in (*SIXTEEN_BIT, "I", "F"):
        image = _eight_bit(image, bits, white_is_zero)
    if "A" in image.getbands() or image.info.get("transparency") is not None:  # transformers' convert_to_rgb
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")  # a mode Pillow cannot convert raises ValueError: read_image's one line
