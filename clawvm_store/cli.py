"""``clawvm``: the command line, a thin layer over :class:`clawvm_store.Store`.

Every command takes ``--db`` (env ``CLAWVM_DB``, default ``./clawvm.db``) and ``--json``. Bad input
ends in one line on stderr and a non-zero exit code, never a traceback: library errors exit 1,
usage errors 2 (Click's convention), and anything unexpected 3 with a one-line description
(set ``CLAWVM_DEBUG=1`` to see the traceback of such a bug).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from . import schema as t
from .db import MAX_QUERY_TIMEOUT_S
from .errors import ClawVMError, InvalidInput
from .pages import POLICIES, Fidelity, PageType, Pin
from .store import DEFAULT_PROJECT, Store

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_BUG = 3
DEFAULT_SQL_TIMEOUT_S = 30.0
"""``clawvm sql``'s time limit: a runaway query must not hold its snapshot (and stall WAL
checkpoints) forever."""


class Context:
    """What the group options leave for the commands."""

    def __init__(self, db: str, as_json: bool) -> None:
        self.db = db
        self.as_json = as_json

    def open(self, *, create: bool = False) -> Store:
        """Open the store at ``--db``; only ``init`` may create a new database."""
        return Store.open(self.db, create=create)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums and containers as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    return value


def printable(text: str) -> str:
    """Text safe to print: bytes that were not valid UTF-8 (damaged data) shown as escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def emit_json(value: Any) -> None:
    """Print ``value`` as JSON on stdout."""
    click.echo(
        printable(json.dumps(to_jsonable(value), ensure_ascii=False, indent=2, sort_keys=True))
    )


def emit_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A Rich table on a terminal; tab-separated lines with a header when piped."""
    materialized = [["" if cell is None else printable(str(cell)) for cell in row] for row in rows]
    if sys.stdout.isatty():
        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in materialized:
            table.add_row(*row)
        Console().print(table)
        return
    click.echo("\t".join(columns))
    for row in materialized:
        click.echo("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    first_line = " ".join(str(message).split("\n")[0].split()) or "failed"
    click.echo(f"error: {first_line}", err=True)
    sys.exit(code)


class SafeGroup(click.Group):
    """A Click group that turns every error into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClawVMError as exc:
            fail(str(exc))
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except BrokenPipeError:
            # The reader (`| head`) stopped early: that is not an error worth a message.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed stream
            sys.exit(EXIT_ERROR)
        except OSError as exc:
            fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        except Exception as exc:
            if os.environ.get("CLAWVM_DEBUG"):
                raise
            fail(f"internal error ({type(exc).__name__}): {exc}", EXIT_BUG)


def enum_choice(enum: type[Enum]) -> click.Choice[str]:
    """A case-insensitive Click choice over an enum's values."""
    return click.Choice([str(member.value) for member in enum], case_sensitive=False)


