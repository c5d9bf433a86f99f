"""`infersup inspect` as a user runs it, on the real SmolLM2 file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import infersup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_inspect_a_file_and_a_profile_agree(smollm2: Path) -> None:
    by_file = infersup("inspect", str(smollm2), "--json")
    assert by_file.returncode == 0, by_file.stderr
    facts = json.loads(by_file.stdout)
    assert (facts["arch"], facts["n_layers"], facts["n_heads"], facts["n_kv_heads"]) == (
        "llama",
        30,
        9,
        3,
    )
    assert facts["gqa_ratio"] == 3 and facts["moe_layers"] == 0
    assert facts["kv_cache"]["bytes_per_token"] == 30 * 2 * 3 * 64 * 2  # K+V, f16
    by_profile = infersup("inspect", "smollm2-135m", "--json")
    assert by_profile.returncode == 0, by_profile.stderr
    assert json.loads(by_profile.stdout) == facts


def test_inspect_renders_a_table_and_refuses_bad_input(smollm2: Path, tmp_path: Path) -> None:
    shown = infersup("inspect", str(smollm2), "--cache-type-k", "q8_0", "--cache-type-v", "q8_0")
    assert shown.returncode == 0, shown.stderr
    assert "architecture" in shown.stdout and "llama" in shown.stdout
    assert "GQA 3" in shown.stdout and "(q8_0/q8_0)" in shown.stdout
    bad_type = infersup("inspect", str(smollm2), "--cache-type-k", "q9_9")
    assert bad_type.returncode == 2 and "q9_9" in bad_type.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    broken = infersup("inspect", str(junk))
    assert broken.returncode == 1 and str(junk) in broken.stderr
    unknown = infersup("inspect", "no-such-profile")
    assert unknown.returncode == 2 and "no-such-profile" in unknown.stderr
