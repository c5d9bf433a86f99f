"""The profile data model: what a model deployment declares.

Profiles are frozen values. Server options are kept in declaration order as
``Setting`` records carrying the location they came from, so any later error
(an unknown flag, a bad choice) can name the file and key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, TypeAlias

Scalar: TypeAlias = str | int | float | bool


@dataclass(frozen=True)
class Pair:
    """A ``key=value`` list item (``{pattern: buffer}`` in YAML)."""

    key: str
    value: str


# A setting value: a scalar, a list of scalars, or a list of (key, value)
# pairs (``override_tensor: [{pattern: CPU}]``), all made immutable.
Value: TypeAlias = "Scalar | Pair | tuple[Value, ...] | None"

LLAMA_CPP: Final = "llama.cpp"
SGLANG: Final = "sglang"
BACKENDS: Final = (LLAMA_CPP, SGLANG)
DEFAULT_PORTS: Final = {LLAMA_CPP: 8080, SGLANG: 30000}
DEFAULT_HOST: Final = "127.0.0.1"

# Field notes B: llama-server with a non-streaming request in flight logged
# "cleaning up" and never exited on SIGTERM; the grace period bounds that.
DEFAULT_STOP_GRACE_S: Final = 10.0


@dataclass(frozen=True)
class Setting:
    """One server option as the profile wrote it."""

    key: str
    value: Value
    where: str


@dataclass(frozen=True)
class SuperviseSettings:
    stop_grace_s: float = DEFAULT_STOP_GRACE_S


@dataclass(frozen=True)
class Profile:
    id: str
    backend: str
    model: str
    source: str
    where: str
    description: str = ""
    name: str = ""
    host: str = DEFAULT_HOST
    port: int | None = None
    server: tuple[Setting, ...] = ()
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    supervise: SuperviseSettings = field(default_factory=SuperviseSettings)

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.backend]