@click.group(cls=SafeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="CLAWVM_DB",
    default="./clawvm.db",
    show_default=True,
    help="Database path or SQLAlchemy URL (env CLAWVM_DB).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.version_option(package_name="clawvm-store", message="clawvm-store %(version)s")
@click.pass_context
def app(ctx: click.Context, db: str, as_json: bool) -> None:
    """clawvm: durable, typed, token-budgeted state for LLM agents.

    \b
    Example:
      clawvm --db agent.db init
      echo "Never push to main." | clawvm --db agent.db put rules/git --type constraint
      clawvm --db agent.db show rules/git --fidelity structured
    """
    ctx.obj = Context(db, as_json)


pass_context = click.make_pass_decorator(Context)


def common_options(function: F) -> F:
    """``--json`` accepted after the command name too (``clawvm pages --json``)."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(Context).as_json = True  # type: ignore[union-attr]

    return click.option(
        "--json",
        "as_json_local",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        help="Machine-readable JSON output.",
    )(function)


@app.command()
@common_options
@pass_context
def init(obj: Context) -> None:
    """Create the database (or migrate an existing one) and report its schema revision.

    \b
    Example:
      clawvm --db agent.db init
    """
    with obj.open(create=True) as store:
        info = store.info()
    if obj.as_json:
        emit_json(
            {"db": obj.db, "schema_revision": info.schema_revision, "encoding": info.encoding}
        )
    else:
        click.echo(f"initialized {obj.db} (schema {info.schema_revision}, tokens {info.encoding})")


@app.command()
@common_options
@pass_context
def info(obj: Context) -> None:
    """Package version, schema revision, SQLite version, pragmas in force and row counts.

    \b
    Example:
      clawvm --db agent.db info --json
    """
    with obj.open() as store:
        report = store.info()
    if obj.as_json:
        emit_json(report)
        return
    rows: list[tuple[str, Any]] = [
        ("clawvm-store", report.package_version),
        ("schema revision", f"{report.schema_revision} (head {report.head_revision})"),
        ("sqlite", report.sqlite_version),
        ("database", report.url),
        ("file bytes", report.file_bytes),
        ("token encoding", report.encoding),
        ("durability", report.durability),
    ]
    rows += [(f"pragma {name}", value) for name, value in report.pragmas.items()]
    rows += [(f"rows {name}", value) for name, value in report.counts.items()]
    emit_table("clawvm info", ["what", "value"], rows)


def read_content(file: str | None) -> str:
    """Content from ``--file`` or stdin, decoded strictly as UTF-8."""
    if file is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InvalidInput("no content: pass --file F or pipe the content on stdin")
        data = (
            sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        )
        source = "stdin"
    else:
        path = Path(file)
        if not path.exists():
            raise InvalidInput(f"no such file: {file}")
        if path.is_dir():
            raise InvalidInput(f"{file} is a directory, not a file")
        data = path.read_bytes()
        source = file
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{source} is not valid UTF-8 (bad byte at offset {exc.start})"
        ) from None
    if not content.strip():
        raise InvalidInput(f"empty content from {source}")
    return content


def parse_json_object(value: str | None, option: str) -> dict[str, Any] | None:
    """Parse an option's JSON object, or fail with one line naming the option."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{option} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"{option} must be a JSON object")
    return parsed


def page_json(page: Any) -> dict[str, Any]:
    """A page as the JSON the CLI prints."""
    result: dict[str, Any] = to_jsonable(page)
    return result


@app.command()
@click.argument("key")
@click.option("--type", "page_type", required=True, type=enum_choice(PageType), help="Page type.")
@click.option(
    "--file", "file", type=str, default=None, help="Read content from this file (else stdin)."
)
@click.option("--project", default=DEFAULT_PROJECT, show_default=True)
@click.option("--session", default=None, help="Make it this session's page.")
@click.option("--pin", type=enum_choice(Pin), default=None, help="Pin class (default: the type's).")
@click.option("--priority", type=float, default=None)
@click.option("--expected-version", type=int, default=None, help="Required to overwrite a page.")
@click.option("--structured", default=None, help="Structured fields as a JSON object.")
@click.option(
    "--provenance", default=None, help='Provenance as JSON, e.g. {"uri": "file:///a.py"}.'
)
@common_options
@pass_context
def put(
    obj: Context,
    key: str,
    page_type: str,
    file: str | None,
    project: str,
    session: str | None,
    pin: str | None,
    priority: float | None,
    expected_version: int | None,
    structured: str | None,
    provenance: str | None,
) -> None:
    """Write a page directly (an explicit boundary) from --file or stdin.

    \b
    Example:
      clawvm put policy/agents --type bootstrap --file AGENTS.md --project web
      echo "Prefers pytest" | clawvm put pref/tests --type preference
    """
    content = read_content(file)
    fields = parse_json_object(structured, "--structured")
    source = parse_json_object(provenance, "--provenance")
    with obj.open() as store:
        page = store.put(
            key,
            type=page_type,
            content=content,
            project=project,
            session=session,
            expected_version=expected_version,
            pin=pin,
            priority=priority,
            structured=fields,
            provenance=source,
        )
    if obj.as_json:
        emit_json(
            {"key": page.key, "version": page.version, "type": page.type, "tokens": page.tokens}
        )
    else:
        click.echo(f"{page.key} v{page.version} ({page.type.value}, {page.tokens} tokens)")


@app.command()
@click.argument("key")
@click.option("--project", default=DEFAULT_PROJECT, show_default=True)
@click.option("--session", default=None)
@click.option("--fidelity", type=enum_choice(Fidelity), default="full", show_default=True)
@click.option(
    "--version", "version", type=int, default=None, help="A past version (default: latest)."
)
@common_options
@pass_context
def show(
    obj: Context, key: str, project: str, session: str | None, fidelity: str, version: int | None
) -> None:
    """Print a page at one fidelity.

    \b
    Example:
      clawvm show policy/agents --fidelity structured
      clawvm show evidence/read_file --session s-1 --version 2 --json
    """
    with obj.open() as store:
        page = store.page(key, project=project, session=session, fidelity=fidelity, version=version)
    if obj.as_json:
        emit_json(page_json(page))
    else:
        # Print the content byte for byte: `clawvm show K > f` must give back what was put.
        click.echo(printable(page.content), nl=not page.content.endswith("\n"))


@app.command()
@click.argument("key")
@click.option("--project", default=DEFAULT_PROJECT, show_default=True)
@click.option("--session", default=None)
@common_options
@pass_context
def history(obj: Context, key: str, project: str, session: str | None) -> None:
    """Every committed version of a page, oldest first, with tokens per fidelity.

    \b
    Example:
      clawvm history plan/main --session s-1
    """
    with obj.open() as store:
        versions = store.history(key, project=project, session=session)
    if obj.as_json:
        emit_json(versions)
        return
    emit_table(
        f"history of {key}",
        ["version", "op", "lsn", "committed_at", "deleted", *[f.value for f in Fidelity]],
        [
            (
                v.version,
                v.op.value,
                v.lsn,
                v.committed_at,
                "yes" if v.deleted else "",
                *[v.tokens.get(f, "") for f in Fidelity],
            )
            for v in versions
        ],
    )


@app.command()
@click.option("--type", "page_type", type=enum_choice(PageType), default=None)
@click.option("--project", default=None, help="Only this project (default: all).")
@click.option("--session", default=None, help="Only this session's pages.")
@common_options
@pass_context
def pages(obj: Context, page_type: str | None, project: str | None, session: str | None) -> None:
    """List current pages with their versions and token counts per fidelity.

    \b
    Example:
      clawvm pages --type evidence --project web
    """
    with obj.open() as store:
        listing = store.pages(project=project, type=page_type, session=session)
    if obj.as_json:
        emit_json(listing)
        return
    emit_table(
        "pages",
        [
            "key",
            "project",
            "session",
            "type",
            "version",
            "pin",
            "priority",
            *[f.value for f in Fidelity],
        ],
        [
            (
                p.key,
                p.project,
                p.session or "",
                p.type.value,
                p.version,
                p.pin.value,
                p.priority,
                *[p.tokens.get(f, "") for f in Fidelity],
            )
            for p in listing
        ],
    )


@app.command()
@click.option("--no-recount", is_flag=True, help="Skip re-counting every stored token count.")
@click.option("--fix", is_flag=True, help="Repair what can be repaired safely, then check again.")
@common_options
@pass_context
def check(obj: Context, no_recount: bool, fix: bool) -> None:
    """Verify integrity, fidelities, pointers, token counts and the journal; exit 1 on findings.

    With --fix, repairs what verified data allows (stale token counts, missing fidelities of a
    verified text, head rows out of step, unapplied committed entries) and reports what it would
    not touch (a hash mismatch is damage, never rehashed). Nothing is ever deleted.

    \b
    Example:
      clawvm --db agent.db check
      clawvm --db agent.db check --fix
    """
    if fix:
        from .maintenance import check_fix

        with obj.open() as store:
            fixed = check_fix(store)
        if obj.as_json:
            emit_json(fixed)
        else:
            for repair in fixed.repairs:
                click.echo(f"repaired {repair.code}: {repair.target} ({repair.action})")
            for finding, why in fixed.unrepaired:
                click.echo(f"not repaired {finding.code}: {finding.message} ({why})")
            click.echo("ok" if fixed.ok else "findings remain")
        if not fixed.ok:
            sys.exit(EXIT_ERROR)
        return
    with obj.open() as store:
        report = store.check(recount_tokens=not no_recount)
    if obj.as_json:
        emit_json(report)
    elif report.ok:
        checked = ", ".join(f"{n} {what}" for what, n in report.checked.items())
        click.echo(f"ok ({checked})")
    else:
        emit_table(
            "check findings", ["code", "message"], [(f.code, f.message) for f in report.findings]
        )
    if not report.ok:
        sys.exit(EXIT_ERROR)


@app.command()
@click.option(
    "--force", is_flag=True, help="Also recover sessions owned by another host (it must be down)."
)
@common_options
@pass_context
def recover(obj: Context, force: bool) -> None:
    """Verify the journal, re-apply committed entries, resolve staged updates of dead sessions.

    Opening a store already recovers pending entries; this also re-verifies every checksum.
    Running it twice changes nothing the second time.

    \b
    Example:
      clawvm --db agent.db recover --json
    """
    store = Store.open(obj.db, create=False, recover=False)
    with store:
        report = store.recover(force=force)
    if obj.as_json:
        emit_json(report)
        return
    click.echo(
        f"quarantined {len(report.quarantined)}, re-applied {len(report.reapplied)}, "
        f"recovered sessions {len(report.recovered)}, left live sessions "
        f"{len(report.skipped_live_sessions)}"
    )
    for lsn, problem in report.quarantined:
        click.echo(f"  quarantined lsn {lsn}: {problem}")
    for session_id, result in report.recovered.items():
        click.echo(
            f"  session {session_id or '(none)'}: committed {len(result.committed)}, "
            f"rejected {len(result.rejected)}"
        )
    for session_id in report.skipped_live_sessions:
        click.echo(f"  session {session_id}: still owned by a live process, left staged")


@app.command()
@click.option("--state", type=click.Choice(list(t.JOURNAL_STATES)), default=None)
@click.option("--session", default=None)
@click.option("--limit", type=click.IntRange(min=1, max=2**31 - 1), default=None)
@common_options
@pass_context
def journal(obj: Context, state: str | None, session: str | None, limit: int | None) -> None:
    """List journal entries with their state and, when rejected, the reason code.

    \b
    Example:
      clawvm journal --state rejected --session s-1
    """
    with obj.open() as store:
        entries = store.journal_entries(state=state, session=session, limit=limit)
    if obj.as_json:
        emit_json(entries)
        return
    emit_table(
        "journal",
        ["lsn", "session", "key", "op", "type", "state", "version", "reason", "detail"],
        [
            (
                e.lsn,
                e.session or "",
                e.key,
                e.op,
                e.type or "",
                e.state,
                e.version or "",
                e.reason or "",
                e.detail or "",
            )
            for e in entries
        ],
    )


@app.command()
@click.option("--session", "session_id", required=True, help="The session whose view to assemble.")
@click.option("--budget", type=int, required=True, help="Token budget for the whole prompt.")
@click.option("--project", default=DEFAULT_PROJECT, show_default=True)
@click.option("--fixed-file", default=None, help="System prompt / tool schemas to charge first.")
@click.option("--demand", multiple=True, help="A page key the turn needs (repeatable).")
@click.option("--explain", is_flag=True, help="Show every page, its fidelity, tokens and reason.")
@click.option("--record", is_flag=True, help="Record the assembly (default: inspect only).")
@common_options
@pass_context
def assemble(
    obj: Context,
    session_id: str,
    budget: int,
    project: str,
    fixed_file: str | None,
    demand: tuple[str, ...],
    explain: bool,
    record: bool,
) -> None:
    """Assemble the prompt a session would see under a token budget.

    Prints the prompt text, or with --explain a table of every page with its chosen fidelity,
    tokens and reason (floor, pin, demand, upgrade, evicted-for-budget). Exits 1 when the floor
    does not fit the budget, after reporting which pages need how much.

    \b
    Example:
      clawvm assemble --session s-1 --project web --budget 4000 --fixed-file system.txt --explain
    """
    fixed = read_content(fixed_file) if fixed_file else ""
    with obj.open() as store:
        result = store.assemble(
            session_id,
            budget,
            project=project,
            fixed=fixed,
            demand=list(demand),
            on_insufficient="report",
            record=record,
        )
        visible = [
            page for page in store.pages(project=project) if page.session in (None, session_id)
        ]
    if obj.as_json:
        payload = to_jsonable(result)
        payload["shortfall"] = (
            {
                "budget": result.shortfall.budget,
                "required": result.shortfall.required,
                "shortfall": result.shortfall.shortfall,
            }
            if result.shortfall
            else None
        )
        emit_json(payload)
    elif explain:
        emit_table(
            f"assembly for {session_id}: {result.tokens}/{result.budget} tokens"
            + ("" if result.feasible else " (INFEASIBLE)"),
            ["key", "type", "fidelity", "tokens", "reason"],
            [
                (
                    d.key,
                    d.type.value,
                    d.fidelity.value if d.fidelity else "-",
                    d.tokens,
                    f"{d.reason} (the space went to {d.won_by})" if d.won_by else d.reason,
                )
                for d in result.decisions
            ]
            + [
                (page.key, page.type.value, "-", 0, "absent (did not pay for its tokens)")
                for page in visible
                if page.key not in {d.key for d in result.decisions}
            ]
            + [("(fixed region)", "", "", result.fixed_tokens, "floor")],
        )
        for key in result.missing:
            click.echo(f"demanded but missing: {key}")
    else:
        click.echo(result.text, nl=not result.text.endswith("\n"))
    if result.shortfall is not None:
        fail(str(result.shortfall))


@app.command()
@click.option("--session", default=None, help="Only this session (default: all).")
@click.option("--events", is_flag=True, help="Also list every fault with its turn, key and detail.")
@common_options
@pass_context
def faults(obj: Context, session: str | None, events: bool) -> None:
    """Fault counts by kind, duplicate-signature alerts, hits and the thrash index.

    Faults: refetch, duplicate_tool, pinned_invariant_miss, post_compaction_bootstrap,
    silent_recall, flush_miss. Thrash = (faults + alerts) / (hits + 1).

    \b
    Example:
      clawvm faults --session s-1 --events
    """
    with obj.open() as store:
        report = store.faults(session=session, events=events)
    if obj.as_json:
        emit_json(report)
        return
    rows: list[tuple[str, Any]] = [(kind, count) for kind, count in report.counts.items()]
    rows += [
        ("(faults)", report.faults),
        ("(alerts)", report.alerts),
        ("(hits)", report.hits),
        ("(thrash)", f"{report.thrash:.3f}"),
    ]
    emit_table(f"faults{' of ' + session if session else ''}", ["kind", "count"], rows)
    if events:
        emit_table(
            "fault events",
            ["session", "turn", "kind", "key", "detail"],
            [
                (e["session"], e["turn"], e["kind"], e["key"] or "", e["detail"] or "")
                for e in report.events
            ],
        )


@app.command()
@click.argument("statement", required=False)
@click.option(
    "--param", "params", multiple=True, help="A value for ? (repeatable), or NAME=VALUE for :NAME."
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=2**31 - 1),
    default=None,
    help="At most this many rows.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, max=MAX_QUERY_TIMEOUT_S, max_open=True),
    default=DEFAULT_SQL_TIMEOUT_S,
    show_default=True,
    help="Stop the query after this many seconds (0: no limit).",
)
@click.option(
    "--schema",
    "show_schema",
    is_flag=True,
    help="List every table and view with its columns instead of running a statement.",
)
@common_options
@pass_context
def sql(
    obj: Context,
    statement: str | None,
    params: tuple[str, ...],
    output_format: str,
    limit: int | None,
    timeout: float,
    show_schema: bool,
) -> None:
    """Run read-only SQL over the store and its history views.

    The database is opened read-only: INSERT, UPDATE, DELETE, DDL, ATTACH, VACUUM and pragmas that
    change state are refused and nothing is changed. Views: page_history, resident_by_turn,
    journal_outcomes, fault_counts. Values are always bound, never pasted into the SQL. A query
    still running after --timeout seconds (default 30) stops with a QueryTimeout error and exit
    1; Ctrl-C stops it too (exit 130). --schema lists the tables and views with their columns;
    pragma_table_info('NAME') and sqlite_schema can be queried as well.

    \b
    Example:
      clawvm sql "SELECT key, version, full_tokens FROM page_history WHERE key = ?" --param plan/main
      clawvm sql "SELECT * FROM resident_by_turn WHERE session = :s AND turn = 3" --param s=s-1
      clawvm sql --schema
      clawvm sql "SELECT name, type FROM pragma_table_info('page_history')"
    """
    if show_schema:
        if statement is not None or params:
            fail("--schema takes no statement or --param", 2)
        with obj.open() as store:
            objects = store.db.schema()
        if obj.as_json or output_format == "json":
            emit_json(
                [
                    {
                        "name": name,
                        "type": kind,
                        "columns": [{"name": column, "type": type_} for column, type_ in columns],
                    }
                    for name, kind, columns in objects
                ]
            )
            return
        schema_rows = [
            (name, kind, ", ".join(f"{column} {type_}".strip() for column, type_ in columns))
            for name, kind, columns in objects
        ]
        if output_format == "csv":
            _write_csv(["name", "type", "columns"], schema_rows)
        else:
            emit_table(f"{len(objects)} tables and views", ["name", "type", "columns"], schema_rows)
        return
    if statement is None:
        fail("missing the SQL statement (or --schema)", 2)
    bound: list[str] | dict[str, str]
    named = [param.partition("=") for param in params]
    if params and all(sep for _, sep, _ in named) and ":" in statement:
        bound = {name: value for name, _, value in named}
    else:
        bound = list(params)
    with obj.open() as store:
        rows = store.query(statement, bound, limit=limit, timeout=timeout or None)
    columns = list(rows[0]) if rows else []
    if obj.as_json or output_format == "json":
        emit_json(rows)
    elif output_format == "csv":
        _write_csv(columns, [list(row.values()) for row in rows])
    else:
        emit_table(f"{len(rows)} rows", columns, [[row[c] for c in columns] for row in rows])


