"""Benchmarks as people have them, read offline: a data file, a folder, or a dataset in the local Hugging Face cache.

read_dataset() turns a benchmark's own files into a Dataset (evaluation/questions.py). Nothing is ever downloaded:
a repo id ("Lin-Chen/MMStar") is looked up in the hub cache (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub: datasets--ORG--NAME/snapshots/<rev>/**.parquet) and in the datasets library's Arrow cache
(HF_DATASETS_CACHE, else HF_HOME/datasets, else ~/.cache/huggingface/datasets: ORG___name/<config>/<version>/<hash>/
name-<split>[-SSSSS-of-NNNNN].arrow, name snake-cased as datasets.naming.camelcase_to_snakecase does, and the folder
built as builder.py's _relative_data_dir "{namespace}___{dataset_name}/{config_id}/{version}/{hash}").

The files each layout reads (COLUMNS below is the one table of their columns), as their sources state them:

  MMStar   HF Lin-Chen/MMStar, mmstar.parquet (README configs: config mmstar, split val): index, question (the options
           inline, "...\\nOptions: A: x, B: y, C: z, D: w"), image (HF Image: struct {bytes, path}), answer (a letter),
           category, l2_category, meta_info {source, split, image_path}.
  MMBench  OpenCompass's TSVs (github.com/open-compass/MMBench README: mmbench_dev_en_20231003.tsv, ...): index,
           question, hint, A, B, C, D, answer, category, image (base64), source, l2-category, comment, split; empty (NaN)
           where an option or the hint is absent. VLMEvalKit's ImageBaseDataset (vlmeval/dataset/image_base.py) reads
           an image field of <= 64 characters as the index of the row whose picture it shares (CircularEval copies).
           HF lmms-lab/MMBench (README: configs cc/cn/en, files en/dev-00000-of-00001.parquet): the same columns
           with an HF image struct. CircularEval: rows whose index % 1_000_000 agree are one question's rotations.
  POPE     The original JSONL (AoiDragon/POPE output/coco/coco_pope_{random,popular,adversarial}.json, as LLaVA
           reads them): question_id, image (a COCO val2014 file name), text (the question), label "yes"/"no".
           HF lmms-lab/POPE (README: data/test-0000N-of-00003.parquet): id, question_id, question, answer,
           image_source, image (struct), category. question_id repeats across its three categories, so the id is
           the first id column whose values are unique (index, question_id, questionId, id).
  GQA      Rows with question, answer and the picture: an embedded struct, a file name, or imageId -> <images>/<imageId>
           .jpg (HF lmms-lab/GQA testdev_balanced_instructions: id, imageId, question, answer, fullAnswer, ...; the
           official questions JSON, {questionId: {imageId, question, answer, ...}}, is read too).
  TextVQA  The official TextVQA_0.5.1_val.json: {"dataset_name", ..., "data": [{question_id, question, image_id,
           answers: [10 strings], ...}]}, pictures <images>/<image_id>.jpg (HF facebook/textvqa loader script,
           mmpretrain's TextVQA dataset). HF lmms-lab/textvqa (README: data/validation-*.parquet): image_id,
           question_id, question, question_tokens, image (struct), answers (list), ocr_tokens, ...

Files group into splits by their folder (a leading data/ dropped) and file-name prefix (the shard suffix
-00000-of-00003 dropped): en/dev-00000-of-00001.parquet -> "en/dev", data/test-00000-of-00003.parquet -> "test", a lone
questions.jsonl -> "questions". Every error is one UsageError line that names the bad value and the fix.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from flashvlm_export.errors import UsageError, arg, nearest
from flashvlm_export.evaluation.questions import GQA, LAYOUTS, MMBENCH, MMSTAR, POPE, TEXTVQA, Dataset, Question

AUTO = "auto"
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".tsv", ".arrow")
DEMO_MARK = ".flashvlm-synthetic.json"  # written by demo_data.py into each folder it fills: synthetic=True
NOT_DATA = {"dataset_info.json", "state.json", "dataset_dict.json"}  # the datasets library's own records
ID_COLUMNS = ("index", "question_id", "questionId", "id")  # a benchmark's own question id, first unique one wins
CIRCULAR = 1_000_000  # MMBench CircularEval: a rotated copy's index is the original's + k * 1_000_000
INSTALL_EVAL = "pip install 'flashvlm-export[eval]'"
TITLES = {MMSTAR: "MMStar", MMBENCH: "MMBench", POPE: "POPE", GQA: "GQA", TEXTVQA: "TextVQA"}
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Columns:
    """What a layout reads: each role's accepted column names, the first present one used."""

    question: tuple[str, ...]
    answer: tuple[str, ...]
    image: tuple[str, ...]  # an embedded picture or a file name
    image_id: tuple[str, ...] = ()  # else an id naming <images>/<id>.jpg
    required: tuple[str, ...] = ()  # columns the layout needs besides those (MMBench's options)
    expects: str = ""  # how an error describes it


