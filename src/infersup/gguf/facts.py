"""Model facts derived from GGUF headers: what `infersup inspect` reports and planning uses.

Architecture facts come from the file's metadata and tensor table, never from
its name (field notes A1: a 30B-A3B MoE configured as dense). Sizes are the
real byte sizes of every shard (A3), and every shard of a split model must be
present and complete (A10). Only headers are read (see ``reader``), so the
cost does not grow with the model's size.

Conventions:

- A layer is MoE when it has routed-expert tensors (``*_exps``) or a router
  (``ffn_gate_inp``); every other layer counts as dense.
- Expert bytes are the tensors llama.cpp's ``--cpu-moe`` moves, i.e. names
  matching its ``LLM_FFN_EXPS_REGEX`` ``\\.ffn_(up|down|gate|gate_up)_(ch|)exps``.
  Shared experts (``*_shexp``) and routers are non-expert: they run for every
  token.
- ``output_bytes`` is the output projection as llama.cpp uses it:
  ``output.weight``, or ``token_embd.weight`` when the file has no
  ``output.weight`` (``tied_embeddings``; llama.cpp then loads token_embd a
  second time as the output layer). So ``expert + non_expert + output ==
  tensor_bytes`` for untied models, and ``expert + non_expert == tensor_bytes``
  for tied ones (token_embd counted once, as non-expert).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from infersup.errors import UsageError
from infersup.gguf.reader import (
    GGMLType,
    GGUFError,
    GGUFHeader,
    MetaValue,
    SkippedArray,
    ggml_type_by_name,
    read_header,
    row_bytes,
)
from infersup.models import model_files

__all__ = ["KV_CACHE_TYPES", "ModelFacts", "ShardInfo", "facts_from_headers", "inspect_model"]

# llama-server's --cache-type-k/-v choices (common/arg.cpp kv_cache_types, b11434)
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

EXPERT_TENSOR = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")  # LLM_FFN_EXPS_REGEX
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ShardInfo:
    """One file of the model: its real size (stat) and what its header lists."""

    path: Path
    size: int
    n_tensors: int
    tensor_bytes: int


@dataclass(frozen=True)
class ModelFacts:
    """What a GGUF model is, from its headers. None: the metadata does not say."""

    path: Path
    shards: tuple[ShardInfo, ...]
    total_size: int  # sum of the shards' real file sizes
    arch: str
    name: str | None
    params: int  # sum of every tensor's element count
    n_layers: int  # {arch}.block_count (nextn/MTP layers included, as in the file)
    moe_layers: int
    dense_layers: int
    n_experts: int | None
    n_experts_used: int | None
    n_experts_shared: int | None
    n_heads: int | tuple[int, ...] | None  # a tuple when the file gives one per layer
    n_kv_heads: int | tuple[int, ...] | None  # defaults to n_heads, as in llama.cpp
    gqa_ratio: float | None  # n_heads / n_kv_heads when the same in every attention layer
    head_dim_k: int | None  # key_length, else n_embd / n_heads
    head_dim_v: int | None  # value_length, else n_embd / n_heads
    ctx_train: int | None
    quant_mix: Mapping[str, int]  # bytes per ggml type name, largest first
    expert_bytes: int
    non_expert_bytes: int
    output_bytes: int
    tensor_bytes: int  # sum of all tensors' data bytes
    tied_embeddings: bool
    n_embd: int | None
    n_vocab: int | None
    leading_dense_layers: int | None  # {arch}.leading_dense_block_count
    nextn_layers: int  # {arch}.nextn_predict_layers: MTP layers, which hold no main KV cache
    is_mla: bool  # multi-head latent attention (key_length_mla / value_length_mla set)
    kv_lora_rank: int | None
    head_dim_k_mla: int | None
    head_dim_v_mla: int | None
    full_attention_interval: int | None  # hybrid models: every Nth layer has attention
    sliding_window: int | None
    file_type: int | None  # general.file_type (llama_ftype)

    def kv_layer_heads(self) -> tuple[int, ...]:
        """KV heads of each layer that holds a KV cache entry (0: the layer holds none).

        Mirrors llama.cpp b11434: nextn (MTP) layers are filtered out of the main
        context's cache; with ``full_attention_interval`` N only layers with
        ``(il + 1) % N == 0`` have attention; a per-layer ``head_count_kv`` of 0
        marks a recurrent layer.
        """
        n = max(self.n_layers - self.nextn_layers, 0)
        heads = self.n_kv_heads
        if heads is None:
            return (0,) * n
        per_layer = heads if isinstance(heads, tuple) else (heads,) * n
        out = []
        for il in range(n):
            h = per_layer[il] if il < len(per_layer) else 0
            interval = self.full_attention_interval
            if interval and (il + 1) % interval:
                h = 0
            out.append(h)
        return tuple(out)

    def kv_bytes_per_token(self, cache_type_k: str = "f16", cache_type_v: str = "f16") -> int:
        """KV-cache bytes one token (one cell) takes, summed over layers: K plus V.

        Per layer with KV: ``n_kv_heads * head_dim_k`` elements of the K type plus
        ``n_kv_heads * head_dim_v`` of the V type, each rounded as ggml rows are.
        With MLA (deepseek2 and others with ``key_length_mla``) llama.cpp b11434
        caches only the compressed latent: K rows of ``key_length``
        (= kv_lora_rank + rope dims) and no V at all (V is read back out of K).
        Sliding-window layers are counted as full-attention layers: for SWA
        models this is an upper bound. The server's total is this times its cell
        count (the context size with the default unified cache; it logs both).

        Raises UsageError where llama-server b11434 would refuse the context: a
        cache type it does not accept; a quantized type whose block (32) does not
        divide the K or V head size (field notes B: quantized KV caches need head
        size >= 32; the server checks this with flash attention on or auto, which
        a quantized V cache needs anyway); different K and V types on an MLA model.
        """
        k, v = self.kv_bytes_per_token_kv(cache_type_k, cache_type_v)
        return k + v

    def kv_bytes_per_token_kv(
        self, cache_type_k: str = "f16", cache_type_v: str = "f16"
    ) -> tuple[int, int]:
        """``kv_bytes_per_token`` as (K bytes, V bytes), as llama-server's log splits it."""
        k_type = _cache_type(cache_type_k, "cache_type_k")
        v_type = _cache_type(cache_type_v, "cache_type_v")
        heads = self.kv_layer_heads()
        if not any(heads) or self.head_dim_k is None or self.head_dim_v is None:
            return 0, 0
        if self.is_mla and k_type != v_type:
            raise UsageError(
                f"this model uses MLA: llama-server needs the same K and V cache types, "
                f"got {cache_type_k} and {cache_type_v}"
            )
        _check_head(k_type, self.head_dim_k, "K")
        _check_head(v_type, self.head_dim_v, "V")
        k = sum(row_bytes(k_type, h * self.head_dim_k) for h in heads if h)
        v = 0 if self.is_mla else sum(row_bytes(v_type, h * self.head_dim_v) for h in heads if h)
        return k, v

    @property
    def is_moe(self) -> bool:
        return self.moe_layers > 0

    def to_json(self, cache_type_k: str = "f16", cache_type_v: str = "f16") -> dict[str, object]:
        """Every field under its own name (paths as strings, tuples as lists), plus
        ``kv_cache``: the cache types and the bytes per token they take (total, K, V)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "shards":
                value = [
                    {
                        "path": str(s.path),
                        "size": s.size,
                        "n_tensors": s.n_tensors,
                        "tensor_bytes": s.tensor_bytes,
                    }
                    for s in self.shards
                ]
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        k, v = self.kv_bytes_per_token_kv(cache_type_k, cache_type_v)
        out["kv_cache"] = {
            "type_k": cache_type_k,
            "type_v": cache_type_v,
            "bytes_per_token": k + v,
            "k_bytes_per_token": k,
            "v_bytes_per_token": v,
        }
        return out


def _cache_type(name: str, option: str) -> GGMLType:
    if name.lower() not in KV_CACHE_TYPES:
        raise UsageError(
            f"{option}: unknown KV cache type {name!r}",
            hint=f"llama-server accepts {', '.join(KV_CACHE_TYPES)}",
        )
    return ggml_type_by_name(name)


def _check_head(gtype: GGMLType, head_dim: int, which: str) -> None:
    if head_dim % gtype.block_size:
        raise UsageError(
            f"{which} cache type {gtype.name.lower()} needs a head size that is a multiple "
            f"of its block size {gtype.block_size}; this model's {which} head size is {head_dim}",
            hint="use f16, bf16 or f32 for this model's cache",
        )


def inspect_model(path: Path) -> ModelFacts:
    """Read the headers of a GGUF model (a file, or the first shard of a split one).

    Every shard is found from the first one's name. Every missing or truncated
    shard, and any shard whose ``split.*`` keys disagree with the set, is a
    GGUFError naming it (all of them in one message). Paths in the facts and
    errors are absolute (not resolved: a symlink keeps the name it was given),
    so the same model reads the same whether named relatively or not.
    """
    path = Path(path).absolute()
    files = model_files(path)
    if files.problem is not None:
        raise GGUFError(path, files.problem)
    if len(files.shards) == 1:
        header = read_header(files.shards[0].path)
        count = header.metadata.get("split.count", 1)
        if count != 1:
            no = _int(header.metadata.get("split.no"))
            raise GGUFError(
                path,
                f"the header says this is shard {'?' if no is None else no + 1} of {count} "
                f"(split.no {no}, split.count {count}), but the name has no "
                f"-0000N-of-{count:05}.gguf suffix"
                if isinstance(count, int)
                else f"corrupt split.count {count!r}",
                hint="keep the shard names llama-gguf-split gave them; llama-server finds "
                "the other shards by name",
            )
        return facts_from_headers([header])

    headers: list[GGUFHeader] = []
    problems: list[str] = []
    for shard in files.shards:
        if shard.size is None:
            problems.append(f"{shard.path}: missing")
            continue
        try:
            headers.append(read_header(shard.path))
        except GGUFError as err:
            problems.append(err.message)
    if not problems:
        problems = _split_problems(headers)
    if problems:
        raise GGUFError(
            path,
            f"split model unusable, {len(problems)} of {len(files.shards)} shards "
            "missing or damaged:\n  " + "\n  ".join(problems),
            hint="a partial download or copy: fetch the shards named above again",
        )
    return facts_from_headers(headers)


def _split_problems(headers: list[GGUFHeader]) -> list[str]:
    """Shards whose ``split.no``/``split.count``/``split.tensors.count`` disagree with the set."""
    problems = []
    for i, h in enumerate(headers):
        no, count = h.metadata.get("split.no"), h.metadata.get("split.count")
        if count != len(headers):
            problems.append(
                f"{h.path}: split.count is {count}, expected {len(headers)} "
                "(a shard of a different split?)"
            )
        elif no != i:
            problems.append(f"{h.path}: split.no is {no}, expected {i} (a misnamed shard?)")
    declared = headers[0].metadata.get("split.tensors.count")
    found = sum(len(h.tensors) for h in headers)
    if not problems and declared is not None and declared != found:
        problems.append(
            f"{headers[0].path}: split.tensors.count is {declared}, "
            f"but the shards list {found} tensors"
        )
    return problems


def facts_from_headers(headers: list[GGUFHeader]) -> ModelFacts:
    """Derive ModelFacts from the headers of a model's shards (in order; first has metadata)."""
    meta = headers[0].metadata
    arch = _str(meta.get("general.architecture")) or "unknown"

    def key(suffix: str) -> MetaValue | None:
        return meta.get(f"{arch}.{suffix}")

    tensors = [t for h in headers for t in h.tensors]
    n_embd = _int(key("embedding_length"))
    n_heads = _per_layer(key("attention.head_count"))
    kv_raw = key("attention.head_count_kv")
    n_kv_heads = _per_layer(kv_raw) if kv_raw is not None else n_heads
    first_heads = _first(n_heads)

    head_k = _int(key("attention.key_length"))
    head_v = _int(key("attention.value_length"))
    if n_embd and first_heads:
        head_k = head_k if head_k is not None else n_embd // first_heads
        head_v = head_v if head_v is not None else n_embd // first_heads
    k_mla = _int(key("attention.key_length_mla"))
    v_mla = _int(key("attention.value_length_mla"))

    layer_moe: dict[int, bool] = {}
    for t in tensors:
        m = _LAYER.match(t.name)
        if m is None:
            continue
        il = int(m.group(1))
        is_moe = "_exps" in t.name or ".ffn_gate_inp." in t.name
        layer_moe[il] = layer_moe.get(il, False) or is_moe
    n_layers = _int(key("block_count"))
    if n_layers is None:
        n_layers = max(layer_moe, default=-1) + 1
    moe_layers = sum(1 for il, moe in layer_moe.items() if moe and il < n_layers)

    quant: dict[str, int] = {}
    expert = output = 0
    for t in tensors:
        quant[t.type_name] = quant.get(t.type_name, 0) + t.n_bytes
        if EXPERT_TENSOR.search(t.name):
            expert += t.n_bytes
    by_name = {t.name: t for t in tensors}
    tensor_bytes = sum(t.n_bytes for t in tensors)
    out_t = by_name.get("output.weight")
    tied = out_t is None and "token_embd.weight" in by_name
    if out_t is not None:
        output = out_t.n_bytes
    elif tied:
        output = by_name["token_embd.weight"].n_bytes
    non_expert = tensor_bytes - expert - (out_t.n_bytes if out_t is not None else 0)

    n_vocab = _int(key("vocab_size"))
    if n_vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if isinstance(tokens, tuple | SkippedArray) else None

    return ModelFacts(
        path=headers[0].path,
        shards=tuple(
            ShardInfo(h.path, h.file_size, len(h.tensors), sum(t.n_bytes for t in h.tensors))
            for h in headers
        ),
        total_size=sum(h.file_size for h in headers),
        arch=arch,
        name=_str(meta.get("general.name")),
        params=sum(t.n_elements for t in tensors),
        n_layers=n_layers,
        moe_layers=moe_layers,
        dense_layers=n_layers - moe_layers,
        n_experts=_int(key("expert_count")),
        n_experts_used=_int(key("expert_used_count")),
        n_experts_shared=_int(key("expert_shared_count")),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        gqa_ratio=_gqa(n_heads, n_kv_heads, n_layers),
        head_dim_k=head_k,
        head_dim_v=head_v,
        ctx_train=_int(key("context_length")),
        quant_mix=dict(sorted(quant.items(), key=lambda kv: (-kv[1], kv[0]))),
        expert_bytes=expert,
        non_expert_bytes=non_expert,
        output_bytes=output,
        tensor_bytes=tensor_bytes,
        tied_embeddings=tied,
        n_embd=n_embd,
        n_vocab=n_vocab,
        leading_dense_layers=_int(key("leading_dense_block_count")),
        nextn_layers=_int(key("nextn_predict_layers")) or 0,
        is_mla=bool(k_mla and v_mla),
        kv_lora_rank=_int(key("attention.kv_lora_rank")),
        head_dim_k_mla=k_mla,
        head_dim_v_mla=v_mla,
        full_attention_interval=_int(key("full_attention_interval")),
        sliding_window=_int(key("attention.sliding_window")),
        file_type=_int(meta.get("general.file_type")),
    )


def _int(value: MetaValue | None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _str(value: MetaValue | None) -> str | None:
    return value if isinstance(value, str) else None


def _per_layer(value: MetaValue | None) -> int | tuple[int, ...] | None:
    """A scalar, or a per-layer tuple (collapsed to a scalar when all layers agree)."""
    if isinstance(value, tuple):
        ints = tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))
        if not ints or len(ints) != len(value):
            return None
        return ints[0] if len(set(ints)) == 1 else ints
    return _int(value)


def _first(value: int | tuple[int, ...] | None) -> int | None:
    # llama.cpp's n_head() is layer 0's count
    return value[0] if isinstance(value, tuple) else value


def _gqa(
    heads: int | tuple[int, ...] | None, kv: int | tuple[int, ...] | None, n_layers: int
) -> float | None:
    if heads is None or kv is None:
        return None
    h = heads if isinstance(heads, tuple) else (heads,) * max(n_layers, 1)
    k = kv if isinstance(kv, tuple) else (kv,) * max(n_layers, 1)
    ratios = {a / b for a, b in zip(h, k, strict=False) if b}
    return ratios.pop() if len(ratios) == 1 else None
