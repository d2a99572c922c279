"""Parity as ALGORITHM.md states it: three layers, each exact about what it claims.

1. Decision parity (exact): the reference's decision steps (9, 11, 12) run on the backend's own F
   and G give exactly the backend's indices; and the shipped graph returns what its verification
   build returns.
2. Arithmetic parity (stated bounds): the maximum relative error max|b - r| / max|r| of each
   tensor, stage by stage, each stage's reference computed from the backend's own input to it:
   - s (steps 2-5) and G (step 10) from the backend's selector inputs (for a pipeline its own X, a,
     P(X), which are checked against the reference encoder first);
   - q (step 6) from the backend's own s: softmax(s / 0.01) ** 2.5 amplifies float32 rounding of s
     about 250 times, so comparing q with a q built from other s would measure that, not the step;
   - F (steps 1, 7, 8) from the backend's own q and a: the top-p gate is a decision (which tokens
     pass theta), so F is compared through the gate the reference takes on that q.
   A wrong temperature, power, gate, eta, attenuation, mask or formula shows up at its own stage.
3. Outcome agreement (reported; a gate with min_overlap): exact-match rate and index-set overlap
   with the reference on the original inputs, beside the reference's own sensitivity: its overlap
   with itself when G carries seeded symmetric noise of 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from flashvlm_export.export.interface import (
    BUDGET,
    CLS_ATTENTION,
    DEEPSTACK_EMBEDS,
    DEEPSTACK_FEATURES,
    ENCODER_OUTPUTS,
    FUSED_SCORES,
    GRAM,
    INDICES,
    KEPT,
    POSITIONS,
    PROJECTED_FEATURES,
    SHARPENED_SCORES,
    TEXT_MASK,
    TEXT_RELEVANCE,
    VISION_FEATURES,
    VISUAL_EMBEDS,
)
from flashvlm_export.progress import plural
from flashvlm_export.selector.clip import ClipLayout, clip_decide
from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.reference import decide, extrinsic_scores, fuse, intrinsic_scores, no_text_scores, sharpen
from flashvlm_export.selector.schedule import RangeSchedule, RoundSchedule

SHIPPED_INDICES = "shipped_indices"  # a graph backend's shipped-graph indices, beside its verification build's

# Layer 2 bounds (fp32), max|b - r| / max|r| per tensor, with the reason for each.
ARITHMETIC_BOUNDS = {
    GRAM: 1e-5,  # cosines from one float32 GEMM: measured up to 1.6e-6 (ONNX Runtime against torch)
    # cosines over Dl = 4096 (float32 dot products of that length differ by a few 1e-6 between GEMMs), then a
    # softmax over the text at temperature 0.05 that weighs them; measured up to 4.2e-6 (ONNX Runtime against torch),
    # while a 1% wrong text temperature gives 5.9e-3
    TEXT_RELEVANCE: 3e-5,
    # step 6 alone, from the backend's own s: softmax(s / 0.01) ** 2.5, min-max. One ulp of s / 0.01 (7.6e-6 near 100)
    # is that relative error in p and 2.5x it after the power: a runtime that multiplies by 100 instead of dividing by
    # 0.01 (OpenVINO does) differs by 1.9e-5 on llava15's selector, as torch does computed both ways; 5e-5 admits two
    # ulps, while a 1 % wrong temperature or power gives 3.7e-3
    SHARPENED_SCORES: 5e-5,
    FUSED_SCORES: 1e-5,  # steps 1, 7, 8 alone, from the backend's own q and a: log, exp
    # encoder outputs of a full graph: a 24-layer fp32 CLIP run by two runtimes
    VISION_FEATURES: 1e-4,
    CLS_ATTENTION: 1e-4,
    PROJECTED_FEATURES: 1e-4,
    DEEPSTACK_FEATURES: 1e-4,  # Qwen3-VL's DeepStack rows: intermediate blocks through their own mergers
}
# an int8 / fp8 encoder's own outputs against the fp32 encoder: loose gates that catch a broken quantization (one Q
# node's scale zeroed: X 1.6, a 0.29, P(X) 1.3 on llava15-tiny), not a quality promise. Measured honest, random
# weights: llava15-tiny int8 on 8 demo pictures X 0.24, a 0.042, P(X) 0.21 (llava-next-tiny on 4: a 0.055); full-size
# llava15 int8 on 64: 0.15, 0.0027, 0.17 (a trained tower's regular activations quantize better than random ones)
QUANTIZED_ENCODER_BOUNDS = {VISION_FEATURES: 0.5, CLS_ATTENTION: 0.2, PROJECTED_FEATURES: 0.5, DEEPSTACK_FEATURES: 0.5}


def encoder_bounds(precision: str) -> dict:
    """The bounds of a graph's encoder outputs at its precision: fp32 ARITHMETIC_BOUNDS'; fp16/bf16 reported only
    (None); int8/fp8 QUANTIZED_ENCODER_BOUNDS."""
    from flashvlm_export.export.options import QUANTIZED_PRECISIONS

    if precision == "fp32":
        return {}
    if precision in QUANTIZED_PRECISIONS:
        return dict(QUANTIZED_ENCODER_BOUNDS)
    return {name: None for name in ENCODER_OUTPUTS}


SENSITIVITY_NOISE = 1e-6  # ALGORITHM.md: the float32 GEMM differences between backends are about 1e-6 in G


def max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (0 when both are all zero; inf when got is not finite)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    scale = np.abs(want).max() if want.size else 0.0
    diff = np.abs(got - want).max() if want.size else 0.0
    return 0.0 if diff == 0.0 else float(diff / scale) if scale > 0 else float("inf")


def at_indices(table: np.ndarray, indices: np.ndarray, axis: int = 0, fill=0) -> np.ndarray:
    """`table`'s entries at `indices` along `axis`, `fill` where an index is -1 (a budget-range graph's padding): what
    a backend's gathered outputs must equal, bit for bit."""
    out = np.take(table, np.maximum(indices, 0), axis=axis)
    out[(slice(None),) * axis + (indices < 0,)] = fill
    return out


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / K for two index rows (-1 slots of a budget-range graph are no tokens; K: the longer row's count)."""
    a, b = (set(np.asarray(row)[np.asarray(row) >= 0].tolist()) for row in (a, b))
    return len(a & b) / max(len(a), len(b), 1)


def image_schedule(schedule: RoundSchedule | RangeSchedule, budgets: np.ndarray | None, b: int) -> RoundSchedule:
    """Image b's rounds: a fixed graph's own, or, for a budget-range graph, those of the budget image b was given."""
    if isinstance(schedule, RangeSchedule):
        return schedule.of(int(budgets[b]))
    return schedule


def padded(row: np.ndarray, width: int) -> np.ndarray:
    """An index row padded with -1 to `width` (a budget-range graph's outputs)."""
    return np.concatenate([row, np.full(width - len(row), -1, dtype=row.dtype)])


def aligned_fused_scores(
    sharpened: np.ndarray, cls_attention: np.ndarray, has_text: bool, config: SelectorConfig, clip: ClipLayout | None = None
):
    """The reference's steps 1, 7 and 8 on a backend's own q and a: F through the gate the reference takes on that q.
    A clip's: each group's own under per-group, S_int per group under joint (selector/clip.py)."""
    if clip is not None and clip.per_group:
        return np.concatenate(
            [aligned_fused_scores(sharpened[sl], cls_attention[sl], has_text, config) for sl in clip.group_slices()]
        )
    groups = 1 if clip is None else clip.groups
    s_int = intrinsic_scores(torch.from_numpy(np.asarray(cls_attention, dtype=np.float32)), groups)
    if has_text:
        s_ext = extrinsic_scores(torch.from_numpy(np.asarray(sharpened, dtype=np.float32)), config)
    else:
        s_ext = no_text_scores(s_int.shape[0])
    return fuse(s_int, s_ext, config).numpy()


def decisions(fused: np.ndarray, gram: np.ndarray, schedule: RoundSchedule, clip: ClipLayout | None = None) -> np.ndarray:
    """Steps 9, 11, 12 on given F and G: an image's (decide) or a clip's under its rule (clip_decide)."""
    fused, gram = torch.from_numpy(np.asarray(fused)), torch.from_numpy(np.asarray(gram))
    return (decide(fused, gram, schedule) if clip is None else clip_decide(fused, gram, clip, schedule)).numpy()


def sensitivity_overlaps(
    reference: dict[str, np.ndarray],
    schedule: RoundSchedule | RangeSchedule,
    seed: int,
    budgets: np.ndarray | None = None,
    clip: ClipLayout | None = None,
) -> list[float]:
    """The reference against itself with G + symmetric uniform noise of at most 1e-6, per image (each at its own
    budget for a budget-range graph)."""
    if isinstance(schedule, RoundSchedule) and schedule.keeps_all:
        return [1.0] * len(reference[INDICES])
    rng = np.random.default_rng(seed)
    overlaps = []
    for b, indices in enumerate(reference[INDICES]):
        own = image_schedule(schedule, budgets, b)
        if own.keeps_all:
            overlaps.append(1.0)
            continue
        gram = reference[GRAM][b]
        noise = rng.uniform(-SENSITIVITY_NOISE, SENSITIVITY_NOISE, size=gram.shape)
        if gram.shape[0] == gram.shape[1]:
            noise = (noise + noise.T) / 2
        else:  # a per-group clip's stacked (n, n) blocks: each symmetric
            blocks = noise.reshape(-1, gram.shape[1], gram.shape[1])
            noise = ((blocks + blocks.transpose(0, 2, 1)) / 2).reshape(gram.shape)
        noisy = (gram + noise).astype(np.float32)
        perturbed = decisions(reference[FUSED_SCORES][b], noisy, own, clip)
        overlaps.append(overlap(perturbed, indices))
    return overlaps


@dataclass
class TensorError:
    name: str
    bound: float | None  # None: measured and reported, not a gate (a reduced-precision encoder's outputs)
    max_error: float = 0.0
    where: str = ""  # the case and image of the maximum
    over: list[str] = field(default_factory=list)  # every case and image whose error passed the bound

    @property
    def passed(self) -> bool:
        return self.bound is None or self.max_error <= self.bound

    def update(self, error: float, where: str) -> None:
        if error > self.max_error or not self.where:
            self.max_error, self.where = error, where
        if self.bound is not None and error > self.bound and where not in self.over:
            self.over.append(where)


@dataclass
class BackendReport:
    """One backend's three layers over the whole corpus; truthy when layers 1 and 2 (and any gate) hold."""

    backend: str
    min_overlap: float | None = None  # layer 3 as a gate, when asked for
    decisions_checked: int = 0  # layer 1: images whose decisions were replayed
    decision_failures: list[str] = field(default_factory=list)
    shipped_checked: int = 0  # layer 1: images where the shipped graph's indices were compared with the verification build's
    tensors: dict[str, TensorError] = field(default_factory=dict)  # layer 2
    missing: list[str] = field(default_factory=list)  # verification outputs the backend did not give
    overlaps: list[float] = field(default_factory=list)  # layer 3, per image
    differing: list[str] = field(default_factory=list)  # layer 3: images whose index set differs from the reference's
    sensitivity: list[float] = field(default_factory=list)  # the reference's own overlap under 1e-6 noise in G
    token_positions: np.ndarray | None = None  # (N, 3): each token's (t, h, w), for graphs that return positions
    clip: ClipLayout | None = None  # a clip graph's temporal groups and budget rule: its decisions are clip_decide's
    crops: int = 1  # a photo cut into crops (LLaVA-NeXT): image b of the crop view is crop b % crops of photo b // crops

    # ------------------------------------------------------------------ verdicts
    @property
    def decisions_passed(self) -> bool:
        return not self.missing and not self.decision_failures and self.decisions_checked > 0

    @property
    def arithmetic_passed(self) -> bool:
        return not self.missing and all(t.passed for t in self.tensors.values())

    @property
    def outcome_passed(self) -> bool:
        return self.min_overlap is None or (bool(self.overlaps) and min(self.overlaps) >= self.min_overlap)

    def __bool__(self) -> bool:
        return self.decisions_passed and self.arithmetic_passed and self.outcome_passed

    @property
    def exact(self) -> int:
        return sum(o == 1.0 for o in self.overlaps)

    # ------------------------------------------------------------------ accumulation
    def add_case(
        self,
        case: str,
        reference: dict[str, np.ndarray],  # the reference on the original inputs
        own_reference: dict[str, np.ndarray],  # the reference's selector on the backend's own selector inputs
        outputs: dict[str, np.ndarray],  # the backend's
        basis: dict[str, np.ndarray],  # the backend's own selector inputs (a, text_mask; budget for a range graph)
        schedule: RoundSchedule | RangeSchedule,
        config: SelectorConfig,
        bounds: dict[str, float | None],
        sensitivity: list[float],
    ) -> None:
        indices = outputs[INDICES]
        if indices.shape != reference[INDICES].shape:
            self.decision_failures.append(
                f"{case}: indices of shape {indices.shape}, the reference's are {reference[INDICES].shape}"
            )
            return
        self.sensitivity += sensitivity
        budgets = basis.get(BUDGET)
        for b in range(indices.shape[0]):
            where = self._where(case, b) + ("" if budgets is None else f" (K={int(budgets[b])})")
            own = image_schedule(schedule, budgets, b)
            for name in ENCODER_OUTPUTS:  # at any precision: an fp16 overflow (inf) in X, a or P(X) would select on garbage
                if name in outputs and not np.all(np.isfinite(outputs[name][b])):
                    self.decision_failures.append(f"{where}: {name} holds non-finite values (an overflow in the encoder?)")
            self._decisions(where, b, outputs, own, ranged=budgets is not None)
            self._gathered(where, b, outputs, basis)
            self._positioned(where, b, outputs)
            self._arithmetic(where, b, reference, own_reference, outputs, basis, config, bounds, own)
            o = overlap(indices[b], reference[INDICES][b])
            self.overlaps.append(o)
            if o < 1.0:
                self.differing.append(f"{where}: overlap {o:.3f}")

    def _where(self, case: str, b: int) -> str:
        """Image b of the comparison as the user knows it: a photo's crop is named by its photo and crop."""
        if self.crops > 1:
            return f"{case} image {b // self.crops} crop {b % self.crops}"
        return f"{case} image {b}"

    def _decisions(self, where: str, b: int, outputs: dict, schedule: RoundSchedule, ranged: bool = False) -> None:
        """The backend's own F and G, fed through the reference's decisions, give its indices. A budget-range graph
        (`ranged`, `schedule` the image's own budget's): its first K_b indices are those, -1 follow, and kept = K_b."""
        indices = outputs[INDICES][b]
        if SHIPPED_INDICES in outputs:
            self.shipped_checked += 1
            if not np.array_equal(outputs[SHIPPED_INDICES][b], indices):
                self.decision_failures.append(f"{where}: the shipped graph's indices differ from its verification build's")
        if ranged:
            if KEPT not in outputs:
                self._missing(KEPT)
                return
            k = min(schedule.budget, schedule.n_tokens)
            if int(outputs[KEPT][b]) != k or not np.all(indices[k:] == -1):
                self.decisions_checked += 1
                self.decision_failures.append(
                    f"{where}: kept {int(outputs[KEPT][b])} with {int(np.sum(indices >= 0))} indices before the -1 padding, "
                    f"the image's budget is {k}"
                )
                return
            indices = indices[:k]
        if schedule.keeps_all:
            self.decisions_checked += 1
            if not np.array_equal(indices, np.arange(schedule.n_tokens)):
                self.decision_failures.append(
                    f"{where}: K >= N keeps every token, the backend returned {indices[:8].tolist()}..."
                )
            return
        if self.clip is not None and self.clip.per_group and not self._group_budgets(where, indices, schedule):
            return
        if FUSED_SCORES not in outputs or GRAM not in outputs:
            for name in (FUSED_SCORES, GRAM):
                if name not in outputs:
                    self._missing(name)
            return
        self.decisions_checked += 1
        n = len(outputs[FUSED_SCORES][b])
        outside = indices[(indices < 0) | (indices >= n)]
        if outside.size:  # a crop's indices with another crop's offset taken off land here
            owner = " (tokens of another crop)" if self.crops > 1 else ""
            self.decision_failures.append(f"{where}: indices {outside[:8].tolist()} are outside its tokens 0..{n - 1}{owner}")
            return
        expected = decisions(outputs[FUSED_SCORES][b], outputs[GRAM][b], schedule, self.clip)
        if not np.array_equal(expected, indices):
            only_ref = sorted(set(expected.tolist()) - set(indices.tolist()))
            only_backend = sorted(set(indices.tolist()) - set(expected.tolist()))
            detail = f"only in the decisions {only_ref[:8]}, only in the backend {only_backend[:8]}" if only_ref else "order"
            self.decision_failures.append(f"{where}: its own F and G decide other indices ({detail})")

    def _group_budgets(self, where: str, indices: np.ndarray, schedule: RoundSchedule) -> bool:
        """A per-group clip: every temporal group keeps exactly K / G tokens (the schedule's budget)."""
        kept = np.bincount(np.asarray(indices) // self.clip.group_tokens, minlength=self.clip.groups)
        if np.all(kept == schedule.budget):
            return True
        self.decisions_checked += 1
        self.decision_failures.append(
            f"{where}: the temporal groups kept {kept.tolist()} tokens, the per-group rule gives each {schedule.budget}"
        )
        return False

    def replay(self, where: str, outputs: dict, schedule: RoundSchedule) -> None:
        """Layer 1 on a run alone (a Polygraphy replay): its own F and G decide its indices, and its visual_embeds
        are its own P(X) at them, where it gives those outputs; `missing` names what it does not give."""
        for b in range(outputs[INDICES].shape[0]):
            self._decisions(f"{where} image {b}", b, outputs, schedule)
            self._gathered(f"{where} image {b}", b, outputs, outputs)
            self._positioned(f"{where} image {b}", b, outputs)

    def _missing(self, name: str) -> None:
        """An output the backend does not give, which the check needs: named once in the report."""
        if name not in self.missing:
            self.missing.append(name)

    def _gathered(self, where: str, b: int, outputs: dict, basis: dict) -> None:
        """Step 12's rows: visual_embeds must be the backend's own P(X) at its own indices, bit for bit.

        Exact on every machine: a gather copies floats, it does not compute them.
        """
        if VISUAL_EMBEDS not in outputs or PROJECTED_FEATURES not in basis:
            return
        indices = np.asarray(outputs[INDICES][b])
        rows = at_indices(np.asarray(basis[PROJECTED_FEATURES][b]), indices)  # -1 slots: zero rows
        if not np.array_equal(outputs[VISUAL_EMBEDS][b], rows):
            self.decision_failures.append(f"{where}: visual_embeds are not P(X) at the backend's own indices")
        if DEEPSTACK_FEATURES not in basis:
            return
        if DEEPSTACK_EMBEDS not in outputs:
            self._missing(DEEPSTACK_EMBEDS)
            return
        stacked = at_indices(np.asarray(basis[DEEPSTACK_FEATURES][b]), indices, axis=1)  # (L, N, Dl) at the K indices
        got = np.asarray(outputs[DEEPSTACK_EMBEDS][b])
        if got.shape != stacked.shape or not np.array_equal(got, stacked):
            wrong = [i for i in range(min(len(got), len(stacked))) if not np.array_equal(got[i], stacked[i])]
            self.decision_failures.append(
                f"{where}: deepstack_embeds are not the DeepStack rows at the backend's own indices "
                f"(layers {wrong if got.shape == stacked.shape else got.shape})"
            )

    def _positioned(self, where: str, b: int, outputs: dict) -> None:
        """The kept tokens' positions: each kept token's own (t, h, w), in the order of the indices, exactly (integers).

        A graph that returns positions is checked; one that should (the table is known) and does not, fails.
        """
        if self.token_positions is None:
            return
        if POSITIONS not in outputs:
            self._missing(POSITIONS)
            return
        indices = np.asarray(outputs[INDICES][b])
        want = at_indices(self.token_positions, indices, fill=-1)  # -1 slots: -1 rows
        got = np.asarray(outputs[POSITIONS][b])
        if got.shape != want.shape or not np.array_equal(got, want):
            bad = int(np.argmax(np.any(got != want, axis=-1))) if got.shape == want.shape else 0
            self.decision_failures.append(
                f"{where}: positions are not the kept tokens' own (t, h, w) (first wrong row {bad}: "
                f"{got[bad].tolist() if got.shape == want.shape else got.shape} for token {int(outputs[INDICES][b][bad])})"
            )

    def _arithmetic(self, where, b, reference, own_reference, outputs, basis, config, bounds, schedule) -> None:
        def check(name: str, got: np.ndarray, want: np.ndarray) -> None:
            entry = self.tensors.setdefault(name, TensorError(name, bounds.get(name)))
            entry.update(max_relative_error(got, want), where)

        for name in ENCODER_OUTPUTS:
            if name in outputs and name in reference:
                check(name, outputs[name][b], reference[name][b])
        if schedule.keeps_all:
            return
        missing = [n for n in (TEXT_RELEVANCE, SHARPENED_SCORES, FUSED_SCORES, GRAM) if n not in outputs]
        for name in missing:
            self._missing(name)
        if missing:
            return
        has_text = bool(np.asarray(basis[TEXT_MASK][b]).any())
        if has_text:  # with no text s and q are not used (S_ext = 1e-6): nothing to compare
            check(TEXT_RELEVANCE, outputs[TEXT_RELEVANCE][b], own_reference[TEXT_RELEVANCE][b])
            relevance = torch.from_numpy(np.asarray(outputs[TEXT_RELEVANCE][b], dtype=np.float32))
            if self.clip is not None and self.clip.per_group:  # step 6's softmax is over each group's patches
                own_q = np.concatenate([sharpen(relevance[sl], config).numpy() for sl in self.clip.group_slices()])
            else:
                own_q = sharpen(relevance, config).numpy()
            check(SHARPENED_SCORES, outputs[SHARPENED_SCORES][b], own_q)
        aligned = aligned_fused_scores(outputs[SHARPENED_SCORES][b], basis[CLS_ATTENTION][b], has_text, config, self.clip)
        check(FUSED_SCORES, outputs[FUSED_SCORES][b], aligned)
        check(GRAM, outputs[GRAM][b], own_reference[GRAM][b])

    # ------------------------------------------------------------------ report
    def lines(self) -> list[str]:
        n = len(self.overlaps)
        if self.missing:
            layer1 = f"layer 1 decisions: NOT CHECKED, the backend gives no {', '.join(self.missing)} (no verification build)"
        else:
            shipped = f"; shipped graph = verification build on {self.shipped_checked}/{n}" if self.shipped_checked else ""
            if self.token_positions is not None:
                shipped += "; positions = the kept tokens' own (t, h, w)"
            verdict = "held" if self.decisions_passed else f"FAILED on {len(self.decision_failures)}"
            layer1 = f"layer 1 decisions: {verdict} ({self.decisions_checked}/{n} images replayed exactly{shipped})"
        parts = []
        for t in self.tensors.values():
            bound = "reported" if t.bound is None else f"<= {t.bound:.0e}"
            mark = "" if t.passed else " FAILED"
            parts.append(f"{t.name} {t.max_error:.1e} ({bound}){mark}")
        layer2 = (
            "layer 2 arithmetic: " + ("held" if self.arithmetic_passed else "FAILED") + ", max relative error " + "; ".join(parts)
        )
        lines = [f"{self.backend}:", "  " + layer1]
        lines += [f"    {f}" for f in self.decision_failures[:10]]
        if len(self.decision_failures) > 10:
            lines.append(f"    (+{len(self.decision_failures) - 10} more)")
        lines.append("  " + layer2)
        for t in self.tensors.values():
            if not t.passed:
                over = f"; over it at {', '.join(t.over[:6])}" + (f" (+{len(t.over) - 6} more)" if len(t.over) > 6 else "")
                lines.append(f"    {t.name}: {t.max_error:.2e} > {t.bound:.0e} at {t.where}{over}")
        if n:
            o, s = np.asarray(self.overlaps), np.asarray(self.sensitivity or [1.0])
            gate = (
                "reported, not a gate"
                if self.min_overlap is None
                else f"gate min-overlap {self.min_overlap:.3f} {'held' if self.outcome_passed else 'FAILED'}"
            )
            lines.append(
                f"  layer 3 outcome ({gate}): identical index sets {self.exact}/{n} ({100.0 * self.exact / n:.0f}%; "
                f"not promised, docs/PARITY.md), overlap mean {o.mean():.3f} min {o.min():.3f} beside the reference's own "
                f"sensitivity (G +- 1e-6) mean {s.mean():.3f} min {s.min():.3f}"
            )
            lines += [f"    {d}" for d in self.differing[:6]]
            if len(self.differing) > 6:
                lines.append(f"    (+{plural(len(self.differing) - 6, 'more image')} differ)")
        return lines

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "passed": bool(self),
            "layer1_decisions": {
                "passed": self.decisions_passed,
                "images_replayed": self.decisions_checked,
                "shipped_equals_verification_build": self.shipped_checked,
                "missing_outputs": self.missing,
                "failures": self.decision_failures,
            },
            "layer2_arithmetic": {
                "passed": self.arithmetic_passed,
                "tensors": {
                    t.name: {
                        "max_relative_error": t.max_error,
                        "bound": t.bound,
                        "passed": t.passed,
                        "at": t.where,
                        "over_bound_at": t.over,
                    }
                    for t in self.tensors.values()
                },
            },
            "layer3_outcome": {
                "exact": self.exact,
                "images": len(self.overlaps),
                "overlap_mean": float(np.mean(self.overlaps)) if self.overlaps else None,
                "overlap_min": float(np.min(self.overlaps)) if self.overlaps else None,
                "per_image": self.overlaps,
                "differing": self.differing,
                "reference_sensitivity_mean": float(np.mean(self.sensitivity)) if self.sensitivity else None,
                "reference_sensitivity_min": float(np.min(self.sensitivity)) if self.sensitivity else None,
                "min_overlap_gate": self.min_overlap,
                "gate_passed": self.outcome_passed,
            },
        }


def layer_summary(reports: list[BackendReport]) -> list[str]:
    """One line per layer over every backend: what held."""

    def names(pred) -> str:
        failed = [r.backend for r in reports if not pred(r)]
        return "held for every backend" if not failed else f"FAILED for {', '.join(failed)}"

    lines = [f"Layer 1 (decision parity, exact): {names(lambda r: r.decisions_passed)}"]
    lines.append(f"Layer 2 (arithmetic parity, stated bounds): {names(lambda r: r.arithmetic_passed)}")
    gated = any(r.min_overlap is not None for r in reports)
    lines.append(
        "Layer 3 (outcome agreement): "
        + (
            names(lambda r: r.outcome_passed) + " the --min-overlap gate"
            if gated
            else "reported above, not a gate (--min-overlap makes it one)"
        )
    )
    return lines
