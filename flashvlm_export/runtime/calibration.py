"""Calibration pictures as an encoder's pixel_values (export/quantize.py): the user's photos or the demo pictures the tool
draws, each through the checkpoint's own processor path (runtime/image.py prepare_image, as `run` feeds a graph)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flashvlm_export.errors import UsageError
from flashvlm_export.export.quantize import Calibration


def demo_calibration_picture(index: int, spec):
    """Demo calibration picture `index`: the still life at a varied size, crop and brightness (deterministic)."""
    from PIL import ImageEnhance

    from flashvlm_export.runtime.image import demo_picture

    rng = np.random.default_rng([7, index])
    picture = demo_picture(int(rng.integers(320, 800)))
    w, h = picture.size
    left, top = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
    picture = picture.crop((left, top, w - int(rng.integers(0, w // 4)), h - int(rng.integers(0, h // 4))))
    return ImageEnhance.Brightness(picture).enhance(float(rng.uniform(0.6, 1.4)))


def calibration_pixels(calibration: Calibration, spec, log=print, model_dir: Path | None = None) -> Iterator[np.ndarray]:
    """Each calibration picture as the graph's pixel_values (1, ...), through the checkpoint's own processor path."""
    import tempfile

    from flashvlm_export.runtime.image import prepare_image

    with tempfile.TemporaryDirectory(prefix="flashvlm-calib-") as scratch:
        for i in range(calibration.count):
            if calibration.demo:
                path = Path(scratch) / f"demo_{i}.png"
                demo_calibration_picture(i, spec).save(path)
            else:
                path = Path(calibration.images[i])
            try:
                yield prepare_image(path, spec, model_dir).pixel_values.numpy()
            except UsageError as exc:
                raise UsageError(f"--calib-images: {exc}") from None
            if (i + 1) % 16 == 0 or i + 1 == calibration.count:
                log(f"Calibration: {i + 1}/{calibration.count} pictures")
