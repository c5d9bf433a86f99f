"""Reading profile files and checking text values, shared by both loaders."""

from __future__ import annotations

from pathlib import Path

from infersup.errors import ConfigError


def read_text(path: Path, shown: str) -> str:
    """The file as text, or a ConfigError naming the file and what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{shown}: line {line}: not UTF-8 text (byte {data[exc.start]:#04x})",
            hint="save the file as UTF-8",
        ) from None


def check_text(value: str, where: str) -> str:
    """Reject what no command line or environment can carry."""
    if "\0" in value:
        raise ConfigError(f"{where}: contains a NUL character, which cannot be passed to a process")
    return value
