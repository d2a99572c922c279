"""A benchmark as `eval` reads it: its questions, each with its picture and its label, whatever file it came from.

evaluation/layouts.py turns a benchmark's own files (parquet, JSONL, JSON, TSV, Arrow; a local Hugging Face cache)
into a Dataset; evaluation/scoring.py holds each benchmark's rule (its prompt, how an answer is read, its score).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The layouts eval reads, by the benchmark whose files and rule each follows (evaluation/scoring.py cites each rule):
MMSTAR = "mmstar"  # multiple choice, options inline in the question ("Options: A: ..., B: ..."), answer a letter
MMBENCH = "mmbench"  # multiple choice, options in columns A, B, C, D (...), an optional hint, CircularEval groups
POPE = "pope"  # yes/no object hallucination
GQA = "gqa"  # short answer, one label: exact match after GQA's normalisation
TEXTVQA = "textvqa"  # short answer, ten human answers: VQA accuracy
LAYOUTS = (MMSTAR, MMBENCH, POPE, GQA, TEXTVQA)
MULTIPLE_CHOICE = (MMSTAR, MMBENCH)


@dataclass(frozen=True)
class Question:
    """One question of a benchmark, with what its rule needs to prompt the model and score the answer."""

    qid: str  # unique in the dataset: the benchmark's own id (index, question_id, questionId) where it has one
    question: str  # the question as the benchmark states it (MMStar: with its inline options)
    answer: str | tuple[str, ...] | None  # a letter (multiple choice), "yes"/"no" (POPE), the label (GQA), ten answers
    # (TextVQA); None: no label (an unlabelled split: agreement with K = N and costs only)
    image: Path | bytes | None  # a picture file, or the encoded picture (PNG, JPEG, ...) the dataset embeds; None: a clip
    options: tuple[tuple[str, str], ...] = ()  # MMBench: (("A", text), ("B", text), ...); MMStar's are in `question`
    hint: str | None = None  # MMBench's hint, put before the question
    group: str | None = None  # MMBench CircularEval: the id shared by one question's rotated copies
    rotations: int = 1  # how many copies its group has in the whole file (a group is scored once all are answered)
    category: str | None = None
    video: Path | None = None  # a clip file (the row's `video` column): for a clip graph, in place of a picture


@dataclass
class Dataset:
    layout: str  # one of LAYOUTS
    name: str  # how reports name it: "MMStar (Lin-Chen/MMStar, val)", the folder's name, ...
    files: tuple[Path, ...]  # the files the questions were read from
    questions: list[Question] = field(default_factory=list)
    synthetic: bool = False  # written by `eval --demo-data`: its accuracy says nothing about a model
