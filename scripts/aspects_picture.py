"""docs/aspects_heatmap.png: the kept tokens of a photo through the square graph and through the shape `run --manifest`
picks, side by side, for the demo picture (4:3) and a tall synthetic document (a receipt-like page of text lines).

    python scripts/aspects_picture.py SPLIT_FOLDER [--out docs/aspects_heatmap.png]

SPLIT_FOLDER: a Qwen `--split --aspects` export (README's tiny one: graphs/qwen2.5-vl-tiny_aspects_split). The panels
are `run`'s own kept-token panels (its heatmap's first panel); with random weights the choice of tokens is noise: the
picture shows the geometry (the squashed square against the photo's own shape), not a model's attention.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from flashvlm_export.runtime import run
from flashvlm_export.runtime.heatmap import TITLE
from flashvlm_export.runtime.image import demo_picture

GAP = 12


def document(width: int = 600, height: int = 1000) -> Image.Image:
    """A tall page of dark text lines on white, a header bar and a total: a receipt or a form."""
    page = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(page)
    draw.rectangle([0, 0, width, 70], fill=(30, 60, 120))
    draw.text((20, 25), "INVOICE 2026-12-06", fill=(255, 255, 255))
    for i in range(28):
        y = 100 + 30 * i
        draw.text((20, y), f"item {i + 1:02d}  part no. {1000 + 37 * i}", fill=(20, 20, 20))
        draw.text((width - 110, y), f"{(i * 7.31) % 90 + 3:8.2f}", fill=(20, 20, 20))
    draw.rectangle([width - 200, height - 60, width - 20, height - 25], outline=(200, 30, 30), width=3)
    draw.text((width - 190, height - 50), "TOTAL 1,234.56", fill=(200, 30, 30))
    return page


def kept_panel(path: Path, shape: tuple[int, int]) -> Image.Image:
    """The first panel of run's heatmap: the kept tokens over the photo at the graph's (height, width)."""
    with Image.open(path) as picture:
        return picture.crop((0, 0, shape[1], TITLE + shape[0])).copy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("split", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/aspects_heatmap.png"))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for name, picture in [("demo picture 448 wide x 336", demo_picture(448)), ("document 600 wide x 1000", document())]:
            photo = scratch / f"{name.split(',')[0].replace(' ', '_')}.png"
            picture.save(photo)
            row = []
            for label, manifest in [("square graph", args.split / "manifest_448.json"), ("chosen shape", args.split)]:
                heat = scratch / f"{photo.stem}_{label.split()[0]}.png"
                result = run(None, str(photo), "What is the total?", manifest=str(manifest), random_weights=True,
                             heatmap=str(heat), log=lambda line: None)  # fmt: skip
                rows_cols = (448, 448) if result.shape in (None, "448") else tuple(map(int, result.shape.split("x")))
                row.append((f"{name}: {label} {rows_cols[0]}x{rows_cols[1]} (h x w)", kept_panel(heat, rows_cols)))
            rows.append(row)
    width = max(sum(p.width for _, p in row) + GAP * (len(row) - 1) for row in rows)
    height = sum(max(p.height for _, p in row) + TITLE for row in rows) + GAP * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for row in rows:
        x = 0
        for title, panel in row:
            draw.text((x + 2, y + 3), title, fill=(0, 0, 0))
            canvas.paste(panel, (x, y + TITLE))
            x += panel.width + GAP
        y += max(p.height for _, p in row) + TITLE + GAP
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out} ({canvas.width}x{canvas.height})")


if __name__ == "__main__":
    main()