COLUMNS = {
    MMSTAR: Columns(("question",), ("answer",), ("image",), expects="question with inline 'Options:', answer letter, image"),
    MMBENCH: Columns(
        ("question",), ("answer",), ("image",), required=("A", "B"), expects="question, A, B (C, D...), answer, image"
    ),
    POPE: Columns(("text", "question"), ("label", "answer"), ("image",), expects="text|question, label|answer yes/no, image"),
    GQA: Columns(("question",), ("answer",), ("image",), ("imageId",), expects="question, answer (one string), image|imageId"),
    TEXTVQA: Columns(
        ("question",), ("answers",), ("image",), ("image_id",), expects="question, answers (a list), image|image_id"
    ),
}


def _bad(message: str) -> UsageError:
    return UsageError(" ".join(message.split()))  # always one line


# ---------------------------------------------------------------- finding the files


def _hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def hub_cache() -> Path:
    """The hub cache folder, as huggingface_hub finds it."""
    return Path(os.environ["HF_HUB_CACHE"]).expanduser() if os.environ.get("HF_HUB_CACHE") else _hf_home() / "hub"


def datasets_cache() -> Path:
    """The datasets library's Arrow cache folder."""
    env = os.environ.get("HF_DATASETS_CACHE")
    return Path(env).expanduser() if env else _hf_home() / "datasets"


