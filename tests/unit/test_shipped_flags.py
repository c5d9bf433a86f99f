"""Every flag a shipped profile emits exists in the pinned server's flag table.

This re-parses the compiled argv the way the server would (flag, then its
value when it takes one) instead of trusting compile's own bookkeeping, and
checks values against the table's choices.
"""

from __future__ import annotations

import pytest

from infersup.backends.flags import FlagTable
from infersup.profiles.catalog import discover
from tests.conftest import REPO, llama_table, sglang_table
from tests.unit.test_golden import compiled


def check_argv(argv: list[str], table: FlagTable) -> list[str]:
    """Problems found in ``argv`` (program prefix already removed)."""
    problems = []
    i = 0
    while i < len(argv):
        word = argv[i]
        spec = table.get(word)
        if spec is None:
            problems.append(f"unknown flag {word}")
            i += 1
            continue
        if spec.removed:
            problems.append(f"{word} was removed")
        if not spec.takes_value or word in spec.negations:
            i += 1
            continue
        if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and spec.nargs != "?"):
            problems.append(f"{word} needs a value")
            i += 1
            continue
        value = argv[i + 1]
        if spec.choices is not None and value not in spec.choices:
            problems.append(f"{word} {value}: not one of {spec.choices}")
        i += 2
    return problems


@pytest.mark.parametrize("profile_id", discover(cwd=REPO, env={}).ids())
def test_emitted_flags_exist_with_valid_values(profile_id: str) -> None:
    argv = compiled(profile_id)
    if argv[:3] == ["python", "-m", "sglang.launch_server"]:
        table, args = sglang_table(), argv[3:]
    else:
        table, args = llama_table(), argv[1:]
    assert check_argv(args, table) == []


def test_checker_catches_unknown_flags_and_bad_choices() -> None:
    problems = check_argv(["--flash-attn", "maybe", "--ctx-sise", "1", "--fit"], llama_table())
    assert problems == [
        "--flash-attn maybe: not one of ('on', 'off', 'auto')",
        "unknown flag --ctx-sise",
        "unknown flag 1",
        "--fit needs a value",
    ]
