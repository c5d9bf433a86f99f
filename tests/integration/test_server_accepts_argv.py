"""The real llama-server accepts every shipped profile's command line.

Compile checks flags against the parsed --help text; this asks the binary
itself. Each shipped llama.cpp profile is compiled for the installed server,
its model swapped for a path that does not exist, and run: a command line
the server accepts gets as far as loading the model and fails there; one it
rejects fails with "invalid argument" or its usage text.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infersup.compile import compile_profile
from infersup.profiles.catalog import discover
from infersup.servers import find_program, flag_table
from tests.conftest import REPO
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

CATALOG = discover(cwd=REPO, env={})
LLAMA_PROFILES = [pid for pid in CATALOG.ids() if CATALOG.load(pid).backend == "llama.cpp"]


def run_server(argv: list[str]) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, errors="replace", timeout=60, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("profile_id", LLAMA_PROFILES)
def test_server_accepts_the_compiled_command_line(
    profile_id: str, server_bin: str, tmp_path: Path
) -> None:
    program = find_program("llama.cpp", server_bin=server_bin)
    missing_model = str(tmp_path / "absent.gguf")
    plan = compile_profile(
        CATALOG.load(profile_id),
        table=flag_table(program),
        program=program.prefix,
        model=missing_model,
    )
    argv = list(plan.argv)
    argv[argv.index("--port") + 1] = str(free_port())
    output = run_server(argv)
    assert "invalid argument" not in output and "to show complete usage" not in output
    assert f"failed to load model, '{missing_model}'" in output


@pytest.mark.timeout(60)
def test_the_check_can_fail(server_bin: str, tmp_path: Path) -> None:
    output = run_server(
        [server_bin, "--model", str(tmp_path / "a.gguf"), "--port", str(free_port()),
         "--flash-attn", "maybe"]
    )  # fmt: skip
    assert "to show complete usage" in output and "failed to load model" not in output
