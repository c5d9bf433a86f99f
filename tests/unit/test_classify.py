"""The exit classifier, fed real server output line by line.

Every fixture in tests/fixtures/serverlogs goes through ``classify_exit`` with
the return code it really had (README.md there says how each was made); the
whole cause kind, its permanence and the exact evidence line are asserted.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from infersup.supervise.classify import (
    RULES,
    ExitCause,
    classify_exit,
    describe_status,
    signal_of,
    stalled_cause,
    unhealthy_cause,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "serverlogs"
TAIL = 200  # what the supervisor hands the classifier
READY_LINES = {"llama.cpp": "llama_server: listening on ", "sglang": "ready to roll!"}

LLAMA_KEYS = ("fit_target", "ubatch_size", "ctx_size", "n_gpu_layers")
SGLANG_KEYS = ("mem_fraction_static", "watchdog_timeout", "max_running_requests")

KINDS = {
    "clean",
    "bad-flag",
    "bad-value",
    "port-in-use",
    "model-missing",
    "model-load-failed",
    "context-failed",
    "cuda-oom",
    "no-kv-cache-memory",
    "host-oom",
    "illegal-memory-access",
    "cuda-error",
    "watchdog",
    "nccl-timeout",
    "abort",
    "child-failed",
    "killed",
    "terminated",
    "crash-signal",
    "exit",
    "stalled",
    "unhealthy",
}


@dataclass(frozen=True)
class Case:
    fixture: str
    backend: str
    returncode: int
    ready: bool  # the fixture holds the server's ready line
    kind: str
    permanent: bool
    marker: str | None  # the evidence is the newest fixture line containing this

    @property
    def lines(self) -> list[str]:
        return fixture_lines(self.fixture)[-TAIL:]


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / f"{name}.txt").read_text(encoding="utf-8").splitlines()


L, S = "llama.cpp", "sglang"
CASES = [
    # real llama-server b11434 runs (README.md: exact commands)
    Case("llama-bad-flag", L, 1, False, "bad-flag", True, "error: invalid argument: --no-such-flag"),
    Case("llama-bad-value", L, 1, False, "bad-value", True, 'error while handling argument "--ctx-size"'),
    Case("llama-bad-choice", L, 1, False, "bad-value", True, "unknown value for --flash-attn: 'maybe'"),
    Case("llama-bad-env-value", L, 1, False, "bad-value", True, 'environment variable "LLAMA_ARG_CTX_SIZE"'),
    Case("llama-model-missing", L, 1, False, "model-missing", True, "failed to open GGUF file"),
    Case("llama-gguf-truncated", L, 1, False, "model-load-failed", True, "data is not within the file bounds"),
    Case("llama-gguf-truncated-header", L, 1, False, "model-load-failed", True, "failed to read key-value pairs"),
    Case("llama-not-gguf", L, 1, False, "model-load-failed", True, "invalid magic characters: 'this'"),
    Case("llama-unknown-arch", L, 1, False, "model-load-failed", True, "unknown model architecture: 'nosucharch'"),
    Case("llama-context-failed", L, 1, False, "context-failed", True, "quantized V cache requires flash_attn"),
    Case("llama-host-oom-kv", L, 1, False, "host-oom", False, "ggml_aligned_malloc: insufficient memory"),
    Case("llama-port-in-use", L, 1, False, "port-in-use", True, "couldn't bind HTTP server socket"),
    Case("llama-startup-sigterm", L, 0, True, "clean", False, None),
    Case("llama-request-sigterm", L, 0, True, "clean", False, None),
    Case("llama-startup-sigkill", L, -9, True, "killed", False, None),
    # llama.cpp lines taken from the b11434 sources (no GPU here)
    Case("llama-cuda-oom-weights-from-source", L, 1, False, "cuda-oom", False, "cudaMalloc failed: out of memory"),
    Case("llama-cuda-oom-compute-from-source", L, 1, False, "cuda-oom", False, "cudaMalloc failed: out of memory"),
    Case("llama-cuda-oom-runtime-from-source", L, -6, True, "cuda-oom", False, "E CUDA error: out of memory"),
    Case("llama-illegal-memory-access-from-source", L, -6, True, "illegal-memory-access", False, "an illegal memory access was encountered"),
    Case("llama-cuda-no-kernel-image-from-source", L, -6, False, "cuda-error", False, "CUDA error: no kernel image is available"),
    Case("llama-ggml-assert-from-source", L, -6, True, "abort", False, "GGML_ASSERT(ggml_can_mul_mat(a, b)) failed"),
    # SGLang: argparse replayed from its 0.5.23 table, the rest from its sources
    Case("sglang-bad-flag-from-source", S, 2, False, "bad-flag", True, "error: unrecognized arguments: --nsa-prefill-backend"),
    Case("sglang-bad-choice-from-source", S, 2, False, "bad-value", True, "argument --kv-cache-dtype: invalid choice: 'fp9'"),
    Case("sglang-bad-value-from-source", S, 2, False, "bad-value", True, "argument --mem-fraction-static: invalid float value"),
    Case("sglang-model-missing-from-source", S, 1, False, "model-missing", True, "OSError: Incorrect path_or_model_id"),
    Case("sglang-port-in-use-from-source", S, 1, False, "port-in-use", True, "error while attempting to bind on address"),
    Case("sglang-cuda-oom-from-source", S, -9, True, "cuda-oom", False, "torch.OutOfMemoryError: CUDA out of memory"),
    Case("sglang-no-kv-memory-from-source", S, -9, False, "no-kv-cache-memory", False, "RuntimeError: Not enough memory"),
    Case("sglang-watchdog-from-source", S, -9, True, "watchdog", False, "Scheduler watchdog timeout (self.watchdog_timeout=300"),
    Case("sglang-illegal-memory-access-from-source", S, -9, True, "illegal-memory-access", False, "torch.AcceleratorError: CUDA error: an illegal memory access"),
    Case("sglang-nccl-timeout-from-source", S, -6, True, "nccl-timeout", False, "what():  [PG ID 2"),
    Case("sglang-zmq-port-race-from-source", S, -9, False, "child-failed", False, "zmq.error.ZMQError: Address already in use"),
]  # fmt: skip


def test_every_fixture_has_a_case_and_a_readme_entry() -> None:
    on_disk = sorted(p.stem for p in FIXTURES.glob("*.txt"))
    assert on_disk == sorted(c.fixture for c in CASES)
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for case in CASES:
        assert f"`{case.fixture}.txt`" in readme, case.fixture


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.fixture)
def test_fixture_is_classified(case: Case) -> None:
    lines = case.lines
    assert any(READY_LINES[case.backend] in line for line in lines) == case.ready
    cause = classify_exit(case.backend, case.returncode, lines, ready_seen=case.ready)
    if case.marker is None:
        expected = None
    else:
        matching = [line for line in lines if case.marker in line]
        assert matching, f"marker {case.marker!r} not in {case.fixture}"
        expected = matching[-1]
    assert (cause.kind, cause.permanent, cause.evidence) == (case.kind, case.permanent, expected)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.fixture)
def test_fixture_gives_the_same_cause_fed_one_line_at_a_time(case: Case) -> None:
    """A tail that grows line by line is classified as the whole tail once it is complete,
    and a cause never appears before its evidence line does."""
    lines = case.lines
    final = classify_exit(case.backend, case.returncode, lines, ready_seen=case.ready)
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        cause = classify_exit(case.backend, case.returncode, seen, ready_seen=case.ready)
        if cause.evidence is not None:
            assert cause.evidence in seen
    assert cause == final


def test_every_rule_is_exercised_by_real_or_source_output() -> None:
    matched: set[int] = set()
    for case in CASES:
        for i, rule in enumerate(RULES):
            if case.backend in rule.backends and any(
                p.search(line) for p in rule.patterns for line in case.lines
            ):
                matched.add(i)
    missing = [(r.kind, sorted(r.backends)) for i, r in enumerate(RULES) if i not in matched]
    assert missing == []


def test_rule_table_is_consistent() -> None:
    for rule in RULES:
        assert rule.kind in KINDS
        assert rule.backends <= {L, S} and rule.backends
        # permanent causes are start errors: a running server cannot hit them
        assert rule.before_ready_only == rule.permanent, rule.kind
        assert rule.summary and rule.hint


# --- precedence ---------------------------------------------------------------------------


def test_rule_priority_beats_recency() -> None:
    """The OOM line is older than 'failed to load model', but the OOM rule comes first."""
    lines = fixture_lines("llama-cuda-oom-weights-from-source")
    oom = next(line for line in lines if "cudaMalloc failed" in line)
    newest_generic = [line for line in lines if "failed to load model" in line][-1]
    assert lines.index(oom) < lines.index(newest_generic)
    cause = classify_exit(L, 1, lines, ready_seen=False)
    assert (cause.kind, cause.evidence) == ("cuda-oom", oom)
    without_oom = [line for line in lines if "out of memory" not in line and "CUDA0" not in line]
    generic = classify_exit(L, 1, without_oom, ready_seen=False)
    assert (generic.kind, generic.permanent) == ("model-load-failed", True)
    assert generic.evidence == newest_generic


def test_newest_line_is_the_evidence_within_one_pattern() -> None:
    lines = [
        "0.01.000.000 E ggml_backend_cuda_buffer_type_alloc_buffer: allocating 100.00 MiB on device 0: cudaMalloc failed: out of memory",
        "0.02.000.000 E ggml_backend_cuda_buffer_type_alloc_buffer: allocating 200.00 MiB on device 1: cudaMalloc failed: out of memory",
        "0.02.000.100 E CUDA error: out of memory",
    ]
    cause = classify_exit(L, -6, lines, ready_seen=True)
    # the first pattern (cudaMalloc) wins over the newer "CUDA error" line, newest of its lines
    assert (cause.kind, cause.evidence) == ("cuda-oom", lines[1])


def test_sglang_watchdog_beats_sigquit_and_plain_sigkill() -> None:
    lines = fixture_lines("sglang-watchdog-from-source")
    for rc in (-9, 137):
        assert classify_exit(S, rc, lines, ready_seen=True).kind == "watchdog"
    without_watchdog = [line for line in lines if "watchdog" not in line]
    assert classify_exit(S, -9, without_watchdog, ready_seen=True).kind == "child-failed"
    only_status = [line for line in lines if "sigquit" not in line and "watchdog" not in line]
    assert classify_exit(S, -9, only_status, ready_seen=True).kind == "killed"


def test_a_cuda_error_beats_the_watchdog_it_caused() -> None:
    """One rank's illegal memory access leaves the others hanging until a watchdog fires."""
    lines = [
        *fixture_lines("sglang-illegal-memory-access-from-source"),
        "[2026-01-12 10:36:09 TP1] Scheduler watchdog timeout (self.watchdog_timeout=300, self.soft=False)",
    ]
    cause = classify_exit(S, -9, lines, ready_seen=True)
    assert cause.kind == "illegal-memory-access"
    assert (
        cause.evidence
        == "torch.AcceleratorError: CUDA error: an illegal memory access was encountered"
    )


