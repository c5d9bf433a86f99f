"""`validate`: the bad corpus (one rule per file), the shipped profiles, the engine's API."""

from __future__ import annotations

from pathlib import Path

import pytest

from infersup.validate import Finding, exit_code, validate
from infersup.validate.engine import parse_words
from infersup.validate.rules import RULES
from tests.conftest import REPO, llama_table
from tests.gguf_more import write_glm_like
from tests.ggufgen import write_tiny_llama

BAD = REPO / "tests" / "data" / "bad"
NO_BIN = "/nonexistent/infersup-test-bin"  # bundled flag tables: same result on every machine


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny GGUFs the corpus names: a dense llama (GQA 2, head 16, 2048 trained
    context), a GLM-4.7-Flash-shaped MoE (GQA 20) and shard 1 of a 2-shard split."""
    d = tmp_path_factory.mktemp("models")
    write_tiny_llama(d / "tiny-llama.gguf")
    write_glm_like(d / "tiny-glm.gguf")
    write_tiny_llama(d / "split-00001-of-00002.gguf")
    return d


def _expected(path: Path) -> list[tuple[str, str]]:
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    out = []
    for file in files:
        first = file.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# expect: "), file
        rule, key = first.removeprefix("# expect: ").split(" ", 1)
        out.append((rule, key))
    return sorted(out)


CORPUS = sorted(BAD.iterdir())


def _run(paths: list[str], models: Path) -> list[Finding]:
    return validate(paths, models_dir=str(models), server_bin=NO_BIN, python=NO_BIN)


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_bad_file_fires_its_rule_and_nothing_else(path: Path, models: Path) -> None:
    findings = _run([str(path)], models)
    assert sorted((f.rule, f.key) for f in findings) == _expected(path)
    for f in findings:
        assert f.message and f.fix and f.ref and f.profile
        assert f.file.startswith("tests/data/bad/") or Path(f.file).is_absolute()


def test_corpus_covers_every_rule() -> None:
    fired = {rule for path in CORPUS for rule, _ in _expected(path)}
    assert {r.id for r in RULES} <= fired
    assert {"flag", "schema", "model-missing", "model-shards-missing", "port-clash"} <= fired


def test_severities_and_refs() -> None:
    table = {r.id: (r.severity, r.ref) for r in RULES}
    assert table["ngl-disables-fit"] == ("warning", "field-notes A6: N_GPU_LAYERS=99")
    assert table["kv-v-without-fa"][0] == "error"
    assert table["kv-head-size"][0] == "error"
    assert all(sev in ("error", "warning", "info") for sev, _ in table.values())
    assert len(table) == len(RULES)  # ids are unique


def test_shipped_profiles_have_no_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    findings = validate(["profiles", "models.conf"], models_dir=str(REPO / "models"), python=NO_BIN)
    assert [f for f in findings if f.severity == "error"] == []
    warnings = sorted((f.rule, f.profile, f.key) for f in findings if f.severity == "warning")
    assert warnings == []  # each shipped profile has its own port
    infos = {(f.rule, f.profile) for f in findings if f.severity == "info"}
    assert ("model-missing", "glm-4.7-flash-q8") in infos
    assert all(rule == "model-missing" for rule, _ in infos)


def test_fact_rules_are_skipped_with_one_info_when_the_model_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("backend: llama.cpp\nmodel: nope.gguf\nserver: {flash_attn: 'on'}\n")
    findings = _run([str(path)], tmp_path)
    assert [(f.rule, f.severity, f.key) for f in findings] == [("model-missing", "info", "model")]


def test_unknown_flag_finding_says_did_you_mean(models: Path) -> None:
    (finding,) = _run([str(BAD / "unknown-flag.yaml")], models)
    assert finding.severity == "error"
    assert finding.file == "tests/data/bad/unknown-flag.yaml" or finding.file.endswith(
        "unknown-flag.yaml"
    )
    assert "ctx_size" in finding.message or "ctx-size" in finding.message


def test_fit_off_makes_explicit_placement_deliberate(tmp_path: Path, models: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "backend: llama.cpp\nmodel: tiny-glm.gguf\n"
        "server:\n  fit: off\n  n_gpu_layers: all\n  override_tensor: [{exps: CPU}]\n"
    )
    assert _run([str(path)], models) == []


def test_duplicate_id_is_one_error(tmp_path: Path, models: Path) -> None:
    (tmp_path / "x.yaml").write_text("backend: llama.cpp\nmodel: tiny-llama.gguf\n")
    (tmp_path / "models.conf").write_text("[x]\nMODEL=tiny-llama.gguf\n")
    findings = _run([str(tmp_path)], models)
    assert [(f.rule, f.severity) for f in findings] == [("duplicate-id", "error")]
    assert "defined twice" in findings[0].message


def _finding(severity: str) -> Finding:
    return Finding("r", severity, "f.yaml", "f", "server.x", "m", "fix", "ref")


@pytest.mark.parametrize(
    ("severities", "normal", "strict"),
    [
        ([], 0, 0),
        (["info"], 0, 0),
        (["info", "warning"], 0, 1),
        (["warning", "error"], 1, 1),
    ],
)
def test_exit_code(severities: list[str], normal: int, strict: int) -> None:
    findings = [_finding(s) for s in severities]
    assert exit_code(findings, strict=False) == normal
    assert exit_code(findings, strict=True) == strict


def test_finding_to_json() -> None:
    assert _finding("warning").to_json() == {
        "rule": "r",
        "severity": "warning",
        "file": "f.yaml",
        "profile": "f",
        "key": "server.x",
        "message": "m",
        "fix": "fix",
        "ref": "ref",
    }


def test_parse_words_spellings() -> None:
    words = ["--threads", "1", "-ngl=all", "--no-jinja", "--cpu-moe", "-ot", "exps=CPU", "stray"]
    assert list(parse_words(words, llama_table())) == [
        ("--threads", "1"),
        ("--gpu-layers", "all"),
        ("--jinja", False),
        ("--cpu-moe", True),
        ("--override-tensor", "exps=CPU"),
    ]


def test_compile_notes_become_info_findings(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("backend: sglang\nmodel: Qwen/Qwen3-8B\n")
    findings = _run([str(path)], tmp_path)
    assert [(f.rule, f.severity) for f in findings] == [("note", "info")]
    assert "watchdog_timeout" in findings[0].message


def test_models_conf_error_keeps_section_and_key(tmp_path: Path) -> None:
    conf = tmp_path / "models.conf"
    conf.write_text("[m]\nMODEL=tiny-llama.gguf\nCTX_SISE=4\n")
    findings = _run([str(conf)], tmp_path)
    assert [(f.rule, f.key, f.profile) for f in findings] == [("schema", "[m] CTX_SISE", "m")]
    assert "CTX_SIZE" in findings[0].message
