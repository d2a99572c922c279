"""An eval's results as they come: one JSON line per answered question in OUT/results.jsonl, so a run that is stopped
(Ctrl-C, a kill, a power cut) loses at most the question it was on, and `--resume` goes on from there.

The first line is the run's header: this tool's stamp and the run's identity (artifact, dataset, budgets, LLM and its
settings). --resume continues only a run of the same identity (one line names what differs); a new run over earlier
results needs --force, which replaces only a results file this tool wrote. Each question's line is written whole,
flushed and fsync'ed before the next question starts; a line cut short by a kill is dropped on resume (its question
is answered again).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from flashvlm_export.artifacts.ownership import PRODUCER, check_replaceable
from flashvlm_export.errors import UsageError, arg, switch

RESULTS = "results.jsonl"
TABLE_MD = "table.md"
TABLE_JSON = "table.json"
PLOT = "accuracy.png"
OUTPUTS = (RESULTS, TABLE_MD, TABLE_JSON, PLOT)
HEADER = "header"


@dataclass
class Store:
    """OUT/results.jsonl: the header's identity and the records of the questions already answered. A new run writes
    nothing until its first question is answered: then the header and that line replace, in one rename, whatever an
    earlier run left (--force), and that run's table, JSON and plot are removed (they described other results)."""

    folder: Path
    identity: dict
    records: dict[str, dict] = field(default_factory=dict)  # qid -> its line
    started: bool = False  # results.jsonl holds this run's header

    @property
    def path(self) -> Path:
        return self.folder / RESULTS

    def append(self, record: dict) -> None:
        """One question's line, whole, on disk before this returns."""
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        if not self.started:
            self._start(line)
        else:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        self.records[record["qid"]] = record

    def _start(self, first_line: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = self.folder / f".{RESULTS}.tmp"
        header = {"producer": PRODUCER, "kind": HEADER, "identity": self.identity}
        with open(temp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, sort_keys=True) + "\n" + first_line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.path)
        for name in OUTPUTS[1:]:  # the earlier run's report (check_outputs found them this tool's)
            (self.folder / name).unlink(missing_ok=True)
        self.started = True


def _read_lines(path: Path) -> tuple[dict | None, list[dict], int]:
    """(header, records, bytes of the whole lines): a last line cut short by a kill is not counted."""
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1
    header, records = None, []
    for number, raw in enumerate(data[:whole].splitlines(), 1):
        try:
            value = json.loads(raw)
        except ValueError:
            raise UsageError(
                f"{path} line {number} is not JSON; it was not written by flashvlm-export eval: pass another {arg('out')}"
            ) from None
        if number == 1:
            header = value
        else:
            records.append(value)
    return header, records, whole


def _own_header(header) -> bool:
    return isinstance(header, dict) and header.get("producer") == PRODUCER and header.get("kind") == HEADER


def _difference(earlier: dict, now: dict) -> str | None:
    for key in sorted(set(earlier) | set(now)):
        if earlier.get(key) != now.get(key):
            return f"{key} was {earlier.get(key)!r}, now {now.get(key)!r}"
    return None


def check_outputs(folder: Path, resume: bool, force: bool) -> None:
    """Before any work: OUT is a folder (or can be one); its results are continued only with --resume, replaced only
    with --force and only when this tool wrote them; the table, JSON and plot likewise (ownership.py)."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{arg('out', str(folder))} is a file; pass a folder for the results")
    if resume and force:
        raise UsageError(f"{switch('resume')} continues the results in {folder}, {switch('force')} replaces them; pass one")
    results = folder / RESULTS
    if results.exists():
        header, records, _ = _read_lines(results)
        if not _own_header(header):
            raise UsageError(f"{results} was not written by flashvlm-export eval; move it away or pass another {arg('out')}")
        if not resume and not force:
            raise UsageError(
                f"{folder} holds the results of an earlier eval ({len(records)} questions answered); pass {switch('resume')} "
                f"to go on with it, {switch('force')} to start over, or another {arg('out')}"
            )
    elif not force and any((folder / name).exists() for name in OUTPUTS[1:]):  # a report without its results.jsonl
        raise UsageError(
            f"{folder} holds an earlier eval's report; pass {switch('force')} to replace it, or another {arg('out')}"
        )
    for name in OUTPUTS[1:]:
        check_replaceable(folder / name, f"move it away or pass another {arg('out')}")


def open_store(folder: Path, identity: dict, resume: bool, log=print) -> Store:
    """The results to write to: the earlier run's (resume: same identity, its records read, a cut line dropped) or a
    new file, written at the first answer. check_outputs has run."""
    store = Store(folder, identity)
    path = store.path
    if resume and path.exists():
        header, records, whole = _read_lines(path)
        differs = _difference(header.get("identity", {}), identity)
        if differs:
            raise UsageError(
                f"{switch('resume')}: the results in {folder} are of another run ({differs}); pass the same settings, "
                f"or {switch('force')} to start over"
            )
        if whole < path.stat().st_size:
            log(f"Eval: dropped the last line of {path}, cut short when the earlier run stopped (its question is answered again)")
            with open(path, "r+b") as f:
                f.truncate(whole)
        store.records, store.started = {r["qid"]: r for r in records}, True
        log(f"Eval: resuming {path}: {len(records)} questions answered earlier, kept")
        return store
    if resume:
        log(f"Eval: {switch('resume')}: no earlier results in {folder}; starting")
    return store  # written from its first answer on (Store._start)
