"""Polygraphy's PASSED/FAILED on a replay of parity's records, judged as the project judges it.

    polygraphy run graph.onnx --onnxrt --load-inputs graphs/parity/G_inputs.json \\
        --load-outputs graphs/parity/G_reference_outputs.json \\
        --compare-func-script "$(python -m flashvlm_export.parity.polygraphy_compare)"

(`python -m flashvlm_export.parity.polygraphy_compare` prints this file's path.)

Polygraphy's contract (polygraphy 0.53, polygraphy/tools/args/comparator/comparator.py, `--compare-func-script`):
the script defines `compare_outputs` (the default name; `script.py:name` picks another), a callable
`(IterationResult, IterationResult) -> OrderedDict[str, bool]`, which overrides every other comparison option.
Comparator.compare_accuracy calls it once per iteration with the live run's result and the loaded run's (each
run against the next, polygraphy/comparator/comparator.py), and an iteration passes when every value is true;
`polygraphy run` prints PASSED only when every iteration passes.

The verdict, per record (one parity case, B images):
- where the run gives the verification outputs (F and G, and for a pipeline P(X): a verification build), layer 1
  exactly: its own F and G decide exactly its indices, and its visual_embeds are its own P(X) rows at them
  (BackendReport.replay, the same checks parity runs);
- otherwise (a shipped graph or engine, indices only) the outcome beside the reference's own sensitivity: every
  image's index set is strictly ascending and overlaps the reference's by at least the floor the records carry
  (replay_floor): parity's --min-overlap when it was given, else halfway between what a selection unrelated to the
  reference's overlaps (K/N) and the reference's own worst overlap with itself under 1e-6 noise in G. Not the
  reference's worst itself: that is one noise draw per image, and honest backends land on both sides of it (on
  llava15-tiny K=64, ONNX Runtime's lowest image 0.516 against the reference's own lowest 0.531; 16 draws an image
  reach 0.516). The floor catches a wrong or corrupted selection, not a subtle arithmetic fault: that is layer 1's
  and 2's work, which needs the verification outputs.
In both, a graph that returns positions (records with TOKEN_POSITIONS) must return each kept token's own (t, h, w).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from flashvlm_export.export.interface import INDICES, POSITIONS
from flashvlm_export.parity.compare import BackendReport, overlap
from flashvlm_export.selector.schedule import RoundSchedule

OVERLAP_FLOOR = "overlap_floor"  # () float64: the outcome floor of this corpus
REFERENCE_SENSITIVITY = "reference_sensitivity"  # (B,) float64: the reference's own overlap under 1e-6 noise in G
ROUND_SCHEDULE = "round_schedule"  # int64 vector, schedule_record(): what layer 1 replays the decisions with
TOKEN_POSITIONS = "token_positions"  # (N, 3) int64, graphs that return positions only: each token's (t, h, w)
RECORD_KEYS = (OVERLAP_FLOOR, REFERENCE_SENSITIVITY, ROUND_SCHEDULE, TOKEN_POSITIONS)


def schedule_record(schedule: RoundSchedule) -> np.ndarray:
    head = [schedule.n_tokens, schedule.budget, schedule.k_imp, schedule.k_div, schedule.step, schedule.n_rounds]
    return np.asarray(head + list(schedule.sizes) + list(schedule.removals), dtype=np.int64)


def schedule_from_record(record) -> RoundSchedule:
    n_tokens, budget, k_imp, k_div, step, rounds, *rest = (int(x) for x in np.asarray(record))
    return RoundSchedule(n_tokens, budget, k_imp, k_div, step, tuple(rest[:rounds]), tuple(rest[rounds : 2 * rounds]))


def replay_floor(sensitivity: list[float], chance: float, min_overlap: float | None = None) -> float:
    """The outcome floor a replay is held to: parity's --min-overlap when given, else halfway from `chance` (K/N, what
    an unrelated selection overlaps) to the reference's own worst overlap under 1e-6 noise in G."""
    if min_overlap is not None:
        return float(min_overlap)
    worst = min(sensitivity, default=1.0)
    return float(min(chance, 1.0) + (worst - min(chance, 1.0)) / 2)


def judge(outputs: dict, records: dict, where: str = "replay") -> tuple[bool, list[str]]:
    """The verdict on one replayed record, and the lines that say why."""
    indices, reference = np.asarray(outputs[INDICES]), np.asarray(records[INDICES])
    if indices.shape != reference.shape:
        return False, [f"{where}: indices of shape {indices.shape}, the records' are {reference.shape}"]
    table = records.get(TOKEN_POSITIONS)
    report = BackendReport(where, token_positions=None if table is None else np.asarray(table))
    report.replay(
        where, {name: np.asarray(value) for name, value in outputs.items()}, schedule_from_record(records[ROUND_SCHEDULE])
    )
    unplaced = []  # a graph whose model places tokens by (t, h, w) must return them, whatever else the run holds
    if POSITIONS in report.missing:
        report.missing.remove(POSITIONS)
        unplaced = [f"{where}: the run returns no {POSITIONS}, which the records' model needs"]
    if not report.missing:
        lines = [f"{where}: layer 1, its own F and G decide exactly its indices on {report.decisions_checked} image(s)"]
        failures = report.decision_failures + unplaced
        return not failures, (failures or lines)
    floor = float(np.asarray(records[OVERLAP_FLOOR]))
    overlaps = [overlap(i, r) for i, r in zip(indices, reference, strict=True)]
    ascending = all(np.all(np.diff(row) > 0) for row in indices)
    misplaced = report.decision_failures + unplaced  # without F and G only the positions are checked: their failures
    passed = ascending and min(overlaps) >= floor and not misplaced
    sensitivity = ", ".join(f"{s:.3f}" for s in np.asarray(records[REFERENCE_SENSITIVITY]).ravel())
    lines = [
        f"{where}: overlap with the reference {', '.join(f'{o:.3f}' for o in overlaps)} "
        f"{'>=' if min(overlaps) >= floor else '<'} floor {floor:.3f} (the reference's own under 1e-6 noise in G: {sensitivity})"
    ]
    if not ascending:
        lines.append(f"{where}: indices are not strictly ascending")
    return passed, lines + misplaced


def compare_outputs(run0, run1) -> OrderedDict:
    """Polygraphy's entry point: one iteration of the live run against the loaded records (either order)."""
    from polygraphy.logger import G_LOGGER

    records, outputs = (run1, run0) if OVERLAP_FLOOR in run1 else (run0, run1)
    if OVERLAP_FLOOR not in records:
        G_LOGGER.error(
            f"flashvlm: neither run holds {OVERLAP_FLOOR!r}: polygraphy's --load-outputs must be a *_reference_outputs.json "
            "written by this flashvlm-export's parity (re-run parity to rewrite older records)"
        )
        return OrderedDict([(INDICES, False)])
    passed, lines = judge(dict(outputs.items()), dict(records.items()), where=f"flashvlm {outputs.runner_name}")
    for line in lines:
        (G_LOGGER.info if passed else G_LOGGER.error)(line)
    return OrderedDict([(INDICES, passed)])


if __name__ == "__main__":
    print(__file__)
