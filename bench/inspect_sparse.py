#!/usr/bin/env python3
"""`infersup inspect` cost vs model size: a sparse 100 GB GGUF against a 1 GB one.

Both files have the same table shape: a GLM-4.7-Flash-like ``deepseek2`` MoE
(47 layers = 1 dense + 46 MoE, 64 routed experts + 1 shared, MLA attention,
field notes A1) with a GLM-sized tokenizer (154,880 token strings plus BPE
merges, which dominate the header), written by the ``gguf`` package's writer.
Same tensor names, count, types and metadata keys; only the widths differ
(n_embd 2048 and a wide expert FFN vs n_embd 512 and a narrow one), so the
tensor data spans ~100 GB in one file and ~1 GB in the other. The data
section is a hole (``truncate``), so the 100 GB file takes ~10 MB of disk.

Measured in-process (imports excluded): ``inspect_model`` (every header read
plus the derived facts) and ``read_header`` alone, runs interleaved between
the two files, median and min over ``--runs``; the first call on each file is
reported separately (page cache warm from writing it: this bench does not drop
caches). Then the import cost of ``infersup.gguf`` in a fresh interpreter
(median of ``python -c 'import infersup.gguf'`` minus ``python -c pass``) and
whether it pulled numpy. Nothing is asserted; the issue's goal is < 100 ms for
100 GB and 1 GB vs 100 GB equal within noise.

usage: python bench/inspect_sparse.py [--runs 30] [--merges 321000] [--dir D] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.gguf_more, when run as a script

from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFWriter  # noqa: E402
from tests.gguf_more import TensorSpec, tensor_nbytes, write_header_only  # noqa: E402

from infersup.gguf import inspect_model, read_header  # noqa: E402

GB = 10**9
N_VOCAB = 154_880  # GLM-4.x
N_LAYER, N_DENSE, N_EXPERT, N_HEAD = 47, 1, 64, 20
Q_LORA, KV_LORA, ROPE, NOPE, V_HEAD, N_FF = 768, 512, 64, 192, 256, 10240


def glm_tensors(n_embd: int, n_ff_exp: int) -> list[TensorSpec]:
    """GLM-4.7-Flash's tensor table (Q8_0 weights, Q4_K/Q6_K embeddings) at given widths."""
    k_mla, N_EMBD = NOPE + ROPE, n_embd
    t: list[TensorSpec] = [
        ("token_embd.weight", (N_EMBD, N_VOCAB), Q.Q4_K),
        ("output_norm.weight", (N_EMBD,), Q.F32),
        ("output.weight", (N_EMBD, N_VOCAB), Q.Q6_K),
    ]
    for i in range(N_LAYER):
        b = f"blk.{i}"
        t += [
            (f"{b}.attn_norm.weight", (N_EMBD,), Q.F32),
            (f"{b}.attn_q_a_norm.weight", (Q_LORA,), Q.F32),
            (f"{b}.attn_kv_a_norm.weight", (KV_LORA,), Q.F32),
            (f"{b}.attn_q_a.weight", (N_EMBD, Q_LORA), Q.Q8_0),
            (f"{b}.attn_q_b.weight", (Q_LORA, N_HEAD * k_mla), Q.Q8_0),
            (f"{b}.attn_kv_a_mqa.weight", (N_EMBD, KV_LORA + ROPE), Q.Q8_0),
            (f"{b}.attn_k_b.weight", (NOPE, KV_LORA, N_HEAD), Q.Q8_0),
            (f"{b}.attn_v_b.weight", (KV_LORA, V_HEAD, N_HEAD), Q.Q8_0),
            (f"{b}.attn_output.weight", (N_HEAD * V_HEAD, N_EMBD), Q.Q8_0),
            (f"{b}.ffn_norm.weight", (N_EMBD,), Q.F32),
        ]
        if i < N_DENSE:
            t += [
                (f"{b}.ffn_gate.weight", (N_EMBD, N_FF), Q.Q8_0),
                (f"{b}.ffn_up.weight", (N_EMBD, N_FF), Q.Q8_0),
                (f"{b}.ffn_down.weight", (N_FF, N_EMBD), Q.Q8_0),
            ]
            continue
        t += [
            (f"{b}.ffn_gate_inp.weight", (N_EMBD, N_EXPERT), Q.F32),
            (f"{b}.exp_probs_b.bias", (N_EXPERT,), Q.F32),
            (f"{b}.ffn_gate_exps.weight", (N_EMBD, n_ff_exp, N_EXPERT), Q.Q8_0),
            (f"{b}.ffn_up_exps.weight", (N_EMBD, n_ff_exp, N_EXPERT), Q.Q8_0),
            (f"{b}.ffn_down_exps.weight", (n_ff_exp, N_EMBD, N_EXPERT), Q.Q8_0),
            (f"{b}.ffn_gate_shexp.weight", (N_EMBD, n_ff_exp), Q.Q8_0),
            (f"{b}.ffn_up_shexp.weight", (N_EMBD, n_ff_exp), Q.Q8_0),
            (f"{b}.ffn_down_shexp.weight", (n_ff_exp, N_EMBD), Q.Q8_0),
        ]
    return t


def width_for(n_embd: int, target: int) -> int:
    """The expert FFN width (a multiple of the 32-wide Q8_0 block) nearest ``target`` bytes."""
    base = sum(tensor_nbytes(s, q) for _, s, q in glm_tensors(n_embd, 32))
    per32 = sum(tensor_nbytes(s, q) for _, s, q in glm_tensors(n_embd, 64)) - base
    return max(32, 32 * round(1 + (target - base) / per32))


