"""A synthetic benchmark in each layout, for CI: small drawn scenes, each question answerable from its picture.

write_demo_data(folder) writes folder/<layout>/ for the five layouts in the REAL benchmarks' file formats (layouts.py
cites them), so `eval` reads them as it reads the real files:

  mmstar/synthetic-mmstar.parquet     index, question ("...\\nOptions: A: x, B: y, ..."), image {bytes, path}, answer,
                                      category, l2_category, meta_info (HF schema metadata: image is an Image feature)
  mmbench/synthetic-mmbench.tsv       OpenCompass's TSV: base64 pictures, CircularEval copies at index + 1_000_000 * r
                                      whose image field is the original's index (as VLMEvalKit's TSVs save space)
  pope/synthetic-pope.jsonl           question_id, image (a file in images/), text, label yes/no
  gqa/synthetic-gqa.jsonl             questionId, imageId (images/<imageId>.jpg), question, answer, fullAnswer
  textvqa/synthetic-textvqa.json      {"data": [{question_id, question, image_id, answers: [10], ...}]}, images/<id>.jpg

6 questions each (MMBench: 3 questions x 2 rotations). Deterministic: the same bytes on every run. Each layout folder
holds layouts.DEMO_MARK, so read_dataset() marks the Dataset synthetic. The folder is written all or nothing (staged
beside it, then renamed into place, with a ledger: artifacts/ownership.py), as serve/repository.py writes a Triton
repository; --force replaces only a folder this tool wrote.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from flashvlm_export.artifacts.ownership import PRODUCER, check_folder_replaceable, mark_folder
from flashvlm_export.artifacts.staging import make_staging, reclaim_stale_staging
from flashvlm_export.errors import UsageError, arg, switch
from flashvlm_export.evaluation.layouts import DEMO_MARK
from flashvlm_export.evaluation.questions import GQA, MMBENCH, MMSTAR, POPE, TEXTVQA

FLAG = "demo_data"  # the argument that names the folder: --demo-data on the command line
SEED = 2024
SIZE = (128, 96)  # the picture: shapes in the top 64 rows, a word in the bottom strip
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 170),
}
SHAPES = ("square", "circle", "triangle")
WORDS = ("CAT", "SUN", "MAP", "BOX", "RED", "TOP")
BACKGROUND = (245, 245, 240)
README = """SYNTHETIC DEMO DATA, written by flashvlm-export eval --demo-data.

