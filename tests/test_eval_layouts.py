"""evaluation/layouts.py and demo_data.py: every layout read back from the demo data and from hand-built files in the
real upstream shapes (OpenCompass TSV, HF hub cache parquet, datasets Arrow cache, POPE JSONL), and each refusal one
line naming the bad value."""

from __future__ import annotations

import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flashvlm_export.errors import UsageError
from flashvlm_export.evaluation.demo_data import CLIPS, WRITERS, write_demo_data
from flashvlm_export.evaluation.layouts import read_dataset
from flashvlm_export.evaluation.questions import GQA, LAYOUTS, MMBENCH, MMSTAR, POPE, TEXTVQA


def _png(colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, format="PNG")
    return out.getvalue()


def _one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert str(word) in message, (word, message)
    return message


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    lines = []
    paths = write_demo_data(tmp_path_factory.mktemp("eval") / "demo", log=lines.append)
    return paths, lines


# ---------------------------------------------------------------- the demo data, read back


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("given", ["auto", "named"])
def test_demo_reads_back(demo, layout, given):
    paths, _ = demo
    dataset = read_dataset(paths[layout], layout=layout if given == "named" else "auto")
    assert dataset.layout == layout and dataset.synthetic and len(dataset.questions) == 6
    assert len({q.qid for q in dataset.questions}) == 6
    for q in dataset.questions:
        picture = q.image if isinstance(q.image, bytes) else q.image.read_bytes()
        assert Image.open(io.BytesIO(picture)).size == (128, 96)
        if layout in (MMSTAR, MMBENCH):
            assert q.answer in "ABCD" and len(q.answer) == 1
        if layout == POPE:
            assert q.answer in ("yes", "no")
        if layout == TEXTVQA:
            assert isinstance(q.answer, tuple) and len(q.answer) == 10
        if layout == GQA:
            assert isinstance(q.answer, str) and q.answer
    if layout == MMSTAR:
        assert all("\nOptions: A: " in q.question for q in dataset.questions)
    if layout == MMBENCH:
        groups = [q.group for q in dataset.questions]
        assert sorted(groups) == ["0", "0", "1", "1", "2", "2"]
        by_group = {}
        for q in dataset.questions:
            by_group.setdefault(q.group, []).append(q)
        for first, turned in by_group.values():  # a rotation: the same right option under another letter
            assert dict(first.options)[first.answer] == dict(turned.options)[turned.answer]
            assert first.image == turned.image  # the copy's image field names the original's index
        assert [len(q.options) for q in dataset.questions[:3]] == [4, 4, 3]  # D empty: NaN in the TSV
        assert dataset.questions[0].hint and dataset.questions[1].hint is None


def test_demo_is_deterministic_and_logged(demo, tmp_path):
    paths, lines = demo
    again = write_demo_data(tmp_path / "again", log=lambda line: None)
    for layout in LAYOUTS:
        first = sorted(p.relative_to(paths[layout]) for p in paths[layout].rglob("*") if p.is_file())
        assert first == sorted(p.relative_to(again[layout]) for p in again[layout].rglob("*") if p.is_file())
        for relative in first:
            assert (paths[layout] / relative).read_bytes() == (again[layout] / relative).read_bytes(), relative
    assert len(lines) == len(WRITERS) + 1 and "eval --data" in lines[-1]
    readme = (paths[MMSTAR].parent / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "says nothing about any model" in readme


def test_limit_and_name(demo):
    paths, _ = demo
    dataset = read_dataset(paths[MMBENCH], limit=2)
    assert [q.qid for q in dataset.questions] == ["0", "1"]
    assert dataset.name.startswith("MMBench (mmbench")
    with pytest.raises(UsageError) as excinfo:
        read_dataset(paths[POPE], limit=0)
    _one_line(excinfo, "limit", "0")


# ---------------------------------------------------------------- the real upstream shapes, built by hand


def _mmbench_tsv(path, rows):
    columns = ["index", "question", "hint", "A", "B", "C", "D", "E", "answer", "category", "image"]
    lines = ["\t".join(columns)] + ["\t".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def test_mmbench_official_tsv(tmp_path):
    image = base64.b64encode(_png()).decode()
    _mmbench_tsv(
        tmp_path / "mmbench_dev_en_20231003.tsv",
        [
            {"index": 7, "question": "Which colour?", "hint": "", "A": "red", "B": "blue", "C": "green", "D": "", "answer": "A"}
            | {"category": "attribute", "image": image},
            {"index": 8, "question": "Which shape?", "hint": "Look.", "A": "a", "B": "b", "answer": "B", "image": image},
        ],
    )
    dataset = read_dataset(tmp_path / "mmbench_dev_en_20231003.tsv")
    assert dataset.layout == MMBENCH and not dataset.synthetic
    first, second = dataset.questions
    assert first.options == (("A", "red"), ("B", "blue"), ("C", "green")) and first.hint is None
    assert first.group is None and first.category == "attribute" and first.image == _png()
    assert second.hint == "Look." and second.options == (("A", "a"), ("B", "b"))


def test_hub_cache_parquet_found_by_repo_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "none"))
    repo = tmp_path / "hub" / "datasets--org--name"
    rows = [
        {"index": i, "question": f"Q{i}", "hint": None, "A": "x", "B": "y", "C": None, "D": None, "answer": "B"}
        | {"category": "c", "image": {"bytes": _png(), "path": f"{i}.png"}}
        for i in range(3)
    ]
    for split in ("en/dev", "en/test"):
        (repo / "snapshots" / "abc" / split).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), repo / "snapshots" / "abc" / f"{split}-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    dataset = read_dataset("org/name", split="en/dev")
    assert dataset.layout == MMBENCH and dataset.name == "MMBench (org/name, en/dev)"
    assert [q.options for q in dataset.questions][0] == (("A", "x"), ("B", "y")) and dataset.questions[0].image == _png()
    with pytest.raises(UsageError) as excinfo:
        read_dataset("org/name")
    _one_line(excinfo, "en/dev", "en/test", "split")
    with pytest.raises(UsageError) as excinfo:
        read_dataset("org/name", split="en/val")
    _one_line(excinfo, "en/val", "en/dev, en/test")
    with pytest.raises(UsageError) as excinfo:
        read_dataset("org/other")
    _one_line(excinfo, "org/other", "huggingface-cli download")