def metadata(n_embd: int, n_ff_exp: int, n_merges: int) -> Callable[[GGUFWriter], None]:
    def add(w: GGUFWriter) -> None:
        w.add_name("bench-glm-4.7-flash-like")
        w.add_context_length(202_752)
        w.add_embedding_length(n_embd)
        w.add_block_count(N_LAYER)
        w.add_leading_dense_block_count(N_DENSE)
        w.add_feed_forward_length(N_FF)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_head_count(N_HEAD)
        w.add_head_count_kv(1)
        w.add_key_length(KV_LORA + ROPE)
        w.add_value_length(KV_LORA)
        w.add_key_length_mla(NOPE + ROPE)
        w.add_value_length_mla(V_HEAD)
        w.add_q_lora_rank(Q_LORA)
        w.add_kv_lora_rank(KV_LORA)
        w.add_rope_dimension_count(ROPE)
        w.add_expert_count(N_EXPERT)
        w.add_expert_used_count(4)
        w.add_expert_shared_count(1)
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"tok{i:06d}" for i in range(N_VOCAB)])
        w.add_token_types([1] * N_VOCAB)
        w.add_token_merges([f"t{i % 997} k{i:06d}" for i in range(n_merges)])
        w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}" * 40)

    return add


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def import_cost(runs: int) -> dict[str, object]:
    def wall(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        return (time.perf_counter() - start) * 1000

    check = "import sys, infersup.gguf; sys.exit(int('numpy' in sys.modules))"
    pulled_numpy = subprocess.run([sys.executable, "-c", check], cwd=REPO).returncode == 1
    base, ours, theirs = [], [], []
    for _ in range(runs):  # interleaved, so drift hits all three alike
        base.append(wall("pass"))
        ours.append(wall("import infersup.gguf"))
        theirs.append(wall("import gguf"))
    b = statistics.median(base)
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import infersup.gguf"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    own = {}  # the modules' own import time, without the stdlib modules they pull
    for line in trace.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2].startswith("infersup"):
            own[parts[2]] = round(int(parts[0].split()[-1]) / 1000, 1)
    return {
        "python_startup_ms": round(b, 1),
        "import_infersup_gguf_ms": round(statistics.median(ours) - b, 1),
        "import_gguf_package_ms": round(statistics.median(theirs) - b, 1),
        "infersup_gguf_imports_numpy": pulled_numpy,
        "own_import_ms": own,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--merges", type=int, default=321_000, help="BPE merges in the header")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the sparse files")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="inspect-sparse-") as tmp:
        files = {}
        for label, n_embd, target in (("1GB", 512, 1 * GB), ("100GB", 2048, 100 * GB)):
            width = width_for(n_embd, target)
            path = Path(tmp) / f"glm-like-{label}.gguf"
            tensors = glm_tensors(n_embd, width)
            write_header_only(path, "deepseek2", tensors, metadata(n_embd, width, args.merges))
            files[label] = path

        results: dict[str, dict[str, object]] = {}
        first = {label: timed(lambda p=p: inspect_model(p)) for label, p in files.items()}
        inspect_ms: dict[str, list[float]] = {label: [] for label in files}
        header_ms: dict[str, list[float]] = {label: [] for label in files}
        for _ in range(args.runs):
            for label, p in files.items():
                inspect_ms[label].append(timed(lambda p=p: inspect_model(p)))
                header_ms[label].append(timed(lambda p=p: read_header(p)))
        for label, p in files.items():
            facts = inspect_model(p)
            header = read_header(p)
            results[label] = {
                "file_bytes": p.stat().st_size,
                "disk_bytes": p.stat().st_blocks * 512,
                "header_bytes": header.data_offset,
                "tensors": len(header.tensors),
                "token_strings": N_VOCAB + args.merges,
                "expert_bytes": facts.expert_bytes,
                "first_inspect_ms": round(first[label], 2),
                "inspect_median_ms": round(statistics.median(inspect_ms[label]), 2),
                "inspect_min_ms": round(min(inspect_ms[label]), 2),
                "read_header_median_ms": round(statistics.median(header_ms[label]), 2),
            }
    big, small = results["100GB"], results["1GB"]
    ratio = float(str(big["inspect_median_ms"])) / float(str(small["inspect_median_ms"]))
    report = {
        "runs": args.runs,
        "files": results,
        "ratio_100GB_over_1GB": round(ratio, 3),
        "imports": import_cost(max(3, args.runs // 6)),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for label, r in results.items():
        print(
            f"{label:>5}: {r['file_bytes'] / GB:7.1f} GB file ({r['disk_bytes'] / 1e6:.1f} MB on "
            f"disk, header {r['header_bytes'] / 1e6:.1f} MB, {r['tensors']} tensors, "
            f"{r['token_strings']} token strings)"
        )
        print(
            f"       inspect_model median {r['inspect_median_ms']} ms, min {r['inspect_min_ms']} "
            f"ms, first {r['first_inspect_ms']} ms; read_header median "
            f"{r['read_header_median_ms']} ms"
        )
    print(f"ratio 100GB/1GB (medians): {report['ratio_100GB_over_1GB']}")
    print(f"imports: {report['imports']}")


if __name__ == "__main__":
    main()
