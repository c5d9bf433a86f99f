"""The error hierarchy: every user-facing failure is one of these.

Each carries the process exit code the CLI should use and an optional hint
(how to fix it). The CLI prints ``message`` and ``hint`` and exits; it never
shows a traceback for these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_CONFIG = 1
EXIT_USAGE = 2


class InfersupError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(InfersupError):
    """A profile or models.conf is invalid. Messages name the file and key path."""

    exit_code = EXIT_CONFIG


class UsageError(InfersupError):
    """The command line itself is wrong (unknown profile id, bad option value)."""

    exit_code = EXIT_USAGE


class ModelError(InfersupError):
    """The model file a profile needs is missing or unreadable."""

    exit_code = 1


class ServerNotFoundError(InfersupError):
    """No server binary / interpreter could be found."""

    exit_code = 1


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """Closest candidate to ``word``, or None when nothing is close enough."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def suggestion(word: str, candidates: Iterable[str]) -> str:
    """A ``; did you mean 'x'?`` suffix, or an empty string."""
    best = did_you_mean(word, candidates)
    return f"; did you mean '{best}'?" if best else ""
