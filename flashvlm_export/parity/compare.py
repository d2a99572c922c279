"""Parity as ALGORITHM.md states it: identical index sets, near-ties counted and printed, never hidden."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flashvlm_export.selector.reference import NearTie


@dataclass
class ImageResult:
    case: str
    image: int
    status: str  # "match", "near-tie" (a mismatch explained by a near-tie) or "mismatch"
    only_reference: list[int] = field(default_factory=list)
    only_backend: list[int] = field(default_factory=list)
    near_ties: list[NearTie] = field(default_factory=list)

    def describe(self) -> str:
        head = f"{self.case} image {self.image}: {self.status}"
        if self.status == "match":
            return head
        diff = f"; only in reference {self.only_reference[:8]}, only in backend {self.only_backend[:8]}"
        if self.near_ties:
            ties = "; ".join(str(t) for t in self.near_ties[:3])
            more = f" (+{len(self.near_ties) - 3} more)" if len(self.near_ties) > 3 else ""
            return f"{head}{diff}; near-ties: {ties}{more}"
        return f"{head}{diff}; no near-tie explains it"


@dataclass
class ParityReport:
    backend: str
    results: list[ImageResult] = field(default_factory=list)
    overlaps: list[float] | None = None  # reduced precision: |I1 & I2| / K per image, instead of exact parity

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def exact(self) -> int:
        return sum(r.status == "match" for r in self.results)

    @property
    def near_tie_results(self) -> list[ImageResult]:
        return [r for r in self.results if r.status == "near-tie"]

    @property
    def failures(self) -> list[ImageResult]:
        return [r for r in self.results if r.status == "mismatch"]

    def __bool__(self) -> bool:
        return self.overlaps is not None or not self.failures

    def summary(self) -> str:
        if self.overlaps is not None:
            o = np.asarray(self.overlaps)
            return (
                f"{self.backend}: reduced-precision encoder, index-set overlap with the fp32 reference "
                f"mean {o.mean():.4f}, min {o.min():.4f} over {len(o)} images (reported, not an exact-parity check)"
            )
        rate = 100.0 * self.exact / max(self.total, 1)
        ties = self.near_tie_results
        gaps = [t.gap for r in ties for t in r.near_ties]
        gap_text = f" (smallest gap {min(gaps):.1e}, largest {max(gaps):.1e})" if gaps else ""
        return (
            f"{self.backend}: exact match {self.exact}/{self.total} ({rate:.1f}%), "
            f"near-ties {len(ties)}{gap_text}, mismatches {len(self.failures)}"
        )

    def lines(self) -> list[str]:
        if self.overlaps is not None:
            return [self.summary()]
        return [self.summary()] + ["  " + r.describe() for r in self.results if r.status != "match"]


def compare_case(
    case: str,
    reference: np.ndarray,  # (B, K)
    near_ties: list[list[NearTie]],  # per image, from the reference trace
    backend: np.ndarray,  # (B, K)
) -> list[ImageResult]:
    if backend.shape != reference.shape:
        return [ImageResult(case, 0, "mismatch", only_backend=[f"shape {backend.shape} != {reference.shape}"])]
    results = []
    for image, (ref_row, got_row) in enumerate(zip(reference, backend, strict=True)):
        ref_set, got_set = set(ref_row.tolist()), set(got_row.tolist())
        if np.array_equal(ref_row, got_row):
            results.append(ImageResult(case, image, "match"))
            continue
        if ref_set == got_set:  # same tokens, but not ascending or repeated: a wiring bug, never a tie
            results.append(ImageResult(case, image, "mismatch", only_backend=[f"order {got_row[:8].tolist()}"]))
            continue
        status = "near-tie" if near_ties[image] else "mismatch"
        results.append(ImageResult(case, image, status, sorted(ref_set - got_set), sorted(got_set - ref_set), near_ties[image]))
    return results


def overlap_case(reference: np.ndarray, backend: np.ndarray) -> list[float]:
    """|I1 & I2| / K for each image: ALGORITHM.md's measure for reduced-precision encoders."""
    return [len(set(r.tolist()) & set(b.tolist())) / len(r) for r, b in zip(reference, backend, strict=True)]