def _write_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([printable(value) if isinstance(value, str) else value for value in row])


@app.command()
@click.argument("destination")
@common_options
@pass_context
def backup(obj: Context, destination: str) -> None:
    """Write a consistent copy of the database to a new file (VACUUM INTO), mode 0600.

    Safe while another process writes: the copy is one snapshot. DESTINATION must not exist.

    \b
    Example:
      clawvm --db agent.db backup /backups/agent-2026-11-25.db
    """
    with obj.open() as store:
        target = store.backup(destination)
    with Store.open(target, create=False, recover=False) as copy:
        report = copy.check(recount_tokens=False)
    if obj.as_json:
        emit_json({"backup": target, "check_ok": report.ok})
    else:
        click.echo(f"backed up to {target} ({'check ok' if report.ok else 'CHECK FAILED'})")
    if not report.ok:
        sys.exit(EXIT_ERROR)


@app.command()
@common_options
@pass_context
def vacuum(obj: Context) -> None:
    """Rebuild the database file to reclaim the space of deleted rows.

    \b
    Example:
      clawvm --db agent.db gc --keep-versions 5 --apply && clawvm --db agent.db vacuum
    """
    with obj.open() as store:
        before, after = store.vacuum()
    if obj.as_json:
        emit_json({"bytes_before": before, "bytes_after": after})
    else:
        click.echo(f"vacuumed: {before} -> {after} bytes")


