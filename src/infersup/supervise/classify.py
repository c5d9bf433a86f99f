"""Why a server exited, and what to do about it: the exit classifier.

``classify_exit`` turns a return code and the last output lines into an
``ExitCause``: a stable ``kind``, a one-line summary, a hint that names the
profile keys to change, whether a restart with the same profile can help
(``permanent``), and the log line that decided it (``evidence``).

The knowledge is a table, ``RULES``: each rule names its backend(s), the
patterns that identify it, and what to say. Patterns come from real server
output (tests/fixtures/serverlogs: llama-server b11434 runs, and strings taken
from the llama.cpp, SGLang, PyTorch and uvicorn sources where no GPU or SGLang
was at hand to produce them).

Precedence, in this order:

1. Status 0 is ``clean`` whatever the log says.
2. The first rule in ``RULES`` (table order, most specific cause first) with a
   pattern that matches any line wins; its patterns are tried in their own
   order, each scanning the newest line first, so ``evidence`` is the most
   telling line (the ``cudaMalloc failed`` line, not the later generic
   "failed to load model" that follows it). Table order encodes what beats
   what: a CUDA out-of-memory line beats "failed to load model" and a generic
   exit 1; an SGLang watchdog line beats its "Received sigquit" line, which
   beats a plain -9/137.
3. No rule matched: the return code decides (``killed``, ``abort``,
   ``terminated``, ``crash-signal``, generic ``exit``). A shell reports a
   process killed by signal N as status 128+N (SGLang under ``sh -c`` exits
   137 after its watchdog), so statuses 129-192 count as that signal.

Rules marked ``before_ready_only`` are skipped once the server was ready:
start errors cannot happen to a running server, and a look-alike line later
(a prompt echoed in a log) must not make a crash look permanent. A cause is
``permanent`` only when its rule says so and the server never got ready.

Permanent (the supervisor goes FATAL at once, no restart loop): an unknown
flag, a bad flag value, a missing or corrupt model, options that cannot make a
context, a port held by another process: the same argv fails the same way
within milliseconds. Memory rules come before the model rules because an
allocation failure at load ends in the same "failed to load model" lines.
Out of memory at load (CUDA or host) is NOT permanent, though usually deterministic:
GPU and host memory are shared with other processes (a previous instance
still releasing its memory, a display, another job), so a retry after backoff
can succeed, and the supervisor's crash-loop limit turns a repeat into FATAL
after a few tries, with this cause's hint. A plain exit 1 with no known line
is a crash, restarted with backoff (reliability row 1).

Kinds (stable ids):

- ``clean``: status 0.
- ``bad-flag``: the server does not know a flag (renamed, removed, misspelt).
- ``bad-value``: a flag's value was rejected, or a required flag is missing.
- ``port-in-use``: the HTTP port could not be bound.
- ``model-missing``: the model file / directory / hub id does not exist.
- ``model-load-failed``: the model exists but could not be loaded (truncated,
  not a GGUF, unknown architecture).
- ``context-failed``: the model loaded but no context could be created with
  these options (a quantized V cache without flash attention).
- ``cuda-oom``: GPU memory ran out (at load or while serving).
- ``no-kv-cache-memory``: SGLang had no GPU memory left for the KV cache.
- ``host-oom``: host memory ran out while allocating buffers.
- ``illegal-memory-access``: a GPU kernel faulted (a server bug).
- ``cuda-error``: any other CUDA error.
- ``watchdog``: SGLang's watchdog stopped a stalled forward batch.
- ``nccl-timeout``: PyTorch's NCCL watchdog aborted a collective that hung.
- ``abort``: a failed assertion / uncaught C++ exception, or SIGABRT.
- ``child-failed``: an SGLang worker process failed and the server stopped.
- ``killed``: SIGKILL (-9 / 137) with no other clue: out of memory or a watchdog.
- ``terminated``: SIGTERM / SIGINT / SIGHUP from outside.
- ``crash-signal``: any other fatal signal (SIGSEGV, SIGBUS, SIGILL...).
- ``exit``: a nonzero status with no known line.
- ``stalled``: infersup stopped a start that made no progress (``stalled_cause``).
- ``unhealthy``: infersup restarted a server that stopped answering (``unhealthy_cause``).
- ``spawn-failed``: the server could not be started at all (made by the supervisor).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

LLAMA_CPP: Final = "llama.cpp"
SGLANG: Final = "sglang"
_BOTH: Final = frozenset({LLAMA_CPP, SGLANG})
_LLAMA: Final = frozenset({LLAMA_CPP})
_SGLANG: Final = frozenset({SGLANG})


@dataclass(frozen=True)
class ExitCause:
    kind: str  # stable id, see the module docstring
    summary: str  # one line for humans
    hint: str  # what to do, naming profile keys
    permanent: bool  # restarting with the same profile cannot help -> FATAL at once
    evidence: str | None = None  # the log line that decided it, if any


@dataclass(frozen=True)
class Rule:
    """One known cause: the lines that identify it and what to say about it."""

    kind: str
    backends: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]  # tried in order; each scans newest line first
    summary: str
    hint: str
    permanent: bool = False
    before_ready_only: bool = False
    # Where the matched line only says "something failed" (SGLang's "Received
    # sigquit from a child process", "Scheduler hit an exception: Traceback"),
    # the newest line matching this is the evidence instead, if there is one:
    # the exception line that ends the worker's traceback.
    evidence_prefer: re.Pattern[str] | None = None


def _rule(
    kind: str,
    backends: frozenset[str],
    patterns: tuple[str, ...],
    summary: str,
    hint: str,
    *,
    permanent: bool = False,
    before_ready_only: bool = False,
    evidence_prefer: str | None = None,
) -> Rule:
    return Rule(
        kind=kind,
        backends=backends,
        patterns=tuple(re.compile(p) for p in patterns),
        summary=summary,
        hint=hint,
        permanent=permanent,
        before_ready_only=before_ready_only,
        evidence_prefer=re.compile(evidence_prefer) if evidence_prefer else None,
    )


# A Python exception line ending a traceback: "torch.OutOfMemoryError: ...",
# "zmq.error.ZMQError: ...", "RuntimeError: ...".
_PY_EXCEPTION = r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)(?::|$)"

_LLAMA_OOM_HINT = (
    "GPU memory ran out. Leave server.n_gpu_layers at auto (an explicit count turns fit off, "
    "which then OOMs instead of offloading); raise server.fit_target (MiB fit leaves free per "
    "device, one value per GPU when they differ); lower server.ubatch_size (the compute "
    "buffer scales with it: ~0.45 GiB at 512, up to 2.4 GiB at 2048 on a 30B MoE); lower "
    "server.ctx_size or quantize the KV cache (cache_type_k / cache_type_v: q8_0). Check with "
    "nvidia-smi that no other process holds GPU memory."
)
_SGLANG_OOM_HINT = (
    "GPU memory ran out. Lower server.mem_fraction_static (e.g. 0.88 -> 0.85) to leave more "
    "room for activations and CUDA graphs, or lower server.max_running_requests, "
    "server.chunked_prefill_size or server.cuda_graph_max_bs_decode. Check with nvidia-smi "
    "that no other process (a previous instance's workers) holds GPU memory."
)

RULES: Final[tuple[Rule, ...]] = (
    # --- start errors: permanent, only before READY -------------------------------------
    _rule(
        "bad-flag",
        _LLAMA,
        (r"error: invalid argument: ", r"option '[^']*' not recognized in preset"),
        "llama-server does not know a command-line flag",
        "Check the flag against `llama-server --help` of this build: fix the server key or "
        "extra_args entry in the profile (flags are renamed between builds).",
        permanent=True,
        before_ready_only=True,
    ),
    _rule(
        "bad-flag",
        _SGLANG,
        (r": error: unrecognized arguments: ", r": error: ambiguous option: "),
        "SGLang does not know a command-line flag",
        "Check the flag against `python -m sglang.launch_server --help` of this version and fix "
        "the server key or extra_args entry (e.g. --nsa-*-backend became --dsa-*-backend; the "
        "old names were removed in 0.5.20).",
        permanent=True,
        before_ready_only=True,
    ),
    _rule(
        "bad-value",
        _LLAMA,
        (r'error while handling (?:argument|environment variable) "',),
        "llama-server rejected a flag's value",
        "Fix the value of that flag in the profile (a server key, extra_args, or an "
        "LLAMA_ARG_* variable in env): the evidence line names the flag.",
        permanent=True,
        before_ready_only=True,
    ),
    _rule(
        "bad-value",
        _SGLANG,
        (r": error: argument \S+: ", r": error: the following arguments are required: "),
        "SGLang rejected a flag's value, or a required flag is missing",
        "Fix the value of that flag in the profile (a server key or extra_args): the evidence "
        "line names the flag and the accepted values.",
        permanent=True,
        before_ready_only=True,
    ),
    _rule(
        "port-in-use",
        _LLAMA,
        (r"couldn't bind HTTP server socket",),
        "cannot listen on the HTTP port (another process holds it, or it needs privileges)",
        "Find the holder (`ss -ltnp`) and stop it, or give the profile another port. A port "
        "below 1024 needs privileges.",
        permanent=True,
        before_ready_only=True,
    ),
    _rule(
        "port-in-use",
        _SGLANG,
        (r"error while attempting to bind on address .*: address already in use",),
        "cannot listen on the HTTP port: another process holds it",
        "Find the holder (`ss -ltnp`) and stop it, or give the profile another port. SGLang "
        "binds only after loading the weights, so check the port before a long start.",
        permanent=True,
        before_ready_only=True,
    ),
    _rule(
        "model-missing",
        _LLAMA,
        (r"failed to open GGUF file",),
        "cannot open the model file",
        "Check the profile's model path (and the models directory): the file is missing or "
        "unreadable. For a split model name the first shard (-00001-of-0000N.gguf) and keep "
        "every shard beside it.",
        permanent=True,
        before_ready_only=True,
    ),
    _rule(
        "model-missing",
        _SGLANG,
        (
            r"Incorrect path_or_model_id: ",
            r"is not a local folder and is not a valid model identifier",
            r"Repo id must be in the form 'repo_name' or 'namespace/repo_name'",
        ),
        "the model path is neither a local directory nor a Hugging Face model id",
        "Check the profile's model: a local directory must exist (with config.json and every "
        "weight shard); anything else is looked up on the Hugging Face Hub.",
        permanent=True,
        before_ready_only=True,
    ),
    # --- memory: before "failed to load model", which follows an allocation failure ------
    _rule(
        "cuda-oom",
        _LLAMA,
        (
            r"cudaMalloc failed: out of memory",
            r"(?:CUDA|ROCm|MUSA) error: out of memory",
            r"(?:failed|unable) to allocate (?:CUDA|ROCm|MUSA)\d+ buffer",
        ),
        "out of GPU memory",
        _LLAMA_OOM_HINT,
    ),
    _rule(
        "cuda-oom",
        _SGLANG,
        (r"CUDA out of memory", r"CUDA error: out of memory", r"OutOfMemoryError"),
        "out of GPU memory",
        _SGLANG_OOM_HINT,
    ),
    _rule(
        "no-kv-cache-memory",
        _SGLANG,
        (r"Not enough memory\. Please try to increase --mem-fraction-static",),
        "no GPU memory left for the KV cache after loading the weights",
        "Raise server.mem_fraction_static (the share of GPU memory for weights and KV cache), "
        "spread the model over more GPUs (tp_size), or use a smaller or quantized model. Check "
        "with nvidia-smi that no other process holds GPU memory.",
    ),
    _rule(
        "host-oom",
        _LLAMA,
        (
            r"insufficient memory \(attempted to allocate",
            r"failed to allocate CPU buffer",
            r"std::bad_alloc",
            r"failed to allocate buffer for kv cache",
        ),
        "out of host memory (RAM) while allocating the server's buffers",
        "The KV cache for the whole context is allocated at start: lower server.ctx_size, "
        "quantize the KV cache (cache_type_k / cache_type_v: q8_0) or lower server.parallel; "
        "with a GPU, lower server.fit_target so fit keeps more on the GPU. Check the memory "
        "limit of the container or ulimit -v.",
    ),
    # --- GPU faults -----------------------------------------------------------------------
    _rule(
        "illegal-memory-access",
        _LLAMA,
        (r"illegal memory access",),
        "a GPU kernel made an illegal memory access (a server bug, not a memory shortage)",
        "Seen after upgrades, only for prompts over ~100 tokens with multi-GPU override_tensor "
        "splits, and at exact length boundaries. Try the previous llama.cpp build, "
        "flash_attn: off, or another split_mode; smoke-test short AND long prompts after every "
        "upgrade; report it upstream with the log.",
    ),
    _rule(
        "illegal-memory-access",
        _SGLANG,
        (r"illegal memory access",),
        "a GPU kernel made an illegal memory access (a server bug, not a memory shortage)",
        "Try another server.attention_backend, server.disable_decode_cuda_graph, or run without "
        "speculative decoding or an FP8 KV cache (kv_cache_dtype: auto); inputs exactly at "
        "chunked_prefill_size have crashed servers. Report it upstream with the log.",
    ),
    _rule(
        "cuda-error",
        _BOTH,
        (r"(?:CUDA|ROCm|MUSA) error: ",),
        "CUDA error",
        "Read the evidence line: 'no kernel image is available' = the binary was built for "
        "another GPU architecture; 'driver version is insufficient' = update the driver; "
        "'busy or unavailable' = the GPU is exclusive or held by another process.",
    ),
    # --- the model or its context could not be set up: permanent, only before READY ----
    _rule(
        "context-failed",
        _LLAMA,
        (r"llama_init_from_model: ", r"failed to create_?context with model"),
        "the model loaded, but llama.cpp could not create a context with these options",
        "The evidence line names the conflict (e.g. a quantized V cache needs flash_attn on): "
        "change the server keys it names.",
        permanent=True,
        before_ready_only=True,
    ),
    _rule(
        "model-load-failed",
        _LLAMA,
        (
            r"gguf_init_from_\w+: ",
            r"error loading model: ",
            r"failed to load model",
            r"exiting due to model loading error",
        ),
        "the model file could not be loaded (truncated, not a GGUF, or unsupported)",
        "Check the file: a partial download or copy is cut short (compare its size with the "
        "source, every shard of a split model), a non-GGUF file or an architecture this build "
        "does not know fails the same way on every start. Re-download it or update llama.cpp.",
        permanent=True,
        before_ready_only=True,
    ),
    # --- SGLang's own failure paths (they end in SIGKILL: -9, or 137 under a shell) --------
    _rule(
        "watchdog",
        _SGLANG,
        (r"(?i)watchdog timeout \(self\.watchdog_timeout=",),
        "SGLang's watchdog stopped the server: a forward batch made no progress",
        "If batches are legitimately this slow (a huge prefill, first-time kernel compilation, "
        "a slow interconnect), raise server.watchdog_timeout (default 300 s; 1200 is used in "
        "production for large MoE models). Otherwise a GPU or a collective hung: read the "
        "py-spy dump above the line; an NCCL hang often follows another rank's crash.",
    ),
    _rule(
        "nccl-timeout",
        _SGLANG,
        (r"Watchdog caught collective operation timeout",),
        "a collective operation between GPUs timed out (PyTorch's NCCL watchdog aborted)",
        "One rank crashed or hung first (look above for its error), or the interconnect "
        "failed. Check the GPUs' links (nvidia-smi topo -m) and run once with NCCL_DEBUG=INFO "
        "in the profile's env.",
    ),
    _rule(
        "abort",
        _LLAMA,
        (
            r"GGML_ASSERT\(.*\) failed",
            r"terminate called after throwing an instance of",
            r"^/\S+\.(?:c|cc|cpp|cu|cuh|h|hpp):\d+: \S",
        ),
        "aborted: an internal check of llama.cpp failed",
        "Usually a bug or an option this model does not support: note the assertion and what "
        "the profile changes from the defaults, try without the latest profile changes or with "
        "another build, and report it upstream with the log.",
    ),
    _rule(
        "abort",
        _SGLANG,
        (r"terminate called after throwing an instance of",),
        "aborted: an uncaught C++ exception in a native extension",
        "The lines above name the exception; try without the latest profile changes, and "
        "report it upstream with the log.",
    ),
    _rule(
        "child-failed",
        _SGLANG,
        (r"\b\w+ hit an exception", r"Received sigquit from a child process"),
        "an SGLang worker process failed, and the server stopped its whole process tree",
        "The worker's traceback is above (its last line names the error). A ZMQ or NCCL "
        "'Address already in use' is a port race between instances: a restart usually works; "
        "errors about the model or its options repeat on every start: fix the profile.",
        evidence_prefer=_PY_EXCEPTION,
    ),
)

# Rules with a status fallback: no line matched, the return code decides.
_KILLED_HINT: Final = {
    LLAMA_CPP: (
        "If the kernel OOM killer sent it (`dmesg` / `journalctl -k`: 'Out of memory: Killed "
        "process'), use less host memory: lower server.ctx_size or server.ubatch_size, quantize "
        "the KV cache (cache_type_k / cache_type_v: q8_0), or lower server.fit_target so fit "
        "keeps more layers on the GPU. Otherwise a container limit, a platform watchdog or a "
        "user sent SIGKILL."
    ),
    SGLANG: (
        "SGLang's watchdog and its worker-failure path end in SIGKILL too: look above for "
        "'watchdog timeout' or 'hit an exception'. If the kernel OOM killer sent it (`dmesg`), "
        "lower server.mem_fraction_static (0.88 -> 0.85 in production after OOM kills) or "
        "server.max_running_requests; if a long forward batch was killed, raise "
        "server.watchdog_timeout."
    ),
}
_ABORT_HINT: Final = {
    LLAMA_CPP: (
        "No assertion line in the last lines: look further up the server log for GGML_ASSERT "
        "or an 'E ' line, or run once with verbosity raised (extra_args: ['-lv', '4'])."
    ),
    SGLANG: "Look further up the server log for the error that preceded the abort.",
}
_EXIT_HINT: Final = {
    LLAMA_CPP: (
        "No known cause in the last lines; it is restarted with backoff. Look in the server "
        "log for the first 'E ' line."
    ),
    SGLANG: (
        "No known cause in the last lines; it is restarted with backoff. Status 1 is usually "
        "an uncaught Python exception (read the traceback in the server log), status 2 a "
        "command-line error from argparse."
    ),
}
_SIGNAL_HINTS: Final = {
    signal.SIGSEGV: (
        "A crash in native code (a server or driver bug): try the previous server build or "
        "without the latest profile changes, and report it upstream with the log."
    ),
    signal.SIGBUS: (
        "A memory-mapped file went away under the server: usually the model file was "
        "overwritten or truncated while it was being served, or its disk failed."
    ),
    signal.SIGILL: (
        "The binary uses CPU instructions this machine lacks: rebuild it for this CPU (for "
        "llama.cpp, GGML_NATIVE=OFF for a portable build)."
    ),
}
_TERMINATING: Final = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def signal_of(returncode: int) -> signal.Signals | None:
    """The signal that ended the process: -N from subprocess, or 128+N from a shell."""
    if returncode < 0:
        number = -returncode
    elif 128 < returncode <= 128 + 64:
        number = returncode - 128
    else:
        return None
    try:
        return signal.Signals(number)
    except ValueError:
        return None


def describe_status(returncode: int) -> str:
    """``killed by SIGKILL (status 137)`` or ``exit status 1``."""
    sig = signal_of(returncode)
    if sig is None:
        return f"exit status {returncode}"
    return f"killed by {sig.name} (status {128 + sig.value})"


def _newest(pattern: re.Pattern[str], lines: Sequence[str]) -> str | None:
    for line in reversed(lines):
        if pattern.search(line):
            return line.rstrip()
    return None


def _first_match(rule: Rule, lines: Sequence[str]) -> str | None:
    for pattern in rule.patterns:
        found = _newest(pattern, lines)
        if found is not None:
            if rule.evidence_prefer is not None:
                return _newest(rule.evidence_prefer, lines) or found
            return found
    return None


def classify_exit(
    backend: str, returncode: int, lines: Sequence[str], *, ready_seen: bool
) -> ExitCause:
    """Say why the server exited and what to do, from its status and its last output lines.

    ``backend`` is "llama.cpp" or "sglang"; ``returncode`` as subprocess gives it
    (negative = killed by that signal); ``lines`` are the last lines, newest last.
    """
    status = describe_status(returncode)
    if returncode == 0:
        summary = "exited with status 0" + ("" if ready_seen else " before it was ready")
        return ExitCause("clean", summary, "", permanent=False)
    for rule in RULES:
        if backend not in rule.backends or (rule.before_ready_only and ready_seen):
            continue
        evidence = _first_match(rule, lines)
        if evidence is not None:
            return ExitCause(
                kind=rule.kind,
                summary=f"{rule.summary} ({status})",
                hint=rule.hint,
                permanent=rule.permanent and not ready_seen,
                evidence=evidence,
            )
    return _by_status(backend, returncode, status)


def _by_status(backend: str, returncode: int, status: str) -> ExitCause:
    sig = signal_of(returncode)
    if sig is signal.SIGKILL:
        return ExitCause(
            "killed", f"{status}: out of memory or a watchdog", _KILLED_HINT[backend], False
        )
    if sig is signal.SIGABRT:
        return ExitCause("abort", f"{status}: the server aborted", _ABORT_HINT[backend], False)
    if sig in _TERMINATING:
        return ExitCause(
            "terminated",
            f"{status}: stopped from outside infersup",
            "Something else (a user, systemd, a container runtime) asked the server to stop; "
            "use `infersup stop` to stop a supervised server.",
            False,
        )
    if sig is not None:
        hint = _SIGNAL_HINTS.get(sig, "A fatal signal: report it upstream with the log.")
        return ExitCause("crash-signal", f"{status}: the server crashed", hint, False)
    return ExitCause(
        "exit", f"{status} with no known cause in the last lines", _EXIT_HINT[backend], False
    )


def stalled_cause(seconds: float) -> ExitCause:
    """infersup stopped a start that showed no progress (no output, no port change)."""
    return ExitCause(
        kind="stalled",
        summary=f"no progress for {seconds:.0f}s while starting (no output, no port change); "
        "infersup stopped it",
        hint="If the load is slow and silent (a large model from a slow disk or network, "
        "SGLang compiling kernels), raise supervise.startup_timeout_s; otherwise the server hung "
        "while starting: its last lines show where.",
        permanent=False,
    )


def unhealthy_cause(failures: int, detail: str) -> ExitCause:
    """infersup restarted a server whose health probe failed ``failures`` times without progress."""
    return ExitCause(
        kind="unhealthy",
        summary=f"health check failed {failures} times in a row with no progress ({detail}); "
        "infersup restarted it",
        hint="A hung server (a deadlock, a stuck GPU, a stopped process) is restarted. If it was "
        "only busy (long prompts, SGLang's /health generating under load), raise "
        "supervise.unhealthy_after or supervise.health_timeout_s.",
        permanent=False,
    )