def test_zmq_address_in_use_is_a_transient_worker_failure_not_the_http_port() -> None:
    cause = classify_exit(
        S, -9, fixture_lines("sglang-zmq-port-race-from-source"), ready_seen=False
    )
    assert (cause.kind, cause.permanent) == ("child-failed", False)


def test_start_errors_do_not_count_after_ready() -> None:
    lines = fixture_lines("llama-port-in-use")
    before = classify_exit(L, 1, lines, ready_seen=False)
    after = classify_exit(L, 1, lines, ready_seen=True)
    assert (before.kind, before.permanent) == ("port-in-use", True)
    assert (after.kind, after.permanent, after.evidence) == ("exit", False, None)


def test_rules_only_apply_to_their_backend() -> None:
    llama_flag = fixture_lines("llama-bad-flag")
    sglang_flag = fixture_lines("sglang-bad-flag-from-source")
    assert classify_exit(S, 1, llama_flag, ready_seen=False).kind == "exit"
    assert classify_exit(L, 2, sglang_flag, ready_seen=False).kind == "exit"


# --- return codes -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [L, S])
@pytest.mark.parametrize("ready", [False, True])
def test_unknown_exit_1_is_a_crash_to_retry(backend: str, ready: bool) -> None:
    lines = ["loading something", "something else happened"]
    cause = classify_exit(backend, 1, lines, ready_seen=ready)
    assert (cause.kind, cause.permanent, cause.evidence) == ("exit", False, None)
    assert cause.summary == "exit status 1 with no known cause in the last lines"


