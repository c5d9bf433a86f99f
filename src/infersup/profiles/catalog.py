"""Find profiles: which ids exist and where each is defined.

Sources, in order: ``--profiles PATH`` (repeatable), else ``INFERSUP_PROFILES``
(an os.pathsep list), else ``./profiles`` and ``./models.conf``. A directory
contributes its ``*.yaml``/``*.yml`` files (id = file stem) and any
``models.conf`` in it; a file is read as YAML or as models.conf by suffix.

Ids are indexed without parsing YAML bodies (and models.conf sections are
built one at a time), so one broken profile does not stop ``show`` or ``run``
of another; a models.conf that cannot be parsed at all is set aside and
reported. An id defined twice is always an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infersup.errors import ConfigError, UsageError, suggestion
from infersup.profiles.models_conf import load_models_conf, section_ids
from infersup.profiles.schema import Profile
from infersup.profiles.yaml_profile import load_yaml_profile

ENV_PROFILES = "INFERSUP_PROFILES"
DEFAULT_SOURCES = ("profiles", "models.conf")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Entry:
    id: str
    path: Path
    shown: str
    line: int | None = None

    @property
    def is_yaml(self) -> bool:
        return self.path.suffix in YAML_SUFFIXES

    @property
    def location(self) -> str:
        return f"{self.shown}:{self.line}" if self.line else self.shown


class Catalog:
    def __init__(
        self,
        entries: Mapping[str, Entry],
        sources: Sequence[str],
        broken: Sequence[ConfigError] = (),
    ) -> None:
        self.entries = dict(entries)
        self.sources = tuple(sources)
        # files that could not be read at all: their ids are unknown
        self.broken = tuple(broken)

    def ids(self) -> list[str]:
        return sorted(self.entries)

    def entry(self, profile_id: str) -> Entry:
        try:
            return self.entries[profile_id]
        except KeyError:
            if self.broken:  # the id may well be in a file we could not read
                first = self.broken[0]
                raise ConfigError(
                    f"no profile {profile_id!r} found, and a profile file could not be read: "
                    f"{first.message}",
                    hint=first.hint,
                ) from None
            if not self.entries:
                raise UsageError(
                    f"no profile {profile_id!r}: no profiles found in {', '.join(self.sources)}",
                    hint="pass --profiles DIR_OR_FILE or set INFERSUP_PROFILES",
                ) from None
            raise UsageError(
                f"no profile {profile_id!r}{suggestion(profile_id, self.entries)}",
                hint=f"known ids: {', '.join(self.ids())} (`infersup list`)",
            ) from None

    def load(self, profile_id: str) -> Profile:
        entry = self.entry(profile_id)
        if entry.is_yaml:
            return load_yaml_profile(entry.path, display=entry.shown)
        return load_models_conf(entry.path, shown=entry.shown, only=profile_id)[profile_id]


def source_paths(
    explicit: Sequence[str] | None, env: Mapping[str, str], cwd: Path
) -> tuple[list[Path], bool]:
    """The paths to search, and whether the user named them (missing ones are errors)."""
    if explicit:
        return [cwd / p for p in explicit], True
    if env.get(ENV_PROFILES):
        return [cwd / p for p in env[ENV_PROFILES].split(os.pathsep) if p], True
    return [cwd / p for p in DEFAULT_SOURCES], False


def discover(
    explicit: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Catalog:
    cwd = cwd or Path.cwd()
    env = os.environ if env is None else env
    paths, named = source_paths(explicit, env, cwd)
    entries: dict[str, Entry] = {}
    broken: list[ConfigError] = []
    for path in paths:
        if not path.exists():
            if named:
                raise UsageError(f"profiles path {_shown(path, cwd)}: no such file or directory")
            continue
        try:
            found = _entries(path, cwd)
        except ConfigError as exc:  # a malformed models.conf must not hide the YAML profiles
            broken.append(exc)
            continue
        for entry in found:
            if entry.id in entries:
                first = entries[entry.id]
                raise ConfigError(
                    f"profile id {entry.id!r} is defined twice: {first.location} and "
                    f"{entry.location}",
                    hint="ids must be unique across all profile files; rename one",
                )
            entries[entry.id] = entry
    return Catalog(entries, [_shown(p, cwd) for p in paths], broken)


def _entries(path: Path, cwd: Path) -> list[Entry]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
        conf = path / "models.conf"
        if conf.is_file():
            files.append(conf)
        out = []
        for file in files:
            out += _entries(file, cwd)
        return out
    shown = _shown(path, cwd)
    if path.suffix in YAML_SUFFIXES:
        return [Entry(path.stem, path, shown)]
    return [Entry(pid, path, shown, line) for pid, line in section_ids(path, shown=shown).items()]


def _shown(path: Path, cwd: Path) -> str:
    try:
        return str(path.resolve().relative_to(cwd.resolve()))
    except ValueError:
        return str(path)
