"""Golden tests: every shipped profile compiles to exactly this argv.

Compiled against the bundled flag tables of the pinned builds with a fixed
program prefix, so the result does not depend on what is installed here.
A change to a shipped profile must change this file too, on purpose.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infersup.compile import compile_profile
from infersup.models import locate_model
from infersup.profiles.catalog import discover
from tests.conftest import REPO, llama_table, sglang_table

SGLANG_PREFIX = ("python", "-m", "sglang.launch_server")

GOLDEN: dict[str, list[str]] = {
    "smollm2-135m": [
        "llama-server",
        "--model", "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "--host", "127.0.0.1",
        "--port", "8080",
        "--ctx-size", "2048",
        "--device", "none",
        "--parallel", "2",
        "--threads", "1",
        "--metrics",
    ],
    "glm-4.7-flash-q8": [
        "llama-server",
        "--model", "models/GLM-4.7-Flash-Q8_0.gguf",
        "--host", "127.0.0.1",
        "--port", "8082",
        "--ctx-size", "131072",
        "--n-gpu-layers", "auto",
        "--fit", "on",
        "--fit-target", "128,1024",
        "--batch-size", "2048",
        "--ubatch-size", "512",
        "--flash-attn", "auto",
        "--cache-type-k", "q8_0",
        "--cache-type-v", "q8_0",
        "--jinja",
        "--parallel", "1",
        "--temp", "1.0",
        "--top-p", "0.95",
        "--min-p", "0.01",
        "--metrics",
    ],
    "glm-4.7-flash-q8-24gb": [
        "llama-server",
        "--model", "models/GLM-4.7-Flash-Q8_0.gguf",
        "--host", "127.0.0.1",
        "--port", "8081",
        "--ctx-size", "32768",
        "--fit", "off",
        "--n-gpu-layers", "all",
        "--override-tensor", r"blk\.(2[4-9]|3[0-9]|4[0-6])\.ffn_(up|down|gate)_exps\.weight=CPU",
        "--batch-size", "2048",
        "--ubatch-size", "512",
        "--flash-attn", "auto",
        "--cache-type-k", "q8_0",
        "--cache-type-v", "q8_0",
        "--jinja",
        "--parallel", "1",
        "--temp", "1.0",
        "--top-p", "0.95",
        "--min-p", "0.01",
        "--metrics",
    ],
    "glm-5.1-fp8": [
        *SGLANG_PREFIX,
        "--model-path", "zai-org/GLM-5.1-FP8",
        "--host", "127.0.0.1",
        "--port", "30000",
        "--tp-size", "8",
        "--mem-fraction-static", "0.85",
        "--watchdog-timeout", "1200",
        "--max-running-requests", "48",
        "--max-prefill-tokens", "32768",
        "--max-total-tokens", "65536",
        "--speculative-algorithm", "EAGLE",
        "--speculative-num-steps", "3",
        "--speculative-eagle-topk", "1",
        "--speculative-num-draft-tokens", "4",
        "--kv-cache-dtype", "bf16",
        "--tool-call-parser", "glm47",
        "--reasoning-parser", "glm45",
        "--enable-metrics",
    ],
    "qwen3-30b-a3b-q4": [
        "llama-server",
        "--model", "models/Qwen3-30B-A3B-Q4_K_M.gguf",
        "--host", "127.0.0.1",
        "--port", "8090",
        "--ctx-size", "32768",
        "--n-gpu-layers", "auto",
        "--flash-attn", "auto",
        "--cache-type-k", "q8_0",
        "--cache-type-v", "q8_0",
        "--fit", "on",
        "--fit-target", "1024",
        "--fit-ctx", "8192",
        "--jinja",
        "--temp", "0.6",
    ],
    "smollm2-135m-conf": [
        "llama-server",
        "--model", "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "--host", "127.0.0.1",
        "--port", "8091",
        "--ctx-size", "4096",
        "--n-gpu-layers", "auto",
        "--flash-attn", "off",
        "--fit", "on",
        "--fit-target", "1024",
        "--threads", "1",
        "--parallel", "2",
        "--alias", "smollm2",
    ],
}  # fmt: skip


def compiled(profile_id: str) -> list[str]:
    catalog = discover(cwd=REPO, env={})
    profile = catalog.load(profile_id)
    table = sglang_table() if profile.backend == "sglang" else llama_table()
    prefix = SGLANG_PREFIX if profile.backend == "sglang" else ("llama-server",)
    model = locate_model(profile, Path("models")).arg
    return list(compile_profile(profile, table=table, program=prefix, model=model).argv)


@pytest.mark.parametrize("profile_id", sorted(GOLDEN))
def test_shipped_profile_compiles_to_golden_argv(profile_id: str) -> None:
    assert compiled(profile_id) == GOLDEN[profile_id]


def test_every_shipped_profile_has_a_golden_argv() -> None:
    assert sorted(discover(cwd=REPO, env={}).ids()) == sorted(GOLDEN)
