"""llama.cpp's llama-server (field notes section B)."""

from __future__ import annotations

from infersup.backends.base import BackendInfo

LLAMA_CPP = BackendInfo(
    name="llama.cpp",
    # Today's default; the server warns it will change, so it is always passed.
    default_port=8080,
    model_flag="--model",
    # The port is bound before loading; /health is 503 "Loading model" until ready.
    health_path="/health",
    # --metrics is off by default (/metrics answers 501 without it).
    metrics_flag="--metrics",
)

PROGRAM = "llama-server"
