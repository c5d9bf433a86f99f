"""The validate rules: one small function per trap, each citing the incident behind it.

A rule reads a ``RuleContext`` (profile, launch plan, flags as they will be
passed, optional model facts) and yields ``Hit``s; its id, severity and field
notes reference live in ``RULES``. Thresholds and known-bad values are data
at the top of this module, so a new server build changes a constant, not code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from infersup.profiles.schema import SGLANG
from infersup.validate.engine import Finding, Hit, Rule, RuleContext

# llama-server b11434 defaults (field notes B)
DEFAULT_BATCH: Final = 2048
DEFAULT_UBATCH: Final = 512
# Field notes A8: on CUDA builds that needed GQA ratio % 16 == 0 for flash
# attention, GLM-4.7-Flash's ratio 20 ran attention on the CPU with `-fa on`.
# Ratios seen to fall back; extend as builds are measured.
FA_CUDA_UNSUPPORTED_GQA: Final = frozenset({20.0})
# KV cache types that are not block-quantized (no head size or FA constraint)
KV_FLOAT_TYPES: Final = frozenset({"f32", "f16", "bf16"})
KV_QUANT_BLOCK: Final = 32  # every quantized KV type uses 32-wide blocks
# Field notes C: 0.88 was OOM-killed (exit -9) on 8xB200; 0.85 held.
MEM_FRACTION_MAX: Final = 0.9
EAGLE_ALGORITHMS: Final = frozenset({"EAGLE", "EAGLE3", "NEXTN"})
EXPERT_FLAGS: Final = ("--cpu-moe", "--n-cpu-moe")
PLACEMENT_FLAGS: Final = ("--override-tensor", "--cpu-moe", "--n-cpu-moe", "--tensor-split")


def _fit_on(ctx: RuleContext) -> bool:
    """Fit is on unless the profile turns it off (b11434 default: on)."""
    return ctx.text("--fit") != "off"


def ubatch_size(ctx: RuleContext) -> Iterator[Hit]:
    ub = ctx.get("--ubatch-size")
    ub_n = ctx.number("--ubatch-size")
    if ub is None or ub_n is None:
        return
    batch = ctx.number("--batch-size") or DEFAULT_BATCH
    if ub_n == batch:
        yield Hit(
            ub.key,
            f"ubatch_size {ub_n:g} equals batch_size: the compute buffer grows with the "
            f"physical batch (-ub 512 ~448 MiB, -ub 2048 up to 2.4 GiB on GLM Q8)",
            f"keep ubatch_size at {DEFAULT_UBATCH} (the default) unless you measured a gain",
        )


def ubatch_large(ctx: RuleContext) -> Iterator[Hit]:
    ub = ctx.get("--ubatch-size")
    ub_n = ctx.number("--ubatch-size")
    if ub is None or ub_n is None or ub_n <= DEFAULT_UBATCH:
        return
    if ub_n == (ctx.number("--batch-size") or DEFAULT_BATCH):
        return  # ubatch-equals-batch says it already
    yield Hit(
        ub.key,
        f"ubatch_size {ub_n:g} is above {DEFAULT_UBATCH}: the compute buffer scales with it "
        "and can push the model out of memory",
        f"use {DEFAULT_UBATCH} unless you measured prompt processing gain and have the memory",
    )


def ngl_disables_fit(ctx: RuleContext) -> Iterator[Hit]:
    ngl = ctx.get("--n-gpu-layers")
    if ngl is None or ctx.text("--n-gpu-layers") == "auto" or not _fit_on(ctx):
        return
    yield Hit(
        ngl.key,
        f"n_gpu_layers {ctx.text('--n-gpu-layers')} turns off fit's layer placement: "
        "the server then OOMs instead of offloading (fit is on)",
        "remove n_gpu_layers (or set it to auto) and let fit place layers; "
        "or set `fit: off` to say the count is deliberate",
    )


def placement_disables_fit(ctx: RuleContext) -> Iterator[Hit]:
    if not _fit_on(ctx):
        return
    for flag in PLACEMENT_FLAGS:
        found = ctx.get(flag)
        if found is None or found.value is False:
            continue
        yield Hit(
            found.key,
            f"{ctx.canonical(flag)} with fit on: an explicit placement turns fit's layer "
            "placement off (one warning line in the server log), so fit will not place layers",
            "set `fit: off` and place the rest yourself, or drop the override and let fit work",
        )


def flash_attn_gqa(ctx: RuleContext) -> Iterator[Hit]:
    fa = ctx.get("--flash-attn")
    facts = ctx.facts
    if fa is None or ctx.text("--flash-attn") != "on" or facts is None:
        return
    if facts.gqa_ratio in FA_CUDA_UNSUPPORTED_GQA:
        yield Hit(
            fa.key,
            f"flash_attn on with GQA ratio {facts.gqa_ratio:g}: CUDA flash-attention kernels "
            "without that ratio ran attention on the CPU (6.7 s at 1K tokens, >600 s at 16K)",
            "set flash_attn: auto; the server then disables FA itself and says so in its log",
        )


def _quantized(ctx: RuleContext, flag: str) -> str | None:
    text = ctx.text(flag)
    return text if text is not None and text not in KV_FLOAT_TYPES else None


def kv_v_without_fa(ctx: RuleContext) -> Iterator[Hit]:
    kind = _quantized(ctx, "--cache-type-v")
    found = ctx.get("--cache-type-v")
    if kind is None or found is None or ctx.text("--flash-attn") != "off":
        return
    yield Hit(
        found.key,
        f"cache_type_v {kind} needs flash attention, but flash_attn is off: the server "
        "refuses to start",
        "set flash_attn: auto (or on), or use cache_type_v: f16",
    )


def kv_head_size(ctx: RuleContext) -> Iterator[Hit]:
    facts = ctx.facts
    if facts is None:
        return
    for flag, head in (("--cache-type-k", facts.head_dim_k), ("--cache-type-v", facts.head_dim_v)):
        kind = _quantized(ctx, flag)
        found = ctx.get(flag)
        if kind is None or found is None or head is None or head % KV_QUANT_BLOCK == 0:
            continue
        yield Hit(
            found.key,
            f"{ctx.canonical(flag)} {kind} needs a head size that is a multiple of "
            f"{KV_QUANT_BLOCK}; this model's is {head}: the server fails to create the cache",
            "use f16 (or bf16) for this cache",
        )


def ctx_above_trained(ctx: RuleContext) -> Iterator[Hit]:
    found = ctx.get("--ctx-size")
    size = ctx.number("--ctx-size")
    facts = ctx.facts
    if found is None or size is None or facts is None or facts.ctx_train is None:
        return
    if size > facts.ctx_train:
        yield Hit(
            found.key,
            f"ctx_size {size:g} is above the model's trained context {facts.ctx_train}: "
            "quality degrades past it without rope scaling",
            f"use ctx_size <= {facts.ctx_train} (0 takes it from the model)",
        )


def expert_offload_dense(ctx: RuleContext) -> Iterator[Hit]:
    facts = ctx.facts
    if facts is None or facts.moe_layers > 0:
        return
    for flag in EXPERT_FLAGS:
        found = ctx.get(flag)
        if found is not None and found.value is not False:
            yield _dense_hit(ctx, flag, found.key, facts.arch)
    for found in ctx.all("--override-tensor"):
        if isinstance(found.value, str) and "exps" in found.value:
            yield _dense_hit(ctx, "--override-tensor", found.key, facts.arch)


def _dense_hit(ctx: RuleContext, flag: str, key: str, arch: str) -> Hit:
    return Hit(
        key,
        f"{ctx.canonical(flag)} moves expert tensors, but the model file ({arch}) has no "
        "expert layers: the profile assumes a MoE the metadata does not show",
        "remove the expert offload; check the architecture with `infersup inspect`",
    )


def mem_fraction_high(ctx: RuleContext) -> Iterator[Hit]:
    found = ctx.get("--mem-fraction-static")
    value = ctx.number("--mem-fraction-static")
    if found is None or value is None or value <= MEM_FRACTION_MAX:
        return
    yield Hit(
        found.key,
        f"mem_fraction_static {value:g} leaves too little memory for activations: "
        "0.88 was OOM-killed (exit -9) in production",
        "use 0.85-0.88",
    )


def fp8_kv_eagle(ctx: RuleContext) -> Iterator[Hit]:
    found = ctx.get("--kv-cache-dtype")
    kind = ctx.text("--kv-cache-dtype") or ""
    algo = (ctx.text("--speculative-algorithm") or "").upper()
    if found is None or not kind.startswith("fp8") or algo not in EAGLE_ALGORITHMS:
        return
    yield Hit(
        found.key,
        f"kv_cache_dtype {kind} with {algo} speculative decoding crashed in production "
        "(and FP8 KV was slower)",
        "use kv_cache_dtype: bf16 with EAGLE",
    )


def glm_parsers(ctx: RuleContext) -> Iterator[Hit]:
    if ctx.profile.backend != SGLANG or "glm" not in ctx.profile.model.lower():
        return
    for flag, key, value in (
        ("--tool-call-parser", "server.tool_call_parser", "glm47"),
        ("--reasoning-parser", "server.reasoning_parser", "glm45"),
    ):
        if ctx.get(flag) is None:
            yield Hit(
                key,
                f"GLM model without {flag}: tool calls come back malformed and "
                "reasoning_content stays empty",
                f"set {key.split('.')[-1]}: {value}",
            )


RULES: Final[tuple[Rule, ...]] = (
    Rule("ubatch-equals-batch", "warning", "field-notes A4: -ub = -b OOM by 372 MiB", ubatch_size),
    Rule("ubatch-large", "warning", "field-notes A4: compute buffer scales with -ub", ubatch_large),
    Rule("ngl-disables-fit", "warning", "field-notes A6: N_GPU_LAYERS=99", ngl_disables_fit),
    Rule(
        "placement-disables-fit",
        "warning",
        "field-notes B: explicit -ot/-ts/--cpu-moe turn fit off",
        placement_disables_fit,
    ),
    Rule(
        "flash-attn-gqa",
        "warning",
        "field-notes A8: silent O(n^2) attention",
        flash_attn_gqa,
        needs_facts=True,
    ),
    Rule("kv-v-without-fa", "error", "llama.cpp: V cache quantization needs FA", kv_v_without_fa),
    Rule(
        "kv-head-size",
        "error",
        "field-notes B: quantized KV needs head size >= 32",
        kv_head_size,
        needs_facts=True,
    ),
    Rule(
        "ctx-above-trained",
        "warning",
        "model metadata: context_length",
        ctx_above_trained,
        needs_facts=True,
    ),
    Rule(
        "expert-offload-dense",
        "warning",
        "field-notes A1/A2: architecture from metadata",
        expert_offload_dense,
        needs_facts=True,
    ),
    Rule("mem-fraction-high", "warning", "field-notes C: 0.88 OOM-killed", mem_fraction_high),
    Rule("fp8-kv-eagle", "warning", "field-notes C: FP8 KV with EAGLE crashed", fp8_kv_eagle),
    Rule("glm-parser-missing", "warning", "field-notes C: GLM parsers", glm_parsers),
)

PORT_CLASH_REF: Final = "field-notes B: port in use -> rc 1 within ~20 ms"
_ANY_HOST: Final = frozenset({"0.0.0.0", "::", ""})


def cross_profile_findings(contexts: Sequence[RuleContext]) -> list[Finding]:
    """Profiles that could run together but bind the same port."""
    out: list[Finding] = []
    for ctx in contexts:
        others = [o.profile.id for o in contexts if o is not ctx and _clash(ctx, o)]
        if others:
            out.append(
                Finding(
                    rule="port-clash",
                    severity="warning",
                    file=ctx.file,
                    profile=ctx.profile.id,
                    key="port",
                    message=f"port {ctx.plan.port} is also used by {', '.join(others)}: "
                    "the second server to start exits with 'address in use'",
                    fix="give each profile its own port",
                    ref=PORT_CLASH_REF,
                )
            )
    return out


def _clash(a: RuleContext, b: RuleContext) -> bool:
    if a.plan.port != b.plan.port:
        return False
    hosts_a, hosts_b = _hosts(a.plan.host), _hosts(b.plan.host)
    return bool(hosts_a & hosts_b) or bool((hosts_a | hosts_b) & _ANY_HOST)


def _hosts(host: str) -> set[str]:
    return {h.strip() for h in host.split(",")}


def rule_ids() -> list[str]:
    """Every finding id validate can produce (for docs and the CLI's --help)."""
    engine_ids: Iterable[str] = (
        "schema",
        "flag",
        "duplicate-id",
        "note",
        "model-missing",
        "model-shards-missing",
        "model-unreadable",
        "port-clash",
    )
    return [*engine_ids, *(r.id for r in RULES)]
