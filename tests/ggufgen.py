"""Generate tiny but real GGUF models that llama-server can load and serve.

Integration tests need a model file llama-server will really load and
generate from. Downloading one is slow and needs the network, and checking a
binary in is opaque, so we build a random-weight "llama" (optionally
Mixtral-style MoE) model with the ``gguf`` package. The output is
gibberish, but loading, tokenization, /completion and /v1/chat/completions
all work, and the default model is a few hundred KB.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGUFWriter, LlamaFileType, TokenType

__all__ = ["write_tiny_llama"]

# SentencePiece's word-boundary marker; llama.cpp swaps spaces for it before tokenizing.
_SPM_SPACE = "\u2581"

_UNK_ID = 0
_BOS_ID = 1
_EOS_ID = 2

# Common English words. Each goes in as "▁word" along with all its prefixes, so
# SPM's pairwise merges can actually build it (every merge result has to be a
# token), which keeps ordinary text from turning into single characters.
_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "will what so no can said who more about up out them some could into than then these "
    "other time only new like just over also after world hello model server token test "
    "how why yes okay good day people because through between example number "
    "system please thank answer question write python code error value first last"
)


def _build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Build an SPM ("llama") vocab of about 700 tokens: texts, scores and types.

    Layout follows real Llama-2 vocabs, because llama.cpp relies on it: ids 0/1/2
    are <unk>/<s>/</s> (the SPM defaults), then the 256 ``<0xXX>`` byte tokens.
    Byte fallback has to work for any input, and the byte token for "\\n" is
    used as the linefeed token.
    """
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256

    normal: dict[str, None] = {}  # insertion-ordered set; duplicate texts confuse llama.cpp
    printable = [c for c in string.printable if c.isprintable() and c != " "]
    normal[_SPM_SPACE] = None
    for c in printable:
        normal[c] = None
    for c in printable:
        normal[_SPM_SPACE + c] = None
    for word in _WORDS.split():
        piece = _SPM_SPACE + word
        for end in range(3, len(piece) + 1):
            normal[piece[:end]] = None
    tokens += list(normal)
    types += [TokenType.NORMAL] * len(normal)

    # SPM merges the highest-scoring pair first. Descending scores mirror the
    # frequency order of a trained sentencepiece model; special and byte tokens get 0.
    scores = [0.0 if t != TokenType.NORMAL else -float(i) for i, t in enumerate(types)]
    return tokens, scores, [int(t) for t in types]


def _f16(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float16]:
    """Random normal weights in F16, which keeps the file about half the size of F32."""
    return rng.normal(0.0, std, size=shape).astype(np.float16)


def write_tiny_llama(
    path: Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 2048,
    n_expert: int = 0,
    n_expert_used: int = 0,
    seed: int = 0,
) -> Path:
    """Write a random-weight llama-architecture GGUF to ``path`` and return ``path``.

    The point is a real model file for integration tests: llama-server (b11434)
    loads it and returns 200 with generated tokens from /completion and
    /v1/chat/completions. There is no chat template, so the server falls back
    to ChatML.

    - With ``n_expert > 0`` each block gets a Mixtral-style MoE FFN
      (``ffn_gate_inp``, ``ffn_{gate,up,down}_exps``) and
      ``llama.expert_count``/``llama.expert_used_count`` metadata, so that
      ``-ot exps=CPU`` and ``--cpu-moe`` have tensors to match.
    - Head size is ``n_embd // n_head``. A quantized KV cache
      (``--cache-type-k q8_0`` etc.) needs it to be a multiple of the 32-wide
      quant block, e.g. ``n_embd=128, n_head=4``. The default head size is 16,
      so only f16/f32 caches work with the defaults.
    - Matrices are F16 and norms F32. The output is the same for the same
      arguments, since all weights come from ``numpy.random.default_rng(seed)``.
    - In the output projection the rows for control, unknown and byte tokens
      are zero and the rest are scaled up, so sampled text is mostly
      ASCII words and almost never stops on EOS at once (empty content would
      make tests flaky).
    """
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be divisible by n_head, and n_head by n_head_kv")
    head_dim = n_embd // n_head
    if head_dim % 2:
        raise ValueError("head size (n_embd // n_head) must be even for RoPE")
    if (
        n_expert < 0
        or not (0 <= n_expert_used <= n_expert)
        or (n_expert > 0) != (n_expert_used > 0)
    ):
        raise ValueError("need 0 < n_expert_used <= n_expert for MoE, or both 0 for dense")

    tokens, scores, types = _build_vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)
    std = 0.02

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "llama")

    writer.add_name("infersup-tiny-llama" + ("-moe" if n_expert else ""))
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    # llama.cpp treats this key as required for the llama arch.
    writer.add_layer_norm_rms_eps(1e-5)
    if n_expert:
        writer.add_expert_count(n_expert)
        writer.add_expert_used_count(n_expert_used)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(_UNK_ID)
    writer.add_bos_token_id(_BOS_ID)
    writer.add_eos_token_id(_EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)

    # numpy shapes are the reverse of ggml's ne[] order: (rows=out, cols=in).
    ones = np.ones(n_embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", _f16(rng, (n_vocab, n_embd), std))
    writer.add_tensor("output_norm.weight", ones)
    output = rng.normal(0.0, 3.0 / np.sqrt(n_embd), size=(n_vocab, n_embd))
    output[np.asarray(types) != TokenType.NORMAL] = 0.0
    writer.add_tensor("output.weight", output.astype(np.float16))

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    for i in range(n_layer):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones)
        writer.add_tensor(f"{blk}.attn_q.weight", _f16(rng, (q_dim, n_embd), std))
        writer.add_tensor(f"{blk}.attn_k.weight", _f16(rng, (kv_dim, n_embd), std))
        writer.add_tensor(f"{blk}.attn_v.weight", _f16(rng, (kv_dim, n_embd), std))
        writer.add_tensor(f"{blk}.attn_output.weight", _f16(rng, (n_embd, q_dim), std))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones)
        if n_expert:
            # The router stays F32: tiny, and it is what picks the experts.
            gate_inp = rng.normal(0.0, std, size=(n_expert, n_embd)).astype(np.float32)
            writer.add_tensor(f"{blk}.ffn_gate_inp.weight", gate_inp)
            exp_in = (n_expert, n_ff, n_embd)
            writer.add_tensor(f"{blk}.ffn_gate_exps.weight", _f16(rng, exp_in, std))
            writer.add_tensor(f"{blk}.ffn_up_exps.weight", _f16(rng, exp_in, std))
            writer.add_tensor(
                f"{blk}.ffn_down_exps.weight", _f16(rng, (n_expert, n_embd, n_ff), std)
            )
        else:
            writer.add_tensor(f"{blk}.ffn_gate.weight", _f16(rng, (n_ff, n_embd), std))
            writer.add_tensor(f"{blk}.ffn_up.weight", _f16(rng, (n_ff, n_embd), std))
            writer.add_tensor(f"{blk}.ffn_down.weight", _f16(rng, (n_embd, n_ff), std))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
