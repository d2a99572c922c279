"""`eval --budgets 32,64,128,full`: the budgets one pass answers at, each checked against what the artifact serves.

"full" is K = N: every visual token, the model's own input. A split answers it from its encoder's P(X) (the rows the
selectors read); a single graph returns only its kept rows, so "full" comes from the PyTorch reference encoder.
"""

from __future__ import annotations

from flashvlm_export.errors import UsageError, arg

FULL = "full"


def parse_budgets(text: str) -> list[str]:
    """ "64,32,full" -> ["32", "64", "full"]: whole numbers >= 1 and "full", each once; ascending, full last (the
    table's order; a resumed run's budgets compare in whatever order they were typed)."""
    items = [item.strip().lower() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise UsageError(f"{arg('budgets', text)} has an empty item; pass budgets separated by commas, e.g. 32,64,128,full")
    for item in items:
        if item != FULL and not (item.isascii() and item.isdigit() and int(item) >= 1):
            raise UsageError(
                f"{arg('budgets', text)}: {item!r} is neither a whole number K >= 1 nor {FULL!r}; e.g. 32,64,128,full"
            )
    canonical = [item if item == FULL else str(int(item)) for item in items]
    repeated = sorted({b for b in canonical if canonical.count(b) > 1})
    if repeated:
        raise UsageError(f"{arg('budgets', text)} names {', '.join(repeated)} twice; name each budget once")
    return sorted(canonical, key=lambda b: (b == FULL, 0 if b == FULL else int(b)))


def default_budgets(serves: list[int] | tuple[int, int], ranged: bool) -> list[str]:
    """Without --budgets: every budget a split (or a fixed graph) serves, a range's ends, and full."""
    ks = [serves[0], serves[1]] if ranged else sorted(serves)
    return [str(k) for k in sorted(set(ks))] + [FULL]


def check_servable(budgets: list[str], serves: list[int] | tuple[int, int], ranged: bool, n_tokens: int, source: str) -> None:
    """Every K of `budgets` is one the artifact can select: one of a split's budgets, in a budget-range artifact's
    KMIN..KMAX, or a fixed graph's own K; one line naming the first that is not, and what is served."""
    served = f"any K in {serves[0]}..{serves[1]}" if ranged else "K = " + ", ".join(map(str, sorted(serves)))
    for item in budgets:
        if item == FULL:
            continue
        k = int(item)
        if k > n_tokens:
            raise UsageError(
                f"{arg('budgets')}: K = {k} is more than the N = {n_tokens} tokens of {source}; ask for {FULL} instead"
            )
        if (ranged and not serves[0] <= k <= serves[1]) or (not ranged and k not in serves):
            raise UsageError(
                f"{arg('budgets')}: {source} cannot select K = {k}; it serves {served} (and {FULL}): drop {k}, or export it "
                "(flashvlm-export --budget K,... for a split, --budget-range KMIN..KMAX for any K)"
            )