def test_unknown_exit_with_no_lines_at_all() -> None:
    cause = classify_exit(L, 3, [], ready_seen=False)
    assert (cause.kind, cause.permanent, cause.summary) == (
        "exit",
        False,
        "exit status 3 with no known cause in the last lines",
    )


@pytest.mark.parametrize("backend", [L, S])
@pytest.mark.parametrize("rc", [-9, 137])
def test_sigkill_and_137_are_killed(backend: str, rc: int) -> None:
    cause = classify_exit(backend, rc, ["some output"], ready_seen=True)
    assert cause == ExitCause(
        kind="killed",
        summary="killed by SIGKILL (status 137): out of memory or a watchdog",
        hint=cause.hint,
        permanent=False,
    )


def test_killed_hints_name_the_backends_knobs() -> None:
    llama = classify_exit(L, -9, [], ready_seen=True).hint
    sglang = classify_exit(S, 137, [], ready_seen=True).hint
    for key in ("server.fit_target", "server.ubatch_size", "server.ctx_size"):
        assert key in llama
    for key in ("server.mem_fraction_static", "server.watchdog_timeout"):
        assert key in sglang
    assert "mem_fraction_static" not in llama
    assert "fit_target" not in sglang


@pytest.mark.parametrize("backend", [L, S])
def test_status_0_is_clean_whatever_the_log_says(backend: str) -> None:
    lines = fixture_lines("llama-cuda-oom-weights-from-source")
    assert classify_exit(backend, 0, lines, ready_seen=True) == ExitCause(
        "clean", "exited with status 0", "", permanent=False
    )
    early = classify_exit(backend, 0, [], ready_seen=False)
    assert (early.kind, early.summary) == ("clean", "exited with status 0 before it was ready")