Each folder holds a small synthetic benchmark in the file format of the real one (mmstar, mmbench, pope, gqa, textvqa):
drawn pictures of a few coloured shapes and a word, with questions answerable from them. It exercises the readers and
the scoring of `flashvlm-export eval`; its accuracy says nothing about any model.
"""


@dataclass(frozen=True)
class Scene:
    """A picture: shapes (kind, colour) left to right, a word under them."""

    shapes: tuple[tuple[str, str], ...]
    word: str

    def colour_of(self, kind: str) -> str | None:
        return next((c for k, c in self.shapes if k == kind), None)


def _scenes(rng: random.Random, n: int) -> list[Scene]:
    """`n` scenes, each with 1-3 shapes of distinct kinds and colours (so "the square" names one shape)."""
    scenes = []
    for i in range(n):
        kinds = rng.sample(SHAPES, rng.randint(1, 3))
        if "square" not in kinds and i % 2 == 0:
            kinds[0] = "square"
        colours = rng.sample(sorted(COLOURS), len(kinds))
        scenes.append(Scene(tuple(zip(kinds, colours, strict=True)), WORDS[i % len(WORDS)]))
    return scenes


def _draw(scene: Scene, fmt: str = "PNG") -> bytes:
    """The scene as an encoded picture (PNG, or JPEG for the datasets whose files are .jpg)."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.new("RGB", SIZE, BACKGROUND)
    pen = ImageDraw.Draw(picture)
    for slot, (kind, colour) in enumerate(scene.shapes):
        x, y, s = 8 + slot * 40, 14, 32
        fill = COLOURS[colour]
        if kind == "square":
            pen.rectangle((x, y, x + s, y + s), fill=fill)
        elif kind == "circle":
            pen.ellipse((x, y, x + s, y + s), fill=fill)
        else:
            pen.polygon(((x + s // 2, y), (x, y + s), (x + s, y + s)), fill=fill)
    pen.text((SIZE[0] // 2, 80), scene.word, fill=(0, 0, 0), font=ImageFont.load_default(size=20), anchor="mm")
    out = io.BytesIO()
    picture.save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def _choices(rng: random.Random, right: str, pool) -> list[str]:
    """Four options: the right one and three others from `pool`, in a seeded order."""
    options = [right, *rng.sample([p for p in sorted(pool) if p != right], 3)]
    rng.shuffle(options)
    return options


def _multiple_choice(rng: random.Random, scene: Scene, turn: int) -> tuple[str, list[str], str]:
    """(question, options, right option) about `scene`: the square's colour, how many shapes, or the word."""
    square = scene.colour_of("square")
    if turn % 3 == 0 and square:
        return "What colour is the square?", _choices(rng, square, COLOURS), square
    if turn % 3 == 1:
        count = str(len(scene.shapes))
        return "How many shapes are there above the word?", _choices(rng, count, ("1", "2", "3", "4", "5")), count
    return (
        "Which word is written in the picture?",
        _choices(rng, scene.word.lower(), {w.lower() for w in WORDS}),
        scene.word.lower(),
    )


def _short_answer(scene: Scene, turn: int) -> tuple[str, str]:
    """(question, answer) with a one-word answer, not all yes/no (GQA, TextVQA)."""
    kind, colour = scene.shapes[turn % len(scene.shapes)]
    asks = [
        (f"What colour is the {kind}?", colour),
        ("How many shapes are in the picture?", str(len(scene.shapes))),
        ("What word is written at the bottom?", scene.word.lower()),
    ]
    return asks[turn % len(asks)]


# ---------------------------------------------------------------- one writer per layout


def _write_mmstar(folder: Path, rng: random.Random) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for index, scene in enumerate(_scenes(rng, 6)):
        question, options, right = _multiple_choice(rng, scene, index)
        listed = ", ".join(f"{chr(65 + i)}: {o}" for i, o in enumerate(options))
        rows.append(
            {
                "index": index,
                "question": f"{question}\nOptions: {listed}",
                "image": {"bytes": _draw(scene), "path": None},
                "answer": chr(65 + options.index(right)),
                "category": "synthetic perception",
                "l2_category": "synthetic shapes",
                "meta_info": {"source": "synthetic", "split": "val", "image_path": f"synthetic-{index}.png"},
            }
        )
    features = {"image": {"_type": "Image"}}  # how the datasets library marks an image column in parquet metadata
    table = pa.Table.from_pylist(rows).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path = folder / "synthetic-mmstar.parquet"
    pq.write_table(table, path)
    return path


MMBENCH_COLUMNS = (
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
)


def _write_mmbench(folder: Path, rng: random.Random) -> Path:
    """3 questions, each also rotated once (options shifted by one, index + 1_000_000), as the circular TSVs hold."""
    lines = ["\t".join(MMBENCH_COLUMNS)]
    originals, copies = [], []
    for index, scene in enumerate(_scenes(rng, 3)):
        question, options, right = _multiple_choice(rng, scene, index)
        if index == 2:  # one question with three options: D empty (NaN)
            options.remove(next(o for o in reversed(options) if o != right))
        hint = "The picture is a drawing of shapes." if index == 0 else ""
        image = base64.b64encode(_draw(scene)).decode()
        for rotation in range(2):
            turned = options[rotation:] + options[:rotation]
            cells = {
                "index": str(index + 1_000_000 * rotation),
                "question": question,
                "hint": hint,
                **{letter: (turned[i] if i < len(turned) else "") for i, letter in enumerate("ABCD")},
                "answer": chr(65 + turned.index(right)),
                "category": "synthetic_shapes",
                "image": image if rotation == 0 else str(index),  # a copy points at the original's picture
                "source": "synthetic",
                "l2-category": "synthetic perception",
                "comment": "",
                "split": "dev",
            }
            (originals if rotation == 0 else copies).append("\t".join(cells[c] for c in MMBENCH_COLUMNS))
    path = folder / "synthetic-mmbench.tsv"
    path.write_text("\n".join(lines + originals + copies) + "\n", encoding="utf-8")
    return path


def _write_images(folder: Path, named: dict[str, Scene]) -> None:
    (folder / "images").mkdir()
    for name, scene in named.items():
        (folder / "images" / name).write_bytes(_draw(scene, "JPEG"))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_pope(folder: Path, rng: random.Random) -> Path:
    rows, named = [], {}
    for number, scene in enumerate(_scenes(rng, 6), 1):
        kind = SHAPES[number % len(SHAPES)]
        name = f"synthetic_pope_{number:06d}.jpg"
        named[name] = scene
        label = "yes" if scene.colour_of(kind) else "no"
        rows.append({"question_id": number, "image": name, "text": f"Is there a {kind} in the image?", "label": label})
    _write_images(folder, named)
    return _jsonl(folder / "synthetic-pope.jsonl", rows)


def _write_gqa(folder: Path, rng: random.Random) -> Path:
    rows, named = [], {}
    for number, scene in enumerate(_scenes(rng, 6)):
        question, answer = _short_answer(scene, number)
        image_id = f"synthetic{number}"
        named[f"{image_id}.jpg"] = scene
        row = {"questionId": f"9{number:07d}", "imageId": image_id, "question": question, "answer": answer}
        rows.append({**row, "fullAnswer": f"The answer is {answer}."})
    _write_images(folder, named)
    return _jsonl(folder / "synthetic-gqa.jsonl", rows)


def _ten_answers(rng: random.Random, answer: str) -> list[str]:
    """Ten annotators' answers: mostly the right one, a few variants (as TextVQA's are)."""
    variants = [answer.upper(), f"{answer}.", "unanswerable"]
    return [answer if rng.random() < 0.7 else rng.choice(variants) for _ in range(10)]


def _write_textvqa(folder: Path, rng: random.Random) -> Path:
    data, named = [], {}
    for number, scene in enumerate(_scenes(rng, 6)):
        question, answer = _short_answer(scene, number + 2)  # starts with the word: TextVQA is about reading
        image_id = f"synthetic{number:04d}"
        named[f"{image_id}.jpg"] = scene
        data.append(
            {
                "question": question,
                "image_id": image_id,
                "image_classes": ["Synthetic"],
                "flickr_original_url": "",
                "flickr_300k_url": "",
                "image_width": SIZE[0],
                "image_height": SIZE[1],
                "answers": _ten_answers(rng, answer),
                "question_tokens": question.rstrip("?").lower().split(),
                "question_id": 90000 + number,
                "set_name": "val",
            }
        )
    _write_images(folder, named)
    path = folder / "synthetic-textvqa.json"
    record = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1-synthetic", "data": data}
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


CLIPS = "pope-clips"  # the clip set: POPE's layout, each row naming a clip (a `video` column) for a clip graph
CLIP_QUESTIONS = (("ball", "yes"), ("dog", "no"), ("box", "yes"), ("car", "no"))  # what the demo clip shows, or not


def _write_clips(folder: Path, rng: random.Random) -> Path:
    """POPE's JSONL with a `video` column: the repository's synthetic clip (a ball rolling, a box appearing;
    runtime/video.py), 16 frames at 64 px, asked what it holds."""
    from flashvlm_export.runtime.video import write_demo_clip

    (folder / "videos").mkdir()
    write_demo_clip(folder / "videos" / "synthetic_clip.mp4", frames=16, size=64)
    rows = [
        {"question_id": number, "video": "synthetic_clip.mp4", "text": f"Is there a {thing} in the clip?", "label": label}
        for number, (thing, label) in enumerate(CLIP_QUESTIONS, 1)
    ]
    return _jsonl(folder / "synthetic-pope-clips.jsonl", rows)


WRITERS = {MMSTAR: _write_mmstar, MMBENCH: _write_mmbench, POPE: _write_pope, GQA: _write_gqa, TEXTVQA: _write_textvqa}
FORMATS = {MMSTAR: "parquet, embedded pictures", MMBENCH: "TSV, base64 pictures, CircularEval copies", POPE: "JSONL + images/"}
FORMATS |= {GQA: "JSONL + images/", TEXTVQA: "JSON {data: [...]}, 10 answers each + images/"}
WRITERS[CLIPS] = _write_clips
FORMATS[CLIPS] = "POPE's JSONL naming a clip in a video column + videos/, for clip graphs"


def _mark(folder: Path) -> None:
    note = {"producer": PRODUCER, "synthetic": True, "note": "synthetic demo data: its accuracy says nothing about a model"}
    (folder / DEMO_MARK).write_text(json.dumps(note, indent=1) + "\n")


def _write_all(built: Path) -> dict[str, Path]:
    """Every layout's folder in `built`; layout -> its folder (what --data takes)."""
    (built / "README.txt").write_text(README)
    _mark(built)
    written = {}
    for number, layout in enumerate(WRITERS):
        folder = built / layout
        folder.mkdir()
        WRITERS[layout](folder, random.Random(SEED + number))
        _mark(folder)
        written[layout] = folder
    return written


def _check_folder(folder: Path, force: bool) -> None:
    """A new or empty folder; with --force, one this tool wrote (every file in its ledger, unchanged)."""
    if os.path.lexists(folder) and not (folder.is_dir() and not folder.is_symlink()):
        raise UsageError(f"{arg(FLAG, folder)} exists and is not a folder; choose another {arg(FLAG)}")
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise UsageError(
                f"{arg(FLAG, folder)} already exists; pass {switch('force')} to replace it, or choose another folder"
            )
        check_folder_replaceable(folder, arg(FLAG))


def write_demo_data(folder: str | Path, force: bool = False, log=print) -> dict[str, Path]:
    """Write the synthetic benchmarks into `folder` (all or nothing); layout -> the folder to pass as --data."""
    folder = Path(folder).expanduser()
    _check_folder(folder, force)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {folder.parent}: {exc.strerror}; choose another {arg(FLAG)}") from None
    reclaim_stale_staging(folder.parent, log)
    staging = make_staging(folder.parent)
    try:
        built = staging / "demo"
        built.mkdir()
        written = _write_all(built)
        mark_folder(built)  # what a later --force may replace: these files, unchanged
        if folder.exists():
            check_folder_replaceable(folder, arg(FLAG))  # again: a file may have been put there meanwhile
            os.replace(folder, staging / "replaced")
        os.replace(built, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    paths = {layout: folder / path.relative_to(built) for layout, path in written.items()}
    for layout, path in paths.items():
        log(f"Demo data: wrote {path} ({layout}: synthetic, {FORMATS[layout]})")
    readme = folder / "README.txt"
    log(f"Demo data is synthetic (see {readme}); evaluate one layout: flashvlm-export eval --data {paths[POPE]} ...")
    return paths