def _snake(name: str) -> str:
    """datasets.naming.camelcase_to_snakecase: "MMStar" -> "mm_star", "POPE" -> "pope"."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()


def _child(folder: Path, name: str) -> Path | None:
    """The entry of `folder` called `name`, ignoring case (the Hub's repo ids are case-insensitive)."""
    try:
        return next((p for p in sorted(folder.iterdir()) if p.name.casefold() == name.casefold()), None)
    except OSError:
        return None


def _shard_prefix(stem: str) -> str:
    return "" if stem.isdigit() else _SHARD.sub("", stem)


def _split_name(relative: Path, strip: str = "") -> str:
    """A file's split: its folder (a leading data/ dropped) and its name's prefix (shard suffix, `strip` dropped)."""
    prefix = _shard_prefix(relative.name[: -len(relative.suffix)] if relative.suffix else relative.name)
    if strip and prefix.startswith(strip + "-"):
        prefix = prefix[len(strip) + 1 :]
    parts = [p for i, p in enumerate(relative.parent.parts) if not (i == 0 and p == "data")]
    return "/".join([*parts, prefix] if prefix else parts) or "default"


def _data_files(folder: Path, suffixes=DATA_SUFFIXES) -> list[Path]:
    """The data files under `folder`, at any depth, hidden entries and the datasets library's records left out."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(p.startswith(".") for p in relative.parts) or path.name in NOT_DATA or path.name.startswith("cache-"):
            continue
        if path.suffix.lower() in suffixes and path.is_file():
            found.append(path)
    return found


def _arrow_prefix(folder: Path) -> str:
    """The dataset name an Arrow cache folder's files start with (its dataset_info.json), else ""."""
    try:
        info = json.loads((folder / "dataset_info.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(info.get("dataset_name") or info.get("builder_name") or "") if isinstance(info, dict) else ""


def _group(root: Path, files: list[Path]) -> dict[str, list[Path]]:
    splits: dict[str, list[Path]] = {}
    for path in files:
        strip = _arrow_prefix(path.parent) if path.suffix == ".arrow" else ""
        splits.setdefault(_split_name(path.relative_to(root), strip), []).append(path)
    return splits


@dataclass
class _Source:
    label: str  # how the dataset's name cites it: a repo id, a folder's or a file's name
    splits: dict[str, list[Path]]
    synthetic: bool = False
    one_file: bool = False  # `data` named the file itself


def _hub_snapshot(repo: str) -> Path | None:
    """The snapshot of dataset `repo` in the hub cache: the one refs/main names, else the newest."""
    org, name = repo.split("/", 1)
    folder = _child(hub_cache(), f"datasets--{org}--{name}")
    snapshots = [p for p in sorted((folder / "snapshots").glob("*")) if p.is_dir()] if folder else []
    if not snapshots:
        return None
    try:
        main = snapshots[0].parent / (folder / "refs" / "main").read_text().strip()
        if main.is_dir():
            return main
    except OSError:
        pass
    return max(snapshots, key=lambda p: p.stat().st_mtime)


def _arrow_cache(repo: str) -> dict[str, list[Path]]:
    """The Arrow files of dataset `repo` in the datasets cache, by split: <config>/<split> ("default" config dropped),
    the newest <version>/<hash> folder of each config."""
    org, name = repo.split("/", 1)
    folder = _child(datasets_cache(), f"{org}___{_snake(name)}") or _child(datasets_cache(), f"{org}___{name}")
    splits: dict[str, list[Path]] = {}
    for config in sorted(p for p in (folder.iterdir() if folder else ()) if p.is_dir()):
        builds = [h for h in config.glob("*/*") if h.is_dir() and not h.name.endswith((".incomplete", ".lock"))]
        if not builds:
            continue
        build = max(builds, key=lambda p: p.stat().st_mtime)
        for split, files in _group(build, _data_files(build, (".arrow",))).items():
            key = split if config.name == "default" else f"{config.name}/{split}"
            splits[key] = files
    return splits


def _from_cache(repo: str) -> _Source | None:
    snapshot = _hub_snapshot(repo)
    if snapshot is not None:
        files = _data_files(snapshot, (".parquet",)) or _data_files(snapshot)
        if files:
            return _Source(repo, _group(snapshot, files))
    splits = _arrow_cache(repo)
    return _Source(repo, splits) if splits else None


def _is_synthetic(folder: Path) -> bool:
    """Whether demo_data.py wrote `folder` (its mark, in it or the folder above)."""
    for place in (folder, folder.parent):
        try:
            mark = json.loads((place / DEMO_MARK).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(mark, dict) and mark.get("synthetic") is True:
            return True
    return False


def _locate(data: str | Path) -> _Source:
    """The splits of `data`: a data file, a folder of them, or a repo id in the local Hugging Face cache."""
    path = Path(data).expanduser()
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise _bad(f"{arg('data', data)} is a {path.suffix or 'suffix-less'} file; pass a {', '.join(DATA_SUFFIXES)} file")
        return _Source(path.name, {_split_name(Path(path.name)): [path]}, _is_synthetic(path.parent), one_file=True)
    if path.is_dir():
        files = _data_files(path)
        if not files:
            raise _bad(
                f"{arg('data', data)} holds no {', '.join(DATA_SUFFIXES)} file; pass the folder the benchmark's files are in"
            )
        return _Source(path.resolve().name, _group(path, files), _is_synthetic(path))
    if _REPO_ID.match(str(data)):
        found = _from_cache(str(data))
        if found is not None:
            return found
        raise _bad(
            f"{arg('data', data)} is not a file or folder here, and no dataset {data} is in the local Hugging Face cache "
            f"({hub_cache()}, {datasets_cache()}); nothing is downloaded: fetch it first "
            f"(huggingface-cli download --repo-type dataset {data}) or pass the folder that holds its files"
        )
    raise _bad(
        f"{arg('data', data)} does not exist; pass a data file ({', '.join(DATA_SUFFIXES)}), a folder of them, or a repo id"
    )


def _split_arg(value: str) -> str:
    """The split argument as the caller spells it: --data-split on the command line (cli/evaluate.py), split= in Python."""
    return arg("data_split" if arg("x").startswith("--") else "split", value)


def _choose_split(source: _Source, data, split: str | None) -> tuple[str, list[Path]]:
    names = sorted(source.splits)
    if split is None:
        if len(names) > 1:
            raise _bad(f"{arg('data', data)} holds {len(names)} splits: {', '.join(names)}; pick one with {_split_arg('NAME')}")
        return names[0], source.splits[names[0]]
    if split not in source.splits:
        hint = nearest(split, names)
        guess = f" (did you mean {hint}?)" if hint else ""
        raise _bad(f"{_split_arg(split)} is not in {data}{guess}; its splits: {', '.join(names)}")
    return split, source.splits[split]


# ---------------------------------------------------------------- reading rows


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise _bad(f"reading parquet and Arrow files needs pyarrow, which is not installed: {INSTALL_EVAL}") from None
    return sys.modules["pyarrow"]


def _read_parquet(path: Path) -> list[dict]:
    pa = _pyarrow()
    return pa.parquet.read_table(path).to_pylist()


def _read_arrow(path: Path) -> list[dict]:
    """An Arrow file: the IPC stream format the datasets library writes, else the IPC file format."""
    pa = _pyarrow()
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all().to_pylist()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all().to_pylist()


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise _bad(f"{path} line {number} is not JSON ({exc}); fix or remove that line") from None
    return rows


def _read_json(path: Path) -> list[dict]:
    """A list of rows, {"data": [rows]} (TextVQA), {id: row} (GQA's questions, the id kept as questionId), or JSON
    lines under a .json name (POPE's own coco_pope_random.json is one question a line)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return _read_jsonl(path)
    if isinstance(record, dict) and isinstance(record.get("data"), list):
        return record["data"]
    if isinstance(record, dict) and record and all(isinstance(v, dict) for v in record.values()):
        return [{"questionId": key, **row} for key, row in record.items()]
    if isinstance(record, list):
        return record
    raise _bad(f'{path} holds neither a list of questions nor {{"data": [...]}}; pass the benchmark\'s question file')


def _read_tsv(path: Path) -> list[dict]:
    """A TSV as OpenCompass/VLMEvalKit write them (pandas: minimal quoting, NaN as an empty field)."""
    csv.field_size_limit(sys.maxsize)  # base64 pictures run to megabytes
    with open(path, encoding="utf-8", newline="") as f:
        return [dict(row) for row in csv.DictReader(f, delimiter="\t")]


READERS = {".parquet": _read_parquet, ".arrow": _read_arrow, ".jsonl": _read_jsonl, ".json": _read_json, ".tsv": _read_tsv}


def _read_rows(files: list[Path]) -> list[tuple[Path, dict]]:
    rows = []
    for path in files:
        read = READERS[path.suffix.lower()]
        rows.extend((path, row) for row in read(path) if isinstance(row, dict))
    if not rows:
        raise _bad(f"{files[0]} holds no questions; pass the benchmark's question file")
    return rows


# ---------------------------------------------------------------- values


def _text(value) -> str | None:
    """A cell as text; None where it is empty (None, NaN, "", "nan": how TSVs and parquet files mark a gap)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return None if text == "" or text.lower() == "nan" else text


def _first(columns: set[str], names: tuple[str, ...]) -> str | None:
    return next((c for c in names if c in columns), None)


def _columns(rows: list[tuple[Path, dict]]) -> list[str]:
    seen: dict[str, None] = {}
    for _, row in rows[:200]:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _sample(rows, column: str) -> list:
    return [row.get(column) for _, row in rows[:200] if row.get(column) is not None]


def _letter(value) -> bool:
    text = _text(value)
    return text is not None and len(text) == 1 and text.isalpha() and text.isupper()


def _matches(layout: str, rows) -> bool:
    """Whether the rows look like `layout`'s files (the auto rules, in the order LAYOUT_ORDER tries them)."""
    columns = set(_columns(rows))
    spec = COLUMNS[layout]
    question, answer = _first(columns, spec.question), _first(columns, spec.answer)
    image = _first(columns, spec.image + spec.image_id + VIDEO)
    if not (question and answer and image and all(c in columns for c in spec.required)):
        return False
    answers = _sample(rows, answer)
    if not answers:
        return False
    if layout == TEXTVQA:
        return all(isinstance(a, (list, tuple)) for a in answers)
    if any(isinstance(a, (list, tuple, dict)) for a in answers):
        return False
    if layout == POPE:
        return all((_text(a) or "").lower() in ("yes", "no") for a in answers)
    if layout == MMSTAR:
        return all(_letter(a) for a in answers) and all("Options:" in str(q) for q in _sample(rows, question))
    return True  # MMBench (A and B present), GQA (one string answer)


VIDEO = ("video",)  # any layout's row may name a clip file instead of a picture (a clip graph's benchmark)
LAYOUT_ORDER = (MMBENCH, TEXTVQA, POPE, MMSTAR, GQA)  # most specific first: GQA takes any single string answer


def _detect(rows, data) -> str:
    found = next((layout for layout in LAYOUT_ORDER if _matches(layout, rows)), None)
    if found is None:
        expected = "; ".join(f"{name}: {COLUMNS[name].expects}" for name in LAYOUTS)
        raise _bad(
            f"{arg('data', data)} has columns {', '.join(_columns(rows))}, which match no layout ({expected}); "
            f"pass {arg('layout', 'NAME')} to read them as one of these and be told what is missing"
        )
    return found


def _check_columns(layout: str, rows, data) -> None:
    columns = set(_columns(rows))
    spec = COLUMNS[layout]
    # no answer column: an unlabelled split (MMBench's test TSV), read when its layout is named: agreement and costs only
    roles = [spec.question, spec.image + spec.image_id + VIDEO] + [(c,) for c in spec.required]
    missing = ["|".join(names) for names in roles if not _first(columns, names)]
    if missing:
        raise _bad(
            f"{arg('data', data)} has no column {', '.join(missing)} that {arg('layout', layout)} needs "
            f"(it has {', '.join(_columns(rows))}; {layout} reads {spec.expects}); pass the layout these files follow"
        )


def _ids(rows, data) -> list[str]:
    """Each row's id: the first id column whose values are all there and unique, else the row's position."""
    columns = set(_columns(rows))
    present = [c for c in ID_COLUMNS if c in columns]
    for column in present:
        ids = [_text(row.get(column)) for _, row in rows]
        if None not in ids and len(set(ids)) == len(ids):
            return ids
    if not present:
        return [str(n) for n in range(len(rows))]
    column = present[0]
    ids = [_text(row.get(column)) for _, row in rows]
    if None in ids:
        raise _bad(f"{arg('data', data)} has a question with no {column} (row {ids.index(None) + 1}); give every question its id")
    seen: set[str] = set()
    duplicate = next(i for i in ids if i in seen or seen.add(i))
    raise _bad(
        f"{arg('data', data)} has {column} {duplicate} more than once; each question needs its own id: pass one split "
        f"(or file) at a time, or remove the copies"
    )


# ---------------------------------------------------------------- pictures


def _decode_base64(text: str, qid: str, path: Path) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(
            f"question {qid} in {path}: its image is neither base64 nor a file name; pass the benchmark's own file"
        ) from None


def _named_file(name: str, qid: str, path: Path, images: Path | None, what: str = "picture", folder: str = "images") -> Path:
    """A picture (or clip) file the dataset names: under `images`, else beside the data file or in its images/ (videos/)
    folder."""
    places = [images] if images is not None else [path.parent, path.parent / folder]
    for place in places:
        if (place / name).is_file():
            return place / name
    where = " or ".join(str(p) for p in places)
    raise _bad(
        f"question {qid} in {path} names the {what} {name}, which is not in {where}; pass the folder that holds the "
        f"benchmark's {what}s with {arg('images', 'DIR')}"
    )


def _picture(value, qid: str, path: Path, images: Path | None, shared: dict[str, str]) -> Path | bytes:
    """A row's picture: embedded bytes (an HF image struct, base64 text), or the file it names."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value)
    text = _text(value)
    if text is None:
        raise _bad(f"question {qid} in {path} has an empty image; pass the benchmark's own file, which has one for each")
    if path.suffix.lower() == ".tsv" and len(text) <= 64 and text in shared:
        text = shared[text]  # VLMEvalKit: a short image field is the index of the row whose picture it shares
    if len(text) > 260 or path.suffix.lower() == ".tsv" and len(text) > 64:
        return _decode_base64(text, qid, path)
    return _named_file(text, qid, path, images)


def _id_picture(value, qid: str, path: Path, images: Path | None) -> Path:
    """imageId / image_id -> <images>/<id>.jpg (GQA, TextVQA)."""
    text = _text(value)
    if text is None:
        raise _bad(f"question {qid} in {path} has no image id; pass the benchmark's own file")
    return _named_file(f"{text}.jpg", qid, path, images)


# ---------------------------------------------------------------- questions


def _options(row: dict) -> tuple[tuple[str, str], ...]:
    """MMBench's option columns A, B, C, ... up to the first empty one (an absent option is an empty field, NaN), as
    LLaVA's model_vqa_mmbench.py get_options reads them."""
    options = []
    for letter in "ABCDEFGHIJ":
        text = _text(row.get(letter))
        if text is None:
            break
        options.append((letter, text))
    return tuple(options)


def _answer(layout: str, value, qid: str, path: Path):
    """The label as the layout's rule scores it; None for a row without one (an unlabelled split: its answers still
    agree or not with K = N's, and cost what they cost)."""
    if layout == TEXTVQA:
        listed = (value,) if isinstance(value, str) else value or ()
        answers = tuple(t for t in (_text(a) for a in listed) if t is not None)
        return answers or None
    text = _text(value)
    if text is not None and layout == POPE:
        if text.lower() in ("yes", "no"):
            return text.lower()
        raise _bad(f"question {qid} in {path} has the label {text!r}, not yes/no; pass POPE's own files")
    if text is not None:
        return text.upper() if layout in (MMSTAR, MMBENCH) else text
    return None


def _circular_groups(layout: str, ids: list[str]) -> dict[str, tuple[str, int]]:
    """MMBench CircularEval, from the whole file (before --limit): each id's group (index % 1e6) and how many copies
    the group has; {} where the file has no rotated copies (ids all below 1e6) or ids that are not numbers."""
    if layout != MMBENCH or not all(q.isdigit() for q in ids) or not any(int(q) >= CIRCULAR for q in ids):
        return {}
    group = {q: str(int(q) % CIRCULAR) for q in ids}
    sizes: dict[str, int] = {}
    for g in group.values():
        sizes[g] = sizes.get(g, 0) + 1
    return {q: (g, sizes[g]) for q, g in group.items()}


def _questions(layout: str, rows, ids: list[str], images: Path | None, groups: dict[str, tuple[str, int]]) -> list[Question]:
    columns = set(_columns(rows))
    spec = COLUMNS[layout]
    question, answer = _first(columns, spec.question), _first(columns, spec.answer)
    image, image_id = _first(columns, spec.image), _first(columns, spec.image_id)
    shared = {qid: str(row.get("image")) for qid, (_, row) in zip(ids, rows, strict=True)} if layout == MMBENCH else {}
    built = []
    video = _first(columns, VIDEO)
    for qid, (path, row) in zip(ids, rows, strict=True):
        clip = None
        if video and _text(row.get(video)) is not None:  # a clip: a file beside the data, in videos/ or under --images
            picture, clip = None, _named_file(_text(row.get(video)), qid, path, images, "clip", "videos")
        elif image and row.get(image) is not None:
            picture = _picture(row.get(image), qid, path, images, shared)
        elif image_id:
            picture = _id_picture(row.get(image_id), qid, path, images)
        else:
            picture = _picture(None, qid, path, images, shared)
        built.append(
            Question(
                qid=qid,
                question=_text(row.get(question)) or "",
                answer=_answer(layout, row.get(answer) if answer else None, qid, path),
                image=picture,
                options=_options(row) if layout == MMBENCH else (),
                hint=_text(row.get("hint")) if layout == MMBENCH else None,
                group=groups[qid][0] if qid in groups else None,
                rotations=groups[qid][1] if qid in groups else 1,
                category=_text(row.get("category")),
                video=clip,
            )
        )
    return built


def _check_layout(layout: str) -> None:
    if layout not in (AUTO, *LAYOUTS):
        hint = nearest(str(layout), (AUTO, *LAYOUTS))
        guess = f"did you mean {hint}? " if hint else ""
        raise _bad(f"{arg('layout', layout)} is not a layout; {guess}pass one of {', '.join((AUTO, *LAYOUTS))}")


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _bad(f"{arg('limit', limit)} must be a whole number >= 1 (the first N questions), or left out for all")


def read_dataset(
    data: str | Path, layout: str = AUTO, split: str | None = None, images: str | Path | None = None, limit: int | None = None
) -> Dataset:
    """The questions of a benchmark's files (see the module docstring for what each layout reads). `data`: a data
    file, a folder of them, or a repo id in the local Hugging Face cache; `layout`: auto (detected from the columns)
    or one of LAYOUTS; `split`: which split when `data` holds several; `images`: the folder the pictures a dataset
    names are in (default: beside the data file, or its images/ folder); `limit`: the first N questions. Every
    picture file named is found here, before any model runs (eval decodes them next: evaluation/item.check_pictures)."""
    _check_layout(layout)
    _check_limit(limit)
    if images is not None and not Path(images).expanduser().is_dir():
        raise _bad(f"{arg('images', images)} is not a folder; pass the folder that holds the benchmark's pictures")
    source = _locate(data)
    split_name, files = _choose_split(source, data, split)
    rows = _read_rows(files)
    if layout == AUTO:
        layout = _detect(rows, data)
    else:
        _check_columns(layout, rows, data)
    ids = _ids(rows, data)
    groups = _circular_groups(layout, ids)  # from the whole file: --limit may cut a group
    if limit is not None:
        rows, ids = rows[:limit], ids[:limit]
    folder = Path(images).expanduser() if images is not None else None
    questions = _questions(layout, rows, ids, folder, groups)
    name = f"{TITLES[layout]} ({source.label})" if source.one_file else f"{TITLES[layout]} ({source.label}, {split_name})"
    return Dataset(layout, name, tuple(files), questions, synthetic=source.synthetic)
