"""In CI (CI=true), a skipped test fails the run unless its reason says no machine of this project can run it.

Tests of shipped features (llama.cpp answers, the live Triton server, the video decoder, ...) must run in CI: a
failed install that turns them into skips would otherwise leave a green run with no proof. Only what no machine
here can have (TensorRT's libraries, an NVIDIA GPU, TensorRT's headers, which are fetched and never committed;
docs/VERIFICATION.md) may skip there, and such a reason is built with `unavailable_here`. On a developer's
machine every skip stays a skip, with its reason (`pytest -rs` lists them).
"""

from __future__ import annotations

import os

import pytest

UNAVAILABLE_HERE = "[not on this project's machines]"


def unavailable_here(reason: str) -> str:
    """A skip reason CI accepts: `reason` names what no machine of this project has."""
    return f"{reason} {UNAVAILABLE_HERE}"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if UNAVAILABLE_HERE not in reason:
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true and this test skipped: {reason}\n"
            "A skip in CI hides a proof of a shipped feature: install what it needs in .ci/run, or, where no machine "
            "of this project can have it, build the reason with tests/ci_skips.unavailable_here."
        )
