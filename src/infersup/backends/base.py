"""What every backend module provides: the small surface compile and run need.

A backend knows how its server is started (program prefix, model flag),
its defaults (port), and where its readiness endpoint is. Flag knowledge is
not here: it is data, in a ``FlagTable``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendInfo:
    name: str
    default_port: int
    model_flag: str
    health_path: str
    # Hints for profile keys that the server no longer has under that name:
    # (old key prefix or infix, new one, since which version).
    renames: tuple[tuple[str, str, str], ...] = ()

    def rename_hint(self, key: str) -> str | None:
        for old, new, since in self.renames:
            if old in f"_{key}_":
                fixed = f"_{key}_".replace(old, new).strip("_")
                return f"renamed to `{fixed}` in {since}"
        return None