@pytest.mark.parametrize(
    ("rc", "kind", "summary"),
    [
        (-6, "abort", "killed by SIGABRT (status 134): the server aborted"),
        (134, "abort", "killed by SIGABRT (status 134): the server aborted"),
        (-15, "terminated", "killed by SIGTERM (status 143): stopped from outside infersup"),
        (130, "terminated", "killed by SIGINT (status 130): stopped from outside infersup"),
        (-11, "crash-signal", "killed by SIGSEGV (status 139): the server crashed"),
        (-7, "crash-signal", "killed by SIGBUS (status 135): the server crashed"),
        (-4, "crash-signal", "killed by SIGILL (status 132): the server crashed"),
        (255, "exit", "exit status 255 with no known cause in the last lines"),
    ],
)
def test_status_alone(rc: int, kind: str, summary: str) -> None:
    cause = classify_exit(L, rc, ["no known line"], ready_seen=True)
    assert (cause.kind, cause.summary, cause.permanent, cause.evidence) == (
        kind,
        summary,
        False,
        None,
    )


def test_signal_hints_say_what_each_signal_means() -> None:
    assert "model file" in classify_exit(L, -7, [], ready_seen=True).hint
    assert "CPU instructions" in classify_exit(L, -4, [], ready_seen=True).hint
    assert "native code" in classify_exit(L, -11, [], ready_seen=True).hint


def test_a_matched_line_beats_the_status() -> None:
    """SGLang's out-of-memory path ends in SIGKILL: the OOM line, not 'killed', is the cause."""
    cause = classify_exit(S, 137, fixture_lines("sglang-cuda-oom-from-source"), ready_seen=True)
    assert cause.kind == "cuda-oom"
    assert cause.summary == "out of GPU memory (killed by SIGKILL (status 137))"


