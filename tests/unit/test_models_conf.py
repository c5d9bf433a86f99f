"""models.conf (INI) profiles: defaults, FLASH_ATTN, EXTRA_ARGS, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from infersup.compile import compile_profile
from infersup.errors import ConfigError
from infersup.profiles.models_conf import load_models_conf
from tests.conftest import llama_table

Write = Callable[[str, str], Path]


def argv_of(path: Path, profile_id: str) -> list[str]:
    profile = load_models_conf(path)[profile_id]
    plan = compile_profile(profile, table=llama_table(), program=("ls",), model=profile.model)
    return list(plan.argv[7:])  # after program, model, host, port


def conf_error(write: Write, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_models_conf(write("models.conf", text), shown="models.conf")
    return str(info.value)


def test_star_section_gives_defaults_and_sections_override(write: Write) -> None:
    path = write(
        "models.conf",
        "[*]\nCTX_SIZE=8192\nFIT=on\nHOST=0.0.0.0\nPORT=8100\n\n"
        "[a]\nMODEL=a.gguf\n\n[b]\nMODEL=b.gguf\nCTX_SIZE=2048\nPORT=8101\n",
    )
    profiles = load_models_conf(path)
    assert sorted(profiles) == ["a", "b"]
    assert argv_of(path, "a") == ["--ctx-size", "8192", "--fit", "on"]
    assert argv_of(path, "b") == ["--ctx-size", "2048", "--fit", "on"]
    assert (profiles["a"].host, profiles["a"].port, profiles["b"].port) == ("0.0.0.0", 8100, 8101)


@pytest.mark.parametrize(
    ("value", "expected"), [("1", "on"), ("0", "off"), ("on", "on"), ("auto", "auto")]
)
def test_flash_attn_values(write: Write, value: str, expected: str) -> None:
    path = write("models.conf", f"[a]\nMODEL=a\nFLASH_ATTN={value}\n")
    assert argv_of(path, "a") == ["--flash-attn", expected]


def test_extra_args_shell_quoting_kept(write: Write) -> None:
    path = write(
        "models.conf",
        "[a]\nMODEL=a\nEXTRA_ARGS=--alias \"my model\" -ot 'blk\\.1\\.=CPU' --jinja\n",
    )
    assert argv_of(path, "a") == ["--alias", "my model", "-ot", "blk\\.1\\.=CPU", "--jinja"]


def test_all_mapped_keys(write: Write) -> None:
    path = write(
        "models.conf",
        '[a]\nNAME=A\nDESCRIPTION=desc\nSPEED=fast\nMODEL="a b.gguf"\nN_GPU_LAYERS=auto\n'
        "SPLIT_MODE=layer\nTENSOR_SPLIT=3,1\nMAIN_GPU=1\nKV_CACHE_TYPE_K=q8_0\n"
        "KV_CACHE_TYPE_V=q4_0\nFIT_TARGET=128,1024\nFIT_CTX=8192\n",
    )
    profile = load_models_conf(path)["a"]
    assert (profile.name, profile.description, profile.model) == ("A", "desc", "a b.gguf")
    assert argv_of(path, "a") == [
        "--n-gpu-layers", "auto", "--split-mode", "layer", "--tensor-split", "3,1",
        "--main-gpu", "1", "--cache-type-k", "q8_0", "--cache-type-v", "q4_0",
        "--fit-target", "128,1024", "--fit-ctx", "8192",
    ]  # fmt: skip


def test_empty_value_means_unset(write: Write) -> None:
    path = write("models.conf", "[*]\nCTX_SIZE=4096\n[a]\nMODEL=a\nCTX_SIZE=\nTENSOR_SPLIT=\n")
    assert argv_of(path, "a") == []


def test_bad_flash_attn_value_names_line_and_choices(write: Write) -> None:
    path = write("models.conf", "[a]\nMODEL=a\nFLASH_ATTN=2\n")
    profile = load_models_conf(path, shown="models.conf")["a"]
    with pytest.raises(ConfigError) as info:
        compile_profile(profile, table=llama_table(), program=("x",), model="a")
    assert "models.conf:3: [a] FLASH_ATTN: '2' is not a valid value for --flash-attn" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[a]\nNAME=x\n", "models.conf:1: [a] has no MODEL"),
        ("[a]\nMODEL=x\n[a]\nMODEL=y\n", "models.conf: section [a] is defined twice: lines 1 and 3"),
        ("[a]\nMODEL=x\nCTX_SISE=4\n", "models.conf:3: [a] CTX_SISE: unknown key; did you mean 'CTX_SIZE'?"),
        ("[*]\nMODLE=x\n[a]\nMODEL=x\n", "models.conf:2: [*] MODLE: unknown key; did you mean 'MODEL'?"),
        ("MODEL=x\n", "models.conf: line 1: expected a [section] header first, got 'MODEL=x'"),
        ("[a\nMODEL=x\n", "line 1: expected a [section] header first, got '[a'"),
        ("[a]\nctx_size=1\nMODEL=x\n", "models.conf:2: [a] ctx_size: unknown key; did you mean 'CTX_SIZE'?"),
        ("[a]\nMODEL=x\nPORT=http\n", "[a] PORT: expected a port number 1-65535"),
        ("[a]\nMODEL=x\nEXTRA_ARGS=--alias \"unclosed\n", "[a] EXTRA_ARGS: cannot split into arguments"),
        ("[a]\nMODEL=x\nMODEL=y\n", "[a] sets MODEL twice"),
    ],
)  # fmt: skip
def test_errors(write: Write, text: str, expected: str) -> None:
    assert expected in conf_error(write, text)


def test_nerdpudding_section_keeps_regex_backslashes(write: Write) -> None:
    # A real section of nerdpudding/llama_cpp's models.conf (older revision):
    # its launcher expands EXTRA_ARGS unquoted, so backslashes reach the server.
    path = write(
        "models.conf",
        "# comment\n[glm-flash-q8]\nNAME=GLM-4.7 Flash Q8_0\nSPEED=~112 t/s\n"
        "MODEL=GLM-4.7-Flash/GLM-4.7-Flash-Q8_0.gguf\nCTX_SIZE=131072\nN_GPU_LAYERS=99\nFIT=off\n"
        "EXTRA_ARGS=--jinja -np 1 --temp 1.0 -b 2048 -ub 512 "
        "-ot blk\\.([0-9]|[12][0-9]|3[0-2])\\.=CUDA0,blk\\.(3[3-9]|4[0-6])\\.=CUDA1\n",
    )
    assert argv_of(path, "glm-flash-q8") == [
        "--ctx-size", "131072", "--n-gpu-layers", "99", "--fit", "off",
        "--jinja", "-np", "1", "--temp", "1.0", "-b", "2048", "-ub", "512",
        "-ot", "blk\\.([0-9]|[12][0-9]|3[0-2])\\.=CUDA0,blk\\.(3[3-9]|4[0-6])\\.=CUDA1",
    ]  # fmt: skip
    assert load_models_conf(path)["glm-flash-q8"].model == "GLM-4.7-Flash/GLM-4.7-Flash-Q8_0.gguf"


def test_not_utf8_and_nul_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "models.conf"
    path.write_bytes(b"[a]\nMODEL=x\xff\n")
    with pytest.raises(ConfigError, match=r"models.conf: line 2: not UTF-8 text \(byte 0xff\)"):
        load_models_conf(path, shown="models.conf")
    path.write_bytes(b"[a]\nMODEL=x\x00y\n")
    with pytest.raises(ConfigError, match=r"models.conf:2: \[a\] MODEL: contains a NUL"):
        load_models_conf(path, shown="models.conf")


def test_one_bad_section_does_not_block_another(write: Write) -> None:
    path = write("models.conf", "[good]\nMODEL=g.gguf\n[bad]\nNAME=x\n")
    assert load_models_conf(path, only="good")["good"].model == "g.gguf"
    with pytest.raises(ConfigError, match=r"\[bad\] has no MODEL"):
        load_models_conf(path, only="bad")
