"""Header-only GGUF reading (``reader``) and the model facts derived from it (``facts``).

Standard library only: importing this package must not pull numpy or ``gguf``,
so ``infersup inspect`` and the CLI start fast.
"""

from __future__ import annotations

from infersup.gguf.facts import KV_CACHE_TYPES, ModelFacts, ShardInfo, inspect_model
from infersup.gguf.reader import GGUFError, GGUFHeader, TensorInfo, read_header

__all__ = [
    "KV_CACHE_TYPES",
    "GGUFError",
    "GGUFHeader",
    "ModelFacts",
    "ShardInfo",
    "TensorInfo",
    "inspect_model",
    "read_header",
]