def _retention(values: tuple[str, ...]) -> dict[str, int]:
    policy: dict[str, int] = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not number.strip().isdigit():
            raise click.BadParameter(
                f"expected TYPE=N (for example conversation=50), got {value!r}"
            )
        policy[name.strip()] = int(number)
    return policy


@app.command()
@click.option(
    "--keep-versions",
    type=click.IntRange(min=1),
    default=None,
    help="Versions to keep of every page (of types --keep does not name).",
)
@click.option(
    "--keep",
    "keep_by_type",
    multiple=True,
    metavar="TYPE=N",
    help="Versions to keep of one page type (repeatable), e.g. conversation=50 evidence=10.",
)
@click.option("--project", default=None, help="Only this project's pages.")
@click.option("--apply", "apply_changes", is_flag=True, help="Remove them (default: a dry run).")
@common_options
@pass_context
def gc(
    obj: Context,
    keep_versions: int | None,
    keep_by_type: tuple[str, ...],
    project: str | None,
    apply_changes: bool,
) -> None:
    """Remove old page versions beyond the newest N; a dry run unless --apply.

    Never removes the head, nor a version that a journal entry, an assembly record, a tool call's
    result, a pointer or another version's provenance still refers to. With only --keep, pages
    of the types it does not name are left alone.

    \b
    Example:
      clawvm --db agent.db gc --keep-versions 5            # what would go
      clawvm --db agent.db gc --keep-versions 5 --apply    # remove it
      clawvm --db agent.db gc --keep conversation=50 --keep evidence=10 --apply
    """
    retention = _retention(keep_by_type)
    if keep_versions is None and not retention:
        raise click.UsageError("give --keep-versions N or --keep TYPE=N")
    from rich.progress import Progress

    from .maintenance import gc as collect

    with (
        obj.open() as store,
        Progress(console=Console(stderr=True), transient=True, disable=obj.as_json) as progress,
    ):
        task = progress.add_task("collecting", total=None)
        report = collect(
            store,
            keep_versions=keep_versions,
            retention=retention or None,
            dry_run=not apply_changes,
            project=project,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if obj.as_json:
        emit_json(report)
        return
    verb = "removed" if apply_changes else "would remove"
    click.echo(
        f"{verb} {report.versions_removed} versions ({report.representations_removed} "
        f"representations) of {report.pages} pages; kept {len(report.kept_referenced)} older "
        "versions that something refers to"
    )
    for ref in report.removed[:20]:
        click.echo(f"  {verb} {ref.project}/{ref.session or '-'}/{ref.key}@{ref.version}")


@app.command()
@click.option(
    "--format", "output_format", type=click.Choice(["jsonl"]), default="jsonl", show_default=True
)
@click.option("--out", default=None, help="A new file to write (default: stdout).")
@click.option("--project", default=None, help="Only this project.")
@click.option("--session", default=None, help="Only this session (with its project's pages).")
@common_options
@pass_context
def export(
    obj: Context, output_format: str, out: str | None, project: str | None, session: str | None
) -> None:
    """Export the store (or a project or session) as JSON lines; `import jsonl` restores it.

    A round trip gives an identical store: pages, versions, fidelities, journal outcomes,
    sessions, tool calls, assemblies and faults. The export is one consistent snapshot.

    \b
    Example:
      clawvm --db agent.db export --out agent.jsonl
      clawvm --db copy.db init && clawvm --db copy.db import jsonl agent.jsonl
    """
    from rich.progress import Progress

    from .transfer import export_jsonl

    with (
        obj.open() as store,
        Progress(
            console=Console(stderr=True), transient=True, disable=out is None or obj.as_json
        ) as progress,
    ):
        task = progress.add_task("exporting", total=None)
        summary = export_jsonl(
            store,
            out if out is not None else sys.stdout,
            project=project,
            session=session,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if out is not None:
        if obj.as_json:
            emit_json(summary)
        else:
            click.echo(f"exported {summary.total} records to {out}")


def _import_jsonl(obj: Context, file: str) -> None:
    from rich.progress import Progress

    from .transfer import import_jsonl

    with (
        obj.open() as store,
        Progress(console=Console(stderr=True), transient=True, disable=obj.as_json) as progress,
    ):
        task = progress.add_task("importing", total=None)
        summary = import_jsonl(
            store,
            file,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if obj.as_json:
        emit_json(summary)
    else:
        click.echo(f"imported {summary.total} records from {file}")


FAMILY_NAMES = ("assistant", "coding", "research", "project")
POLICY_NAMES = (
    "retrieval",
    "retrieval_cache",
    "compaction_hybrid",
    "lru",
    "clawvm",
    "clawvm_cache",
    "oracle",
)
ABLATION_NAMES = ("pointer-resolution", "pins", "writeback", "hysteresis")


@app.command(name="eval")
@click.option("--families", multiple=True, type=click.Choice(FAMILY_NAMES), help="Repeatable.")
@click.option("--budgets", multiple=True, type=click.IntRange(min=1), help="Repeatable.")
@click.option("--policies", multiple=True, type=click.Choice(POLICY_NAMES), help="Repeatable.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--ablate", type=click.Choice(ABLATION_NAMES), default=None, help="Add clawvm without this."
)
@click.option("--json", "json_file", default=None, help="Write the results JSON here.")
@click.option("--plot", "plot_file", default=None, help="Write a PNG of faults and thrash here.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes (default 2).")
@pass_context
def eval_command(
    obj: Context,
    families: tuple[str, ...],
    budgets: tuple[int, ...],
    policies: tuple[str, ...],
    seed: int,
    ablate: str | None,
    json_file: str | None,
    plot_file: str | None,
    workers: int | None,
) -> None:
    """Run the paper's experiment on this engine: workloads x budgets x policies.

    Four seeded workload families, six budgets (120 to 500 tokens) and six policies, each
    configuration replayed through a real store and counted by its fault observer. Prints mean
    faults per configuration per policy, faults by kind, alerts, hits, thrash, tokens used and
    the gap to the oracle. The same seed gives byte-identical JSON. Does not use --db.

    \b
    Example:
      clawvm eval --json results.json --plot results.png
      clawvm eval --families coding --budgets 240 --ablate pointer-resolution
    """
    from rich.progress import Progress

    from .replay.harness import BUDGETS, run_eval, to_json
    from .replay.report import plot, print_tables

    chosen_policies = list(policies or POLICY_NAMES)
    if ablate:
        chosen_policies.append(f"clawvm-no-{ablate}")
    chosen_families = list(families or FAMILY_NAMES)
    chosen_budgets = list(budgets or BUDGETS)
    total = len(chosen_families) * len(chosen_budgets) * len(chosen_policies)
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=obj.as_json) as progress:
        task = progress.add_task("replaying configurations", total=total)
        results = run_eval(
            families=chosen_families,
            budgets=chosen_budgets,
            policies=chosen_policies,
            seed=seed,
            workers=workers,
            progress=lambda _result: progress.advance(task),
        )
    payload = to_json(results)
    if json_file:
        Path(json_file).write_text(payload + "\n", encoding="utf-8")
    if plot_file:
        plot(results, plot_file)
    if obj.as_json:
        click.echo(payload)
        return
    print_tables(results, Console())
    engine = [r.policy_us_per_turn for r in results if r.policy == "clawvm"]
    if engine:
        click.echo(
            f"engine per turn (full assemble: page table, selection, texts, exact count, record): "
            f"mean {sum(engine) / len(engine):.0f} µs; selection alone: see bench/assembler.py"
        )


@app.command()
@click.argument("target", metavar="MODULE:FUNCTION")
@click.option(
    "--kills",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="How many kill points to draw (every one when a run has fewer).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the kill points.")
@click.option(
    "--kill-at",
    type=click.IntRange(min=1),
    default=None,
    help="Replay one case: kill at this library operation (from a failure report).",
)
@click.option(
    "--then-kill-at",
    type=click.IntRange(min=1),
    default=None,
    help="With --kill-at: also kill the restarted run at this operation of its own.",
)
@click.option(
    "--kill-after",
    type=click.FloatRange(min=0),
    default=None,
    help="Replay one wall-clock case: kill after this many seconds (from a failure report).",
)
@click.option(
    "--then-kill-after",
    type=click.FloatRange(min=0),
    default=None,
    help="With --kill-after: also kill the restarted run after this many seconds.",
)
@click.option(
    "--mode",
    type=click.Choice(["points", "time", "both"]),
    default="both",
    show_default=True,
    help="Kill at the library's crash points, at seeded wall-clock instants, or half each.",
)
@click.option(
    "--observe",
    "observe_target",
    metavar="MODULE:FUNCTION",
    default=None,
    help="What the harness changes outside the store: FUNCTION(db_path) returns it as JSON.",
)
@click.option(
    "--no-evidence",
    is_flag=True,
    help="Do not compare the last result of each read tool with the uncrashed run's.",
)
@click.option(
    "--postgres",
    metavar="URL",
    default=None,
    help="Run every case on a fresh database of this PostgreSQL server (a role that may "
    "create databases).",
)
@click.option(
    "--no-restart-kills",
    is_flag=True,
    help="Never kill a restarted run (by default about half the kills do).",
)
@click.option(
    "--workdir",
    default=None,
    help="Where the databases go (default: a temporary directory; failing cases are kept).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds one run of the harness may take.",
)
@common_options
@pass_context
def crashtest(
    obj: Context,
    target: str,
    kills: int,
    seed: int,
    kill_at: int | None,
    then_kill_at: int | None,
    kill_after: float | None,
    then_kill_after: float | None,
    mode: str,
    observe_target: str | None,
    no_evidence: bool,
    postgres: str | None,
    no_restart_kills: bool,
    workdir: str | None,
    timeout: float,
) -> None:
    """Crash-test your own agent harness: SIGKILL it at seeded instants, recover, check.

    MODULE:FUNCTION is a callable taking the database path that drives a Store to the end and
    resumes after a crash (see clawvm_store.testing). After an uncrashed run that counts the
    library operations and times the run, each kill runs it on a fresh database and kills it
    at a seeded library operation (--mode points) or a seeded wall-clock instant (--mode time,
    which lands in the harness's own code too; --mode both, the default, does half each),
    recovers, checks the invariants (acknowledged stages, puts and LangGraph checkpoints
    present exactly, nothing half-applied, recovery idempotent, tool calls paired, check()
    clean), restarts it (about half the time killing the restart too, and checking again) to
    the end and checks again (every write tool call exactly once, floor pages in the first
    assembly, the same pages, last tool evidence and --observe'd world as the uncrashed run).
    Exits 1 with a report and a replay line when an invariant breaks. Does not use --db.

    \b
    Example:
      clawvm crashtest clawvm_store.testing.examples:correct_agent --kills 20
      clawvm crashtest mypackage.agent:main --observe mypackage.agent:world --kills 50
      clawvm crashtest mypackage.agent:main --seed 7 --kill-at 37 --then-kill-at 12
      clawvm crashtest mypackage.agent:main --seed 7 --kill-after 0.0412
      clawvm crashtest mypackage.agent:main --postgres postgresql+psycopg://me@db/postgres
    """
    from rich.progress import Progress

    from .testing import CrashTestSetupError, load_harness, run_crashtest
    from .testing.invariants import INVARIANTS

    try:
        harness = load_harness(target)
        observe = load_harness(observe_target) if observe_target else None
    except CrashTestSetupError as exc:
        fail(str(exc), 2)
    options: list[str] = []
    if observe_target:
        options += ["--observe", observe_target]
    if no_evidence:
        options.append("--no-evidence")
    if postgres:
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(postgres).render_as_string(hide_password=True)
        except Exception:
            shown = postgres
        options += ["--postgres", shown]
    console = Console(stderr=True)
    # No refresh thread: the kit forks, and a fork should not copy a thread that may hold the
    # console's lock. The bar is redrawn after each case instead.
    with Progress(
        console=console, transient=True, disable=obj.as_json, auto_refresh=False
    ) as progress:
        task = progress.add_task("uncrashed run", total=None)
        progress.refresh()

        def advance(done: int, total: int) -> None:
            progress.update(task, description="kills", completed=done, total=total)
            progress.refresh()

        try:
            report = run_crashtest(
                harness,
                kills=kills,
                seed=seed,
                mode=mode,  # type: ignore[arg-type]  # Click checked it is one of MODES
                kill_at=kill_at,
                then_kill_at=then_kill_at,
                kill_after=kill_after,
                then_kill_after=then_kill_after,
                restart_kills=not no_restart_kills,
                observe=observe,
                compare_evidence=not no_evidence,
                postgres=postgres,
                workdir=workdir,
                timeout=timeout,
                progress=advance,
                name=target,
                options=options,
            )
        except CrashTestSetupError as exc:
            fail(str(exc), 2)
    if obj.as_json:
        emit_json(report.to_json())
    else:
        emit_table(
            f"crash test of {target} (seed {seed})",
            [
                "kills",
                "restarts killed",
                "time kills landed",
                "in harness code",
                "operations per run",
                "acknowledged writes",
                "invariants checked",
                "failures",
            ],
            [
                (
                    report.kills,
                    report.restart_kills,
                    report.time_kills,
                    report.time_kills_in_harness,
                    report.total_ops,
                    report.acknowledged_writes,
                    report.invariants_checked,
                    len(report.failures),
                )
            ],
        )
        broken = Counter(failure.invariant for failure in report.failures)
        emit_table(
            "invariants",
            ["invariant", "checked", "failed"],
            [(name, report.checked.get(name, 0), broken.get(name, 0)) for name in INVARIANTS],
        )
        if report.failures:
            click.echo("")
            click.echo(report.render())
    if not report.ok:
        sys.exit(EXIT_ERROR)


@app.group(name="import")
@common_options
def import_group() -> None:
    """Turn an agent transcript into a clawvm trace that `clawvm replay` runs.

    \b
    Example:
      clawvm import claude-code session.jsonl --out session.trace.json
    """


SPLIT_NAMES = ("response", "prompt")  # replay.importers.SPLITS (tests keep them equal)


def _import(
    kind: str, file: str, session: str | None, out: str | None, split: str, as_json: bool
) -> None:
    from .replay.importers import import_transcript

    trace = import_transcript(file, kind=kind, session=session, split=split)
    target = Path(out) if out else Path(f"{Path(file).stem}.trace.json")
    trace.dump(target)
    tools = sum(len(turn.tools) for turn in trace.turns)
    summary = {
        "trace": str(target),
        "source": trace.source,
        "turns": len(trace.turns),
        "tool_calls": tools,
        "writes": sum(1 for turn in trace.turns for step in turn.tools if step.effect == "write"),
        "compactions": sum(1 for turn in trace.turns if turn.event == "compaction"),
        "turns_with_usage": sum(1 for turn in trace.turns if turn.prompt_tokens is not None),
        "fixed_tokens": trace.fixed_tokens,
        "warnings": trace.warnings,
    }
    if as_json:
        emit_json(summary)
        return
    click.echo(
        f"{target}: {summary['turns']} turns, {tools} tool calls "
        f"({summary['writes']} writes), {summary['compactions']} compactions"
        + (
            f"; {summary['turns_with_usage']} turns report their prompt size, the fixed region "
            f"is about {trace.fixed_tokens} tokens"
            if summary["turns_with_usage"]
            else ""
        )
    )
    for warning in trace.warnings[:20]:
        click.echo(f"skipped {warning}", err=True)
    if len(trace.warnings) > 20:
        click.echo(f"... and {len(trace.warnings) - 20} more warnings", err=True)


def _register_importer(kind: str) -> None:
    """One `clawvm import KIND FILE` command per transcript format."""

    @import_group.command(
        name=kind,
        help=(
            f"Import a {kind} transcript as a trace; malformed lines are reported with their "
            f"line number and skipped.\n\n\b\nExample:\n  clawvm import {kind} "
            "transcript.jsonl --out t.trace.json"
        ),
    )
    @click.argument("file")
    @click.option("--session", default=None, help="Only this session id of the transcript.")
    @click.option("--out", default=None, help="Trace file to write (default: FILE.trace.json).")
    @click.option(
        "--split",
        type=click.Choice(SPLIT_NAMES),
        default="response",
        show_default=True,
        help="Start a turn at every model response, or only at user prompts.",
    )
    @common_options
    @pass_context
    def command(obj: Context, file: str, session: str | None, out: str | None, split: str) -> None:
        _import(kind, file, session, out, split, obj.as_json)


for _kind in ("auto", "claude-code", "codex", "copilot", "gemini-cli", "antigravity", "aider"):
    _register_importer(_kind)


@import_group.command(name="jsonl")
@click.argument("file")
@common_options
@pass_context
def import_jsonl_command(obj: Context, file: str) -> None:
    """Load a `clawvm export` file into an empty store (one transaction: all or nothing).

    \b
    Example:
      clawvm --db copy.db init && clawvm --db copy.db import jsonl agent.jsonl
    """
    _import_jsonl(obj, file)


@app.command()
@click.argument("trace_file", required=False)
@click.option("--budget", type=click.IntRange(min=1), required=True, help="Tokens per prompt.")
@click.option("--policy", type=click.Choice(POLICY_NAMES), default="clawvm", show_default=True)
@click.option(
    "--claude-session",
    default=None,
    help="Replay this Claude Agent SDK session mirrored in --db instead of a file.",
)
@click.option(
    "--project-key",
    default=None,
    help="With --claude-session: the SDK project_key, if the id is mirrored under several.",
)
@click.option(
    "--keep",
    "keep",
    type=click.Path(dir_okay=False),
    default=None,
    help="Replay into this new database and keep it (inspect it with sql, faults, pages).",
)
@click.option(
    "--split",
    type=click.Choice(SPLIT_NAMES),
    default="response",
    show_default=True,
    help="For a transcript imported on the fly or a mirrored session: start turns at model "
    "responses or only at user prompts.",
)
@click.option(
    "--fixed-region",
    is_flag=True,
    help="Charge the real prompt's system prompt and tools first (their size, from the "
    "transcript's usage records), as the real harness did.",
)
@common_options
@pass_context
def replay(
    obj: Context,
    trace_file: str | None,
    budget: int,
    policy: str,
    claude_session: str | None,
    project_key: str | None,
    keep: str | None,
    split: str,
    fixed_region: bool,
) -> None:
    """Replay a trace (from `clawvm import`, or a transcript, imported on the fly).

    Realistic budgets for real sessions are 2,000 to 64,000 tokens. Prints faults by kind,
    alerts, hits, thrash and tokens used, and the prompt cache figures (median prefix reuse,
    input cost with and without caching) beside those of the transcript's own append-only
    harness. Uses --db only with --claude-session (a live session
    mirrored by clawvm_store.integrations.claude_agent_sdk.ClawVMSessionStore); the replay
    itself runs in a scratch database.

    \b
    Example:
      clawvm replay session.trace.json --budget 16000 --policy clawvm
      clawvm --db agent.db replay --claude-session 5f1c... --budget 16000
      clawvm replay session.trace.json --budget 16000 --keep replayed.db
    """
    from .replay.harness import replay_into, transcript_baseline
    from .replay.trace import Trace
    from .tokens import TokenCounter

    if (trace_file is None) == (claude_session is None):
        fail("give a TRACE_FILE or --claude-session ID (one of them)", 2)
    if keep is not None and Path(keep).exists():
        fail(f"{keep} exists: --keep writes a new database and never reuses one", 2)
    if claude_session is not None:
        try:
            from .integrations.claude_agent_sdk import mirrored_trace
        except ImportError:
            fail('--claude-session needs the extra: pip install "clawvm-store[claude-agent-sdk]"')
        with obj.open() as store:
            trace = mirrored_trace(store, claude_session, project_key=project_key, split=split)
    else:
        assert trace_file is not None
        path = Path(trace_file)
        if path.suffix == ".json":
            trace = Trace.load(path)
        else:
            from .replay.importers import import_transcript

            trace = import_transcript(path, split=split)
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True, disable=obj.as_json) as progress:
        progress.add_task(f"replaying {len(trace.turns)} turns", total=None)
        if keep is not None:
            result, stale = replay_into(
                trace, budget, policy, Path(keep), fixed_region=fixed_region
            )
        else:
            with tempfile.TemporaryDirectory(prefix="clawvm-replay-") as scratch:
                result, stale = replay_into(
                    trace, budget, policy, Path(scratch) / "replay.db", fixed_region=fixed_region
                )
    fixed = trace.fixed_tokens if fixed_region else 0
    harness = transcript_baseline(trace, TokenCounter(), fixed=fixed)
    real = harness["reported_prompt_tokens"]
    if obj.as_json:
        emit_json(
            {
                **result.as_json(),
                "stale_serve_cases": stale,
                "served_calls": result.served_calls,
                "fixed_tokens": fixed,
                "transcript_harness": harness,
                "real_prompt_carried": result.tokens_used / real if real else None,
            }
        )
        return
    rows: list[tuple[str, Any]] = [(kind, count) for kind, count in result.faults.items()]
    rows += [
        ("(alerts)", result.alerts),
        ("(hits)", result.hits),
        ("(thrash)", f"{result.thrash:.3f}"),
        ("(tokens used per turn)", f"{result.tokens_used:.0f}"),
        ("(turns)", result.turns),
        ("(floor fit every turn)", "yes" if result.feasible else "no"),
        ("(tool calls served without running)", result.served_calls),
        ("(fixed region)", f"{fixed} tokens" if fixed_region else "off (--fixed-region)"),
    ]
    if real:
        rows.append(
            (
                "(real prompt, as the provider counted it)",
                f"{real:.0f} tokens per request on average over "
                f"{harness['reported_prompts']:.0f} turns; the replay's prompts carry "
                f"{result.tokens_used / real:.1%} of it",
            )
        )
    if keep is not None:
        rows.append(("(kept)", keep))
    emit_table(f"{trace.name} at {budget} tokens under {policy}", ["what", "value"], rows)
    emit_table(
        "prompt cache (reuse: median share of each prompt that is a prefix of the one before; "
        "cost in uncached input tokens, cached at Anthropic's prices)",
        ["prompts from", "reuse", "tokens per prompt", "cost uncached", "cost cached", "ratio"],
        [
            (
                label,
                f"{figures['prefix_reuse']:.1%}",
                f"{figures['tokens_used']:.0f}",
                f"{figures['input_cost']:.0f}",
                f"{figures['cached_input_cost']:.0f}",
                f"{figures['cached_input_cost'] / max(figures['input_cost'], 1):.3f}",
            )
            for label, figures in (
                (policy, result.as_json()),
                ("the transcript's harness (append-only)", harness),
            )
        ],
    )
    if real:
        click.echo(
            f"the real harness's own requests read {harness['reported_cache_reuse']:.1%} of "
            "their prompt from the provider's cache (median, from the transcript's usage)"
        )
    if stale:
        emit_table(
            "stale serves: served from the ledger, but the real tool returned something else",
            ["turn", "tool", "arguments", "served chars", "real chars", "first difference"],
            [
                (
                    case["turn"],
                    case.get("tool", ""),
                    json.dumps(case.get("args", {}), sort_keys=True),
                    case.get("served_chars", ""),
                    case.get("real_chars", ""),
                    case.get("first_difference", ""),
                )
                for case in stale
            ],
        )


DEMO_PAGES: tuple[tuple[str, PageType, str, dict[str, Any] | None], ...] = (
    (
        "bootstrap/agents-md",
        PageType.BOOTSTRAP,
        "# Repository rules\n"
        "You are a coding agent working in the `billing` service.\n"
        "- Always run `make test` before proposing a commit.\n"
        "- Never edit files under `vendor/`.\n"
        "- Keep functions under 50 lines; prefer small pure helpers.\n"
        "- Write commit messages in the imperative mood.\n"
        "The service talks to Postgres 15 and exposes a REST API documented in docs/api.md.",
        None,
    ),
    (
        "constraint/no-force-push",
        PageType.CONSTRAINT,
        "Never force-push to a shared branch. Never rewrite published history; if a commit "
        "must be undone, add a revert commit instead and say so in the pull request.",
        None,
    ),
    (
        "plan/main",
        PageType.PLAN,
        "Goal: add idempotency keys to the payments endpoint\n"
        "- [x] read the current handler and its tests\n"
        "- [ ] add an idempotency_key column with a unique index\n"
        "- [ ] return the stored response for a repeated key\n"
        "- [ ] document the header in docs/api.md",
        None,
    ),
    (
        "preference/test-style",
        PageType.PREFERENCE,
        "The user prefers pytest with plain asserts and parametrized cases over unittest "
        "classes, and wants every new test to assert exact values rather than truthiness.",
        {"uri": "chat://turn/3"},
    ),
    (
        "evidence/read_file/payments.py",
        PageType.EVIDENCE,
        "def create_payment(request):\n"
        + "".join(
            f"    # step {i}: validate field_{i} and normalise its value before storing it\n"
            f"    value_{i} = normalise(request.json['field_{i}'])\n"
            for i in range(12)
        )
        + "    return store_payment(request.user, "
        + ", ".join(f"value_{i}" for i in range(12))
        + ")\n",
        {"uri": "file:///srv/billing/payments.py"},
    ),
    (
        "conversation/turns-1-4",
        PageType.CONVERSATION,
        "user: Can you add idempotency keys to the payments endpoint?\n"
        "assistant: Yes. I'll read the handler first, then add a column and a unique index.\n"
        "user: Keep the migration reversible, please, and don't touch vendor/.\n"
        "assistant: Understood: a reversible Alembic migration, vendor/ untouched. Reading "
        "payments.py now.",
        None,
    ),
)


@app.command()
@click.option("--project", default="demo", show_default=True)
@common_options
@pass_context
def demo(obj: Context, project: str) -> None:
    """Write one page of each type and show every fidelity with its exact token count.

    \b
    Example:
      clawvm --db demo.db demo
    """
    shown: list[dict[str, Any]] = []
    with obj.open(create=True) as store:
        for key, page_type, content, provenance in DEMO_PAGES:
            session = (
                "demo-session" if POLICIES[page_type].default_scope.value == "session" else None
            )
            try:
                head = store.page(key, project=project, session=session)
                store.put(
                    key,
                    type=page_type,
                    content=content,
                    project=project,
                    session=session,
                    provenance=provenance,
                    expected_version=head.version,
                )
            except ClawVMError as exc:
                if "no page" not in str(exc):
                    raise
                store.put(
                    key,
                    type=page_type,
                    content=content,
                    project=project,
                    session=session,
                    provenance=provenance,
                )
            for fidelity in POLICIES[page_type].ladder:
                page = store.page(key, project=project, session=session, fidelity=fidelity)
                shown.append(
                    {
                        "key": key,
                        "type": page_type.value,
                        "version": page.version,
                        "fidelity": fidelity.value,
                        "tokens": page.tokens,
                        "text": page.content,
                    }
                )
        report = store.check()
    if obj.as_json:
        emit_json({"pages": shown, "check_ok": report.ok})
        return
    emit_table(
        f"one page of each type, at every fidelity on its ladder (project {project!r})",
        ["key", "type", "v", "fidelity", "tokens", "text"],
        [
            (
                row["key"],
                row["type"],
                row["version"],
                row["fidelity"],
                row["tokens"],
                _clip(row["text"], 90),
            )
            for row in shown
        ],
    )
    click.echo(f"check: {'ok' if report.ok else 'FAILED'}")


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``clawvm`` console script."""
    app.main(args=list(argv) if argv is not None else None, prog_name="clawvm")


if __name__ == "__main__":
    main()
