"""`infersup validate` as a user (or CI) runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import infersup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
BAD = REPO / "tests" / "data" / "bad"


def test_the_shipped_profiles_validate_clean_even_strict() -> None:
    result = infersup("validate", "profiles/", "models.conf", "--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors, 0 warnings" in result.stderr


def test_json_names_rule_severity_and_key_path() -> None:
    result = infersup("validate", str(BAD / "ubatch-equals-batch.yaml"), "--json")
    assert result.returncode == 0  # a warning alone does not fail ...
    found = json.loads(result.stdout)
    hits = [f for f in found if f["rule"] == "ubatch-equals-batch"]
    assert len(hits) == 1 and hits[0]["severity"] == "warning"
    assert hits[0]["key"] == "server.ubatch_size" and hits[0]["fix"] and hits[0]["ref"]
    strict = infersup("validate", str(BAD / "ubatch-equals-batch.yaml"), "--strict")
    assert strict.returncode == 1  # ... unless --strict


def test_errors_fail_and_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    unknown = infersup("validate", str(BAD / "unknown-flag.yaml"))
    assert unknown.returncode == 1
    assert "flag" in unknown.stdout and "did you mean" in unknown.stdout
    missing = infersup("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