@pytest.mark.parametrize(
    ("rc", "expected"),
    [(-9, signal.SIGKILL), (137, signal.SIGKILL), (-6, signal.SIGABRT), (143, signal.SIGTERM)],
)
def test_signal_of(rc: int, expected: signal.Signals) -> None:
    assert signal_of(rc) is expected


@pytest.mark.parametrize("rc", [0, 1, 2, 127, 128, 255, -200])
def test_signal_of_plain_statuses(rc: int) -> None:
    assert signal_of(rc) is None


def test_describe_status() -> None:
    assert [describe_status(rc) for rc in (0, 1, -9, 137, -15)] == [
        "exit status 0",
        "exit status 1",
        "killed by SIGKILL (status 137)",
        "killed by SIGKILL (status 137)",
        "killed by SIGTERM (status 143)",
    ]


# --- hints --------------------------------------------------------------------------------


def test_oom_hints_name_the_profile_keys_per_backend() -> None:
    llama = classify_exit(
        L, 1, fixture_lines("llama-cuda-oom-weights-from-source"), ready_seen=False
    )
    sglang = classify_exit(S, -9, fixture_lines("sglang-cuda-oom-from-source"), ready_seen=True)
    for key in LLAMA_KEYS:
        assert f"server.{key}" in llama.hint, key
    assert "server.mem_fraction_static" in sglang.hint
    watchdog = classify_exit(S, -9, fixture_lines("sglang-watchdog-from-source"), ready_seen=True)
    assert "server.watchdog_timeout" in watchdog.hint


_KEY = re.compile(r"\bserver\.(\w+)")


def test_hints_only_name_keys_of_their_own_backend() -> None:
    llama_only = {"fit_target", "ubatch_size", "n_gpu_layers", "ctx_size", "parallel"}
    sglang_only = {
        "mem_fraction_static",
        "watchdog_timeout",
        "max_running_requests",
        "chunked_prefill_size",
        "attention_backend",
    }
    for rule in RULES:
        keys = set(_KEY.findall(rule.hint))
        if rule.backends == {L}:
            assert not keys & sglang_only, (rule.kind, keys)
        if rule.backends == {S}:
            assert not keys & llama_only, (rule.kind, keys)


def test_sglang_hint_keys_exist_in_its_argparse_table() -> None:
    from infersup.backends.flags import bundled_sglang_table

    table = bundled_sglang_table()
    keys = {k for rule in RULES if rule.backends == {S} for k in _KEY.findall(rule.hint)}
    assert keys  # the table names some
    for key in keys:
        assert table.for_key(key) is not None, key


def test_llama_hint_keys_exist_in_its_help() -> None:
    from infersup.backends.flags import bundled_llama_table

    table = bundled_llama_table()
    keys = {k for rule in RULES if rule.backends == {L} for k in _KEY.findall(rule.hint)}
    assert {"fit_target", "ubatch_size", "ctx_size", "n_gpu_layers"} <= keys
    for key in keys:
        assert table.for_key(key) is not None, key


# --- the supervisor's own causes ----------------------------------------------------------


def test_stalled_cause() -> None:
    cause = stalled_cause(600.4)
    assert (cause.kind, cause.permanent, cause.evidence) == ("stalled", False, None)
    assert cause.summary == (
        "no progress for 600s while starting (no output, no port change); infersup stopped it"
    )
    assert "supervise.startup_timeout_s" in cause.hint


def test_unhealthy_cause() -> None:
    cause = unhealthy_cause(3, "GET /health: timed out after 5s")
    assert (cause.kind, cause.permanent, cause.evidence) == ("unhealthy", False, None)
    assert cause.summary == (
        "health check failed 3 times in a row with no progress "
        "(GET /health: timed out after 5s); infersup restarted it"
    )
    assert "supervise.unhealthy_after" in cause.hint
    assert "supervise.health_timeout_s" in cause.hint
