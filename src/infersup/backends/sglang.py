"""SGLang's ``python -m sglang.launch_server`` (field notes section C)."""

from __future__ import annotations

from infersup.backends.base import BackendInfo

SGLANG = BackendInfo(
    name="sglang",
    default_port=30000,
    model_flag="--model-path",
    # Only /health after "ready to roll" means ready; /model_info answers earlier.
    health_path="/health",
    ready_line="The server is fired up and ready to roll!",
    metrics_flag="--enable-metrics",
    # the scheduler's periodic batch lines (uvicorn logs every probe too)
    progress_lines=("Prefill batch", "Decode batch"),
    # argparse exits 2 on the old names since 0.5.20.
    renames=(("_nsa_", "_dsa_", "SGLang 0.5.20"),),
)

MODULE = "sglang.launch_server"

# Run with the target interpreter to dump its argparse table in the shape of
# the bundled ``sglang-*-server-args.json``. Importing sglang is slow, so the
# result is cached by the caller.
DUMP_ARGS_SCRIPT = r"""
import argparse, json, sys
from importlib.metadata import version
from sglang.srt.server_args import ServerArgs
parser = argparse.ArgumentParser()
ServerArgs.add_cli_args(parser)
out = []
for a in parser._actions:
    if not a.option_strings or a.dest == "help":
        continue
    t = getattr(a.type, "__name__", None) if a.type is not None else None
    out.append({
        "options": list(a.option_strings), "dest": a.dest,
        "action": type(a).__name__, "type": t,
        "nargs": a.nargs, "choices": list(a.choices) if a.choices else None,
        "deprecated": bool(getattr(a, "deprecated", False)),
    })
json.dump({"sglang_version": version("sglang"), "args": out}, sys.stdout)
"""
