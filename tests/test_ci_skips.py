"""The CI rule for skips (tests/ci_skips.py), run on planted test files in a pytest of their own (pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

PLANTED = """
import pytest
from ci_skips import unavailable_here

def test_proof_of_a_shipped_feature():
    pytest.skip("llama-cpp-python is not importable")

@pytest.fixture
def server():
    pytest.skip("live Triton test: no tritonserver")

def test_skips_in_its_fixture(server):
    pass

@pytest.mark.skipif(True, reason=unavailable_here("needs TensorRT and an NVIDIA GPU"))
def test_needs_what_no_machine_here_has():
    pass

@pytest.mark.xfail(reason="an expected failure is not a skip")
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


@pytest.fixture
def planted(pytester):
    pytester.makeconftest("from ci_skips import pytest_runtest_makereport  # noqa: F401")
    pytester.makepyfile(test_planted=PLANTED)
    return pytester


def test_in_ci_a_skip_of_a_shipped_feature_fails_the_run(planted, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = planted.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*CI=true and this test skipped: llama-cpp-python is not importable*"])
    result.stdout.fnmatch_lines(["*CI=true and this test skipped: live Triton test: no tritonserver*"])


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_off_ci_every_skip_stays_a_skip_with_its_reason(planted, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    result = planted.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*llama-cpp-python is not importable*"])