def test_datasets_arrow_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    build = tmp_path / "datasets" / "Lin-Chen___mm_star" / "val" / "0.0.0" / "f00d"
    build.mkdir(parents=True)
    rows = [
        {"index": i, "question": "What?\nOptions: A: red, B: blue", "image": {"bytes": _png(), "path": None}, "answer": "B"}
        | {"category": "coarse perception", "l2_category": "x", "meta_info": {"source": "s", "split": "val", "image_path": "p"}}
        for i in range(4)
    ]
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(build / "mm_star-val.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)  # the IPC stream format the datasets library writes
    (build / "dataset_info.json").write_text(json.dumps({"dataset_name": "mm_star", "builder_name": "parquet"}))
    dataset = read_dataset("Lin-Chen/MMStar", limit=3)
    assert dataset.layout == MMSTAR and dataset.name == "MMStar (Lin-Chen/MMStar, val/val)"
    assert [q.answer for q in dataset.questions] == ["B"] * 3 and dataset.questions[0].image == _png()


def _pope(folder, names, labels=("yes", "no")):
    rows = [
        {"question_id": n, "image": name, "text": f"Is there a cat in the image? {n}", "label": labels[n % 2]}
        for n, name in enumerate(names, 1)
    ]
    (folder / "coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "coco_pope_random.json"


def test_pope_jsonl_with_images_dir(tmp_path):
    pictures = tmp_path / "val2014"
    pictures.mkdir()
    names = ["COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg"]
    for name in names:
        (pictures / name).write_bytes(_png())
    data = tmp_path / "pope"
    data.mkdir()
    path = _pope(data, names)  # JSON lines under a .json name, as AoiDragon/POPE's output/coco files are
    dataset = read_dataset(path, images=pictures)
    assert dataset.layout == POPE and [q.answer for q in dataset.questions] == ["no", "yes"]
    assert dataset.questions[0].image == pictures / names[0] and dataset.questions[0].qid == "1"
    with pytest.raises(UsageError) as excinfo:
        read_dataset(path)
    _one_line(excinfo, names[0], "question 1", "images")


def test_gqa_and_textvqa_official_shapes(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("n161313", "0054c91397f2fe05"):
        (tmp_path / "images" / f"{name}.jpg").write_bytes(_png())
    gqa = {"201307251": {"imageId": "n161313", "question": "What colour is the car?", "answer": "red", "fullAnswer": "Red."}}
    (tmp_path / "gqa").mkdir()
    (tmp_path / "gqa" / "testdev_balanced_questions.json").write_text(json.dumps(gqa))
    dataset = read_dataset(tmp_path / "gqa" / "testdev_balanced_questions.json", images=tmp_path / "images")
    assert dataset.layout == GQA and dataset.questions[0].qid == "201307251" and dataset.questions[0].answer == "red"
    textvqa = {"dataset_name": "textvqa", "data": [{"question_id": 34602, "question": "what is written?"}]}
    textvqa["data"][0] |= {"image_id": "0054c91397f2fe05", "answers": ["nous les gosses"] * 9 + ["dakota"]}
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(textvqa))
    dataset = read_dataset(tmp_path / "TextVQA_0.5.1_val.json")
    assert dataset.layout == TEXTVQA and dataset.questions[0].image == tmp_path / "images" / "0054c91397f2fe05.jpg"
    assert len(dataset.questions[0].answer) == 10


# ---------------------------------------------------------------- planted errors, each one line


def test_missing_data_path(tmp_path):
    with pytest.raises(UsageError) as excinfo:
        read_dataset(tmp_path / "nowhere.parquet")
    _one_line(excinfo, "nowhere.parquet", "does not exist")


def test_unknown_layout(demo):
    with pytest.raises(UsageError) as excinfo:
        read_dataset(demo[0][MMSTAR], layout="mmstr")
    _one_line(excinfo, "mmstr", "did you mean mmstar")


def test_columns_matching_no_layout(tmp_path):
    (tmp_path / "odd.jsonl").write_text(json.dumps({"id": 1, "prompt": "hi", "target": "x"}) + "\n")
    with pytest.raises(UsageError) as excinfo:
        read_dataset(tmp_path / "odd.jsonl")
    _one_line(excinfo, "id, prompt, target", "match no layout", "mmbench: question, A, B")


def test_given_layout_missing_columns(demo):
    with pytest.raises(UsageError) as excinfo:
        read_dataset(demo[0][POPE], layout=MMBENCH)
    _one_line(excinfo, "A, B", "mmbench")


def test_empty_image_bytes(tmp_path):
    rows = [{"index": 0, "question": "Q?\nOptions: A: x, B: y", "image": {"bytes": b"", "path": None}, "answer": "A"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mmstar.parquet")
    with pytest.raises(UsageError) as excinfo:
        read_dataset(tmp_path / "mmstar.parquet")
    _one_line(excinfo, "question 0", "empty image")


def test_duplicate_ids(tmp_path):
    rows = [{"question_id": 5, "image": "a.jpg", "text": "Is there a dog?", "label": "no"}] * 2
    (tmp_path / "pope.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UsageError) as excinfo:
        read_dataset(tmp_path / "pope.jsonl")
    _one_line(excinfo, "question_id 5", "more than once")


def test_several_splits_without_split(demo):
    with pytest.raises(UsageError) as excinfo:
        read_dataset(demo[0][MMSTAR].parent)
    _one_line(excinfo, f"{len(WRITERS)} splits", "mmstar/synthetic-mmstar", "split")


def test_demo_folder_exists_without_force(demo):
    folder = demo[0][MMSTAR].parent
    with pytest.raises(UsageError) as excinfo:
        write_demo_data(folder, log=lambda line: None)
    _one_line(excinfo, folder, "already exists", "force=True")


def test_force_replaces_own_folder_only(tmp_path):
    folder = tmp_path / "demo"
    write_demo_data(folder, log=lambda line: None)
    write_demo_data(folder, force=True, log=lambda line: None)  # this tool's folder, unchanged: replaced
    (folder / "pope" / "mine.txt").write_text("the user's notes")
    with pytest.raises(UsageError) as excinfo:
        write_demo_data(folder, force=True, log=lambda line: None)
    _one_line(excinfo, "mine.txt", "nothing was deleted")
    assert (folder / "pope" / "mine.txt").read_text() == "the user's notes"
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.md").write_text("x")
    with pytest.raises(UsageError) as excinfo:
        write_demo_data(user, force=True, log=lambda line: None)
    _one_line(excinfo, "notes.md")
    assert (user / "notes.md").exists() and not any(p.name.startswith(".flashvlm-tmp") for p in tmp_path.iterdir())


def test_clip_rows_name_their_clip(demo, tmp_path):
    """A row's `video` column names a clip (for a clip graph), found in videos/; a clip named but absent: one line."""
    import json

    paths, _ = demo
    dataset = read_dataset(paths[CLIPS])
    assert dataset.layout == "pope" and dataset.synthetic
    assert all(q.video is not None and q.video.is_file() and q.image is None for q in dataset.questions)
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "q.jsonl").write_text(json.dumps({"question_id": 1, "video": "gone.mp4", "text": "Is it?", "label": "yes"}) + "\n")
    with pytest.raises(UsageError) as excinfo:
        read_dataset(folder)
    _one_line(excinfo, "gone.mp4", "images=")
