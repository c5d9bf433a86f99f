"""Backends: one module per server, plus flag tables as data."""

from __future__ import annotations

from infersup.backends.base import BackendInfo
from infersup.backends.llamacpp import LLAMA_CPP
from infersup.backends.sglang import SGLANG

BACKENDS: dict[str, BackendInfo] = {b.name: b for b in (LLAMA_CPP, SGLANG)}


def backend_info(name: str) -> BackendInfo:
    return BACKENDS[name]
