"""Flag tables: what options a server accepts, as data.

A table is parsed from the server's own description of itself (llama-server
``--help`` text, SGLang's argparse actions) so that profiles are checked
against the server that will really run, not against a list we maintain.
The pinned versions' tables ship in ``backends/data/`` as the fallback.

Nothing here runs a process or touches the file system except the explicit
``load_*`` helpers at the bottom that read bundled data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class FlagSpec:
    """One server option.

    ``names`` are the positive spellings (long and short); ``negations`` the
    spellings that turn a switch off (``--no-jinja``). ``nargs`` is ``None``
    for exactly one value, an int for a fixed count, or ``'?'``, ``'+'``,
    ``'*'`` as in argparse. ``list_sep`` is set for flags whose one value is
    a list (``,`` for ``--fit-target``, ``;`` for ``--samplers``); with
    ``choices`` every item must be one. ``value_type`` ``"number"`` accepts
    any number or one of ``words`` (``-ngl N`` also takes ``auto``/``all``).
    """

    names: tuple[str, ...]
    takes_value: bool
    negations: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    hint: str = ""
    nargs: int | str | None = None
    value_type: str | None = None
    list_sep: str | None = None
    key_value: bool = False
    words: tuple[str, ...] = ()
    env: str | None = None
    deprecated: bool = False
    removed: str | None = None

    @property
    def long_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n.startswith("--"))

    @property
    def canonical(self) -> str:
        longs = self.long_names
        return longs[0] if longs else self.names[0]

    @property
    def negation(self) -> str | None:
        """The long ``--no-...`` form, if the server has one."""
        for n in self.negations:
            if n.startswith("--"):
                return n
        return None


@dataclass(frozen=True)
class FlagTable:
    """All options of one server build, indexed by every spelling."""

    server: str
    version: str
    source: str
    flags: tuple[FlagSpec, ...]
    _index: Mapping[str, FlagSpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, FlagSpec] = {}
        for spec in self.flags:
            for name in (*spec.names, *spec.negations):
                index.setdefault(name, spec)
        object.__setattr__(self, "_index", index)

    def get(self, name: str) -> FlagSpec | None:
        """Look up a spelling as written on a command line (``--ctx-size``, ``-c``)."""
        return self._index.get(name)

    def for_key(self, key: str) -> FlagSpec | None:
        """Look up a profile key (``ctx_size`` -> ``--ctx-size``); long names only."""
        return self._index.get(key_to_flag(key))

    def profile_keys(self) -> Iterator[str]:
        """Every spelling a profile may use as a key (long names, underscored)."""
        for spec in self.flags:
            if spec.removed is None:
                for name in spec.long_names:
                    yield flag_to_key(name)

    def short_to_key(self) -> dict[str, str]:
        """Short spellings (``ngl``) to the profile key that means the same."""
        out: dict[str, str] = {}
        for spec in self.flags:
            longs = spec.long_names
            if not longs:
                continue
            for name in spec.names:
                if not name.startswith("--"):
                    out[name.lstrip("-").replace("-", "_")] = flag_to_key(longs[-1])
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "version": self.version,
            "source": self.source,
            "flags": [asdict(f) for f in self.flags],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FlagTable:
        flags = []
        for raw in data["flags"]:
            raw = dict(raw)
            for key in ("names", "negations", "words"):
                raw[key] = tuple(raw[key])
            if raw.get("choices") is not None:
                raw["choices"] = tuple(raw["choices"])
            flags.append(FlagSpec(**raw))
        return cls(
            server=data["server"],
            version=data["version"],
            source=data["source"],
            flags=tuple(flags),
        )


def key_to_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def flag_to_key(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


# --------------------------------------------------------------------------
# llama-server --help
# --------------------------------------------------------------------------

_NAME = re.compile(r"-{1,2}[A-Za-z0-9][\w.-]*")
_HEAD_SPLIT = re.compile(r"(?<![,\s])\s{2,}")
_ALLOWED = re.compile(r"allowed values:\s*([\w.]+(?:\s*,\s*[\w.]+)*)")
_ENV = re.compile(r"\(env:\s*([A-Z0-9_]+)\)")
# b11434 prints "version: 0.6.0-dev (build 11434, commit unknown)"; older
# builds "version: 4567 (abc123)"
_VERSION = re.compile(r"\(build (\d+)\b|version:\s*(\d+)\s*\(")


def parse_llama_help(text: str, *, source: str, version: str = "") -> FlagTable:
    """Parse the text of ``llama-server --help`` into a table.

    Entries start at column 0 with ``-``: comma-separated spellings, an
    optional value hint, then the description (same line after two or more
    spaces, or on indented continuation lines).
    """
    entries: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("-") and not line.startswith("-----"):
            parts = _HEAD_SPLIT.split(line.rstrip(), maxsplit=1)
            head = parts[0]
            desc_lines = [parts[1]] if len(parts) > 1 else []
            entries.append((head, desc_lines))
        elif line.startswith(" ") and entries:
            entries[-1][1].append(line.strip())
    flags = tuple(_llama_entry(head, desc) for head, desc in entries)
    return FlagTable(server="llama-server", version=version, source=source, flags=flags)


_NUMERIC_HINTS = frozenset({"N", "INDEX", "PORT", "SEED", "SECONDS", "P", "L"})
_BULLET = re.compile(r"^- ([\w.+-]+):")
_DEFAULT = re.compile(r"\(default: '?([\w.+-]+)'?[,)]")
_QUOTED = re.compile(r"'([a-z]+)'")


def _llama_entry(head: str, desc_lines: list[str]) -> FlagSpec:
    desc = " ".join(desc_lines)
    names: list[str] = []
    rest = head
    while True:
        m = _NAME.match(rest)
        if not m:
            break
        names.append(m.group(0))
        rest = rest[m.end() :]
        if rest.startswith(","):
            rest = rest[1:].lstrip()
            continue
        break
    hint = rest.strip()
    positives, negatives = _split_negations(names)
    choices: tuple[str, ...] | None = None
    nargs: int | str | None = None
    value_type: str | None = None
    list_sep: str | None = None
    words: tuple[str, ...] = ()
    m_choice = re.fullmatch(r"[\[{<]([\w.-]+(?:[|,][\w.-]+)+)[\]}>]", hint)
    if m_choice and ".." not in hint:
        choices = tuple(re.split(r"[|,]", m_choice.group(1)))
        if all(is_number(c) for c in choices):
            # ``--cpu-strict <0|1>``: the server parses a number and accepts others
            choices, value_type = None, "number"
    elif re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*(?:,[a-z0-9]+(?:-[a-z0-9]+)*)+", hint):
        # ``--spec-type none,draft-simple,...``: the allowed items of a comma list
        choices, list_sep = tuple(hint.split(",")), ","
    elif (m_allowed := _ALLOWED.search(desc)) is not None:
        choices = tuple(c.strip() for c in m_allowed.group(1).split(","))
    elif re.fullmatch(r"[A-Z]+", hint) and hint not in _NUMERIC_HINTS:
        bullets = [m.group(1) for line in desc_lines if (m := _BULLET.match(line))]
        if len(bullets) >= 2:  # ``--numa TYPE`` then "- distribute: ..." lines
            default = _DEFAULT.search(desc)
            extra = [default.group(1)] if default and default.group(1) not in bullets else []
            choices = (*bullets, *extra)
    if hint in _NUMERIC_HINTS or re.fullmatch(r"<\d+\.\.\.\d+>", hint):
        value_type = "number"
        words = tuple(dict.fromkeys(_QUOTED.findall(desc)))
    if re.fullmatch(r"[A-Z_]+(?: [A-Z_]+)+", hint):
        nargs = len(hint.split())
    if list_sep is None and choices is None:
        if "separated by ';'" in desc:
            list_sep = ";"
        elif "," in hint or "comma-separated" in desc:
            list_sep = ","
    m_env = _ENV.search(desc)
    removed = desc if desc.lower().startswith("the argument has been removed") else None
    return FlagSpec(
        names=tuple(positives),
        takes_value=bool(hint),
        negations=tuple(negatives),
        choices=choices,
        hint=hint,
        nargs=nargs,
        value_type=value_type,
        list_sep=list_sep,
        key_value=list_sep is not None and "=" in hint,
        words=words,
        env=m_env.group(1) if m_env else None,
        deprecated="DEPRECATED" in desc,
        removed=removed,
    )


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split_negations(names: list[str]) -> tuple[list[str], list[str]]:
    """``--repack, -nr, --no-repack`` -> positives ``--repack``; negatives the rest.

    Everything after the last positive long name that precedes the first
    ``--no-``/``-no-`` spelling is a negation (llama.cpp lists positive
    spellings first). A lone ``--no-host`` is a plain switch.
    """
    first_neg = next((i for i, n in enumerate(names) if n.startswith(("--no-", "-no-"))), None)
    if first_neg is None:
        return names, []
    last_pos = max((i for i in range(first_neg) if names[i].startswith("--")), default=None)
    if last_pos is None:
        return names, []
    return names[: last_pos + 1], names[last_pos + 1 :]


# --------------------------------------------------------------------------
# SGLang argparse table
# --------------------------------------------------------------------------


def parse_sglang_actions(
    actions: Iterable[Mapping[str, Any]], *, source: str, version: str
) -> FlagTable:
    """Build a table from argparse actions dumped as dicts.

    The shape is the one ``infersup`` dumps from an installed SGLang (and the
    bundled ``sglang-*-server-args.json``): options, action, type, nargs,
    choices, deprecated.
    """
    flags = []
    for act in actions:
        options = list(act["options"])
        kind = str(act.get("action", ""))
        nargs = act.get("nargs")
        negations: list[str] = []
        if kind == "BooleanOptionalAction":
            negations = [o for o in options if o.startswith("--no-")]
            options = [o for o in options if o not in negations]
        takes_value = nargs != 0 and "StoreConst" not in kind and "StoreTrue" not in kind
        takes_value = takes_value and "StoreFalse" not in kind and kind != "_CountAction"
        choices = act.get("choices")
        flags.append(
            FlagSpec(
                names=tuple(options),
                takes_value=takes_value,
                negations=tuple(negations),
                choices=tuple(str(c) for c in choices) if choices and takes_value else None,
                hint=str(act.get("dest", "")).upper() if takes_value else "",
                nargs=nargs if takes_value else None,
                value_type=act.get("type"),
                deprecated=bool(act.get("deprecated")),
            )
        )
    return FlagTable(server="sglang", version=version, source=source, flags=tuple(flags))


# --------------------------------------------------------------------------
# Bundled tables (the pinned builds)
# --------------------------------------------------------------------------

BUNDLED_LLAMA_HELP = "llama-server-b11434-help.txt"
BUNDLED_SGLANG_ARGS = "sglang-0.5.23-server-args.json"


def _data(name: str) -> str:
    return resources.files("infersup.backends").joinpath("data", name).read_text("utf-8")


def bundled_llama_table() -> FlagTable:
    return parse_llama_help(
        _data(BUNDLED_LLAMA_HELP), source=f"bundled {BUNDLED_LLAMA_HELP}", version="b11434"
    )


def bundled_sglang_table() -> FlagTable:
    data = json.loads(_data(BUNDLED_SGLANG_ARGS))
    return parse_sglang_actions(
        data["args"],
        source=f"bundled {BUNDLED_SGLANG_ARGS}",
        version=str(data.get("sglang_version", "")),
    )


def llama_version_from_text(text: str) -> str:
    """``version: 4567 (abc123)`` or ``... (build 11434, ...)`` -> ``b...``; empty when absent."""
    m = _VERSION.search(text)
    return f"b{m.group(1) or m.group(2)}" if m else ""
